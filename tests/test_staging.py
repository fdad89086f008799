"""server/staging.py: every encoding is zstd-compressed and reads back as it was staged,
chunks compressed with zlib by earlier versions still read back, and a wide chunk is read
without orjson's document tree, to the same values orjson gives
(constants.ORJSON_MAX_TEXT_BYTES)."""

from __future__ import annotations

import zlib
from decimal import Decimal
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from server.constants import ORJSON_MAX_TEXT_BYTES, PARSE_CHUNK_BYTES
from server.ingest.validation import StreamRef, ValidRecord
from server.staging import (
    CHECKED_V1,
    RAW_BODY_V1,
    VALIDATED_V1,
    StagedItem,
    ValidatedRows,
    decode_chunk,
    decode_items,
    decode_rows,
    encode_checked,
    encode_items,
    encode_raw_body,
    encode_validated,
)
from tests.test_memory import traced_peak


def payload(body: bytes) -> bytes:
    """The uncompressed bytes of a chunk this version staged (after its marker byte)."""
    compressed = body if body[:1] not in (VALIDATED_V1, CHECKED_V1, RAW_BODY_V1) else body[1:]
    assert compressed[:4] == b"\x28\xb5\x2f\xfd", "not a zstd frame"
    return zstandard.ZstdDecompressor().decompress(compressed)


# Every number the accept may stage inside a record (json_checks.fits_storage refuses
# the rest first): integers within 64 bits, doubles, and the exact parser's Decimals,
# which always have a point or an exponent.
_NUMBERS = (
    st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(-(10**30), 10**30, allow_nan=False, allow_infinity=False, places=3)
)
_SCALARS = st.none() | st.booleans() | _NUMBERS | st.text(st.characters(exclude_categories=["Cs"]))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), inner, max_size=4)
    ),
    max_leaves=20,
)


def _wide_items(rows: int) -> list[StagedItem]:
    metadata = {f"k{j:04d}": "v" for j in range(1350)}
    return [[n, {"description": "d" * 1000, "metadata": metadata}, None] for n in range(rows)]


@settings(max_examples=40, deadline=None)
@given(values=st.lists(_VALUES, min_size=1, max_size=5))
def test_a_wide_chunk_reads_back_as_orjson_reads_it(values: list[Any]) -> None:
    padding = "p" * (ORJSON_MAX_TEXT_BYTES + 1)
    items: list[StagedItem] = [[n, {"metadata": value}, None] for n, value in enumerate(values)]
    body = encode_items([*items, [len(items), {"description": padding}, None]])
    expected = orjson.loads(payload(body))
    # Compared as JSON text: 1 and 1.0, or 0.0 and -0.0, are equal in Python.
    assert orjson.dumps(decode_items(body)) == orjson.dumps(expected)


def test_the_widest_integers_staged_read_back_exactly_from_either_size_of_chunk() -> None:
    padding = "p" * (ORJSON_MAX_TEXT_BYTES + 1)
    for description in ("short", padding):
        metadata = {"top": 2**64 - 1, "bottom": -(2**63), "exact": Decimal("0.1")}
        body = encode_items([[1, {"metadata": metadata}, None], [2, {"d": description}, None]])
        read = decode_items(body)[0][1]["metadata"]
        assert read == {"top": 2**64 - 1, "bottom": -(2**63), "exact": 0.1}
        assert type(read["top"]) is int


def test_a_chunk_of_the_widest_rows_reads_back_within_a_fraction_of_orjsons_peak() -> None:
    rows = PARSE_CHUNK_BYTES // 20_000  # each row ~20 KB: a chunk closes at 4 MiB of input
    body = encode_items(_wide_items(rows))
    size = len(payload(body))
    items, peak = traced_peak(lambda: decode_items(body))
    assert len(items) == rows
    assert peak < 5 * size, f"reading {size / 1e6:.1f} MB peaked at {peak / 1e6:.0f} MB"


_STREAMS = {"bank": StreamRef(7, "USD")}
_RECORDS = [
    ValidRecord(7, "2024-01-31", 150, "USD", None, "a", None),
    ValidRecord(7, "2024-02-29", -1, "USD", "café", None, '{"k":[1,2]}'),
]
_ITEMS: list[StagedItem] = [
    [3, {"date": "2024-01-31", "amount": 1.5, "data_stream_key": "bank"}, None],
    [4, {"amount": "x"}, ["invalid_amount", "not a number", "/amount"]],
]
_RAW = orjson.dumps({"records": [{"date": "2024-01-31", "amount": 2, "data_stream_key": "b"}]})
# Each encoding, and the number of marker bytes before its compressed payload.
_ENCODED = {
    "json": (encode_items(_ITEMS), 0),
    "validated": (encode_validated(ValidatedRows(_STREAMS, _RECORDS)), 1),
    "checked": (encode_checked(_STREAMS, _RECORDS, [10, 11], [(1, _ITEMS[1])]), 1),
    "raw body": (encode_raw_body(_RAW), 1),
}


@pytest.mark.parametrize("name", list(_ENCODED))
def test_a_chunk_staged_with_zlib_by_an_earlier_version_reads_back_the_same(name: str) -> None:
    body, marker = _ENCODED[name]
    earlier = body[:marker] + zlib.compress(payload(body), 1)
    assert decode_rows(earlier) == decode_rows(body)
    assert decode_chunk(earlier) == decode_chunk(body)


def test_every_encoding_reads_back_what_was_staged() -> None:
    assert decode_items(_ENCODED["json"][0]) == _ITEMS
    validated = decode_rows(_ENCODED["validated"][0])
    assert validated == ValidatedRows(_STREAMS, _RECORDS)
    checked = decode_rows(_ENCODED["checked"][0])
    assert not isinstance(checked, list | ValidatedRows)
    assert checked.rows == [_RECORDS[0], _ITEMS[1], _RECORDS[1]]
    assert checked.lines == [10, 4, 11]
    raw = decode_rows(_ENCODED["raw body"][0])
    assert not isinstance(raw, list | ValidatedRows)
    assert getattr(raw, "text", None) == _RAW
