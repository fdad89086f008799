"""The lean CSV reader (issue 14, fourth wave): a plain file's rows are proved from their
cells by position, with no per-row dict. It must change speed, never an answer: every
row it cannot prove becomes the very SourceRow the general reader builds, so the staged
chunks — records, lines, staged items — and every file rejection are the same."""

from __future__ import annotations

import csv
import dataclasses
import io
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import server.jobs.parsing
from server.config import Settings
from server.constants import MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS
from server.ingest.csv_mapping import RowConverter
from server.ingest.csv_reader import iter_csv_rows, iter_csv_rows_lean
from server.ingest.fast_csv import csv_record
from server.ingest.lean_csv import LeanLayout, LeanRow
from server.jobs.parsing import ParsedRow, stage_block, take_chunk
from server.staging import decode_rows
from server.types import FileRejected
from tests.conftest import Api
from tests.test_fast_csv import STREAMS, _make, upload_and_store_all

MakeApi = Callable[[Settings], Awaitable[Api]]
HEADER = ["date", "amount", "currency", "description", "external_id", "data_stream_key"]

# Cells of every kind a plain file's column may hold: ordinary ones, and ones each path
# must leave to the precise one (or to the general reader: blanks, whitespace).
_CELL = st.one_of(
    st.sampled_from(["2024-02-29", "2023-02-29", "2024-1-05", "1999-12-31", "2024-13-01"]),
    st.sampled_from(["12.50", "-0.01", "007", "1.2", "5", "-3.000", "1 234.50", "12.5-", "+5"]),
    st.sampled_from(["9999999999999999.99", "90071992547409.91", "-90071992547409.92", "1e3"]),
    st.sampled_from(["USD", "JPY", "BHD", "usd", "XXX", "", " ", "\t"]),
    st.sampled_from(["bank", "yen", "dinar", "nope", " bank", ""]),
    st.sampled_from(["d" * MAX_DESCRIPTION_CHARS, "d" * (MAX_DESCRIPTION_CHARS + 1)]),
    st.sampled_from(["e" * MAX_EXTERNAL_ID_CHARS, "e" * (MAX_EXTERNAL_ID_CHARS + 1)]),
    st.text(st.sampled_from("0123456789-. ,\"'٣x\n\r\u00e9"), max_size=6),
)


def _layout(names: list[str], default_key: str | None = None) -> LeanLayout:
    convert = RowConverter(decimal=".", date_format=None, pair=False, names={})
    layout = LeanLayout.of(names, False, convert, default_key)
    assert layout is not None
    return layout


@given(
    st.permutations(HEADER).flatmap(
        lambda names: st.tuples(
            st.just(list(names[: max(2, len(names) - 1)])),
            st.lists(_CELL, min_size=6, max_size=6),
            st.sampled_from([None, "bank", "yen"]),
        )
    )
)
def test_a_lean_record_is_the_record_of_the_row_the_general_reader_builds(
    case: tuple[list[str], list[str], str | None],
) -> None:
    names, cells, default_key = case
    if "date" not in names or "amount" not in names:
        names = [*names, "date", "amount"]
        cells = [*cells, "2024-01-31", "1.25"]
    values = tuple(cells[: len(names)])
    layout = _layout(names, default_key)
    source = layout.source_row(LeanRow(values, 2, 10, layout))
    expected = None if source.problem else csv_record(source.fields, STREAMS)
    proved = layout.record(values, STREAMS)
    if proved is not None:
        assert proved == expected
    # The stream key it looks up is the one the general reader's fields name.
    assert layout.stream_key(values) == source.fields.get("data_stream_key")


def test_ordinary_cells_are_proved_lean_and_odd_ones_are_left() -> None:
    layout = _layout(HEADER)
    row = ("2024-01-31", "-12.50", "", "pay", "x1", "bank")
    assert layout.record(row, STREAMS) == csv_record(
        {"date": "2024-01-31", "amount": "-12.50", "description": "pay", "external_id": "x1",
         "data_stream_key": "bank"},
        STREAMS,
    )  # fmt: skip
    for odd in (
        ("2024-01-31", "12.5", "", "", "", "bank"),  # not the currency's decimals
        ("2024-01-31", "1 234.50", "", "", "", "bank"),  # needs reading
        ("2024-01-31", "1.00", " ", "", "", "bank"),  # a blank currency cell
        ("2024-01-31", "1.00", "", " ", "", "bank"),  # a blank description cell
        ("2024-01-31", "1.00", "", "", "", " "),  # a blank key cell
        ("2024-02-30", "1.00", "", "", "", "bank"),
        ("2024-01-31", "1.00", "", "", "", "nope"),
        ("2024-01-31", "90071992547409.92", "", "", "", "bank"),  # over the amount bound
        ("2024-01-31", "1.00", "", "", "e" * (MAX_EXTERNAL_ID_CHARS + 1), "bank"),
    ):
        assert layout.record(odd, STREAMS) is None


def test_only_a_plain_header_and_options_are_read_lean() -> None:
    plain = RowConverter(decimal=".", date_format=None, pair=False, names={})
    comma = RowConverter(decimal=",", date_format=None, pair=False, names={})
    assert LeanLayout.of(HEADER, False, plain, None) is not None
    assert LeanLayout.of(["date", "amount"], False, plain, "bank") is not None
    assert LeanLayout.of(HEADER, True, plain, None) is None  # metadata columns
    assert LeanLayout.of(HEADER, False, comma, None) is None
    assert LeanLayout.of(["date", "description"], False, plain, None) is None
    # The general reader still answers every file the lean one does not take.
    data = b"date,amount,metadata.tag\n2024-01-31,1.00,x\n"
    assert not any(
        isinstance(row, LeanRow) for row in iter_csv_rows_lean([data], data_stream_key="bank")
    )


@pytest.mark.parametrize(
    "data",
    [
        b"date,amount,data_stream_key\n2024-01-31,1.00,bank\n",  # every row lean
        b"date,amount,data_stream_key\r\n2024-01-31,1.00,bank",  # no final line break
        b"date,amount,data_stream_key\n",  # a header but no rows
        b"date,amount,data_stream_key\n,,\n\n",  # only blank rows
    ],
)
def test_small_plain_files_stage_and_fail_as_in_the_general_reader(data: bytes) -> None:
    assert _staged(iter_csv_rows_lean, data, None) == _staged(iter_csv_rows, data, None)


# --- the same staged chunks and rejections, file by file ----------------------------------


def _rows_text(rng: random.Random, n: int, header: list[str], ids: str = "x") -> bytes:
    """A plain file: ordinary rows, and rows the lean path must hand back. Its
    external_ids start with `ids`: two files sharing none, which of them stores a
    duplicate does not depend on how the workers interleave them."""
    rows: list[list[str]] = [header]
    for i in range(n):
        key = rng.choice(["bank", "yen", "dinar", "bank", "bank", "bank", "bank", ""])
        exponent = {"bank": 2, "yen": 0, "dinar": 3, "": 2}[key]
        amount = str(rng.randrange(-(10**9), 10**9))
        if exponent and rng.random() < 0.8:
            amount += "." + "".join(rng.choice("0123456789") for _ in range(exponent))
        by_name = {
            "date": f"2024-{rng.randrange(1, 13):02}-{rng.randrange(1, 29):02}",
            "amount": amount,
            "currency": rng.choice(["", "", {"bank": "USD", "yen": "JPY"}.get(key, "BHD")]),
            "description": rng.choice(["", f"row {i}", 'say "hi"\non two lines', "caf\u00e9"]),
            "external_id": rng.choice(["", f"{ids}-{i}", f"{ids}-{i}", f"{ids}-{i % 7}"]),
            "data_stream_key": key,
        }
        odd = rng.random()
        if odd < 0.03:
            by_name["date"] = "2024-02-30"
        elif odd < 0.06:
            by_name["amount"] = rng.choice(
                ["1.2345", "12.5-", "1 234.50", "+5", "1e3", "", "-90071992547409.92"]
            )
        elif odd < 0.08:
            by_name["data_stream_key"] = "nope"
        elif odd < 0.10:
            by_name[rng.choice(HEADER)] = rng.choice([" ", "\t", "  "])
        elif odd < 0.11:
            by_name["description"] = "d" * (MAX_DESCRIPTION_CHARS + 1)
        elif odd < 0.12:
            by_name["external_id"] = "e" * (MAX_EXTERNAL_ID_CHARS + 1)
        elif odd < 0.13:
            by_name["date"] = " 2024-01-01"
        row = [by_name.get(name, "ignored") for name in header]
        odd = rng.random()
        if odd < 0.02:
            row = row[:3]  # a malformed row
        elif odd < 0.04:
            row = [""] * len(header)  # blank: skipped
        elif odd < 0.05:
            row = [*row, "extra"]
        rows.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=rng.choice(["\n", "\r\n"])).writerows(rows)
    return buffer.getvalue().encode()


def _staged(
    read: Callable[..., Iterator[ParsedRow]], data: bytes, default_key: str | None
) -> tuple[list[Any], str | None]:
    """Every chunk the parse would stage from `data`, decoded, or the file's rejection."""
    pieces = [data[i : i + 97] for i in range(0, len(data), 97)]
    rows = read(iter(pieces), data_stream_key=default_key)
    chunks: list[Any] = []
    try:
        while block := take_chunk(rows):
            chunks.append(decode_rows(stage_block(block, STREAMS)))
    except FileRejected as exc:
        return chunks, exc.message
    return chunks, None


@pytest.mark.parametrize("seed", range(12))
def test_the_lean_and_general_readers_stage_identical_chunks(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.staging.PARSE_CHUNK_ROWS", 50)  # several chunks per file
    rng = random.Random(seed)
    header = list(HEADER)
    rng.shuffle(header)
    if seed % 3 == 1:
        header.remove(rng.choice(["currency", "description", "external_id"]))
    if seed % 4 == 2:
        header.insert(rng.randrange(len(header)), "unknown column")
    data = _rows_text(rng, 300, header)
    if seed % 6 == 5:
        data = data[: len(data) * 2 // 3] + b'"never closed\n'  # rejected late
    default_key = "bank" if seed % 2 else None
    lean = _staged(iter_csv_rows_lean, data, default_key)
    general = _staged(iter_csv_rows, data, default_key)
    assert lean == general
    assert len(lean[0]) >= 3
    # The lean reader did take the file's ordinary rows.
    assert (
        sum(
            isinstance(row, LeanRow)
            for row in iter_csv_rows_lean(
                [data.partition(b'"never')[0]], data_stream_key=default_key
            )
        )
        > 150
    )


@pytest.mark.sqlite_only("compares SQLite files column by column with quote()")
async def test_lean_general_and_precise_paths_store_identical_records_and_row_errors(
    make_api: MakeApi, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(41)
    headers = [HEADER, HEADER[::-1], ["amount", "date", "data_stream_key", "external_id"]]
    files = [(_rows_text(rng, 150, header, f"f{n}"), {}) for n, header in enumerate(headers)]
    files.append(
        (_rows_text(rng, 100, ["date", "amount", "description"], "yen"), {"data_stream_key": "yen"})
    )
    outcomes = []
    for name, provable, lean in (
        ("lean", True, True),
        ("fast", True, False),
        ("precise", False, False),
    ):
        # "fast": every row through the general reader and csv_record (the third wave);
        # "precise": every row staged as JSON and validated by the worker.
        monkeypatch.setattr(server.jobs.parsing, "_provable", lambda job, p=provable: p)
        monkeypatch.setattr(server.jobs.parsing, "_lean", lambda job, p=lean: p)
        # Time slices of ~one batch: the four requests interleave, as under load.
        quick = dataclasses.replace(settings, batch_size=40, time_slice=0.001)
        api = await _make(make_api, quick, name)
        outcomes.append(await upload_and_store_all(api, files))
    lean_outcome, fast, precise = outcomes
    assert len(lean_outcome["records"]) > 250
    assert len(lean_outcome["row_errors"]) > 30
    assert lean_outcome == fast == precise
