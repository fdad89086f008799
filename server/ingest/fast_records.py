"""A one-pass typed decoder for a bulk POST's records (msgspec), with the precise
validator (server.ingest.validation.validate_row) as its fallback.

msgspec decodes and checks a whole body's rows against `FastRow` in one C pass (0.24
µs/row; with the Python that finishes each record 1.8 µs/row, where orjson +
validate_row take 2.5: scripts/fast_records_timing.py). It only ever *accepts*: a
row it cannot prove ordinary — a decode or constraint failure, an amount that is not a plain decimal
literal, an unknown stream or currency, a date that is not a calendar date, a NUL,
metadata, or a key that may be repeated — goes to the precise path, which reports the
row's error with its code and pointer exactly as today. So the fast path changes
speed, never an answer: for every row it accepts it builds the very `ValidRecord`
validate_row builds (tests/test_fast_records.py checks that on arbitrary rows).

Pure code, no I/O, nothing of HTTP. The accept path (server/api/bulk_requests.py) uses
it for a whole body or not at all: see README "Performance".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from server.constants import MAX_ABS_MINOR_UNITS, MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS
from server.ingest.validation import StreamRef, ValidRecord
from server.money import currency_exponent
from server.types import RowProblem

# What a fast row's date text must look like before date.fromisoformat decides (which
# alone would also take 20240101). Checked here, not as a msgspec pattern: cached per
# distinct date it costs nothing, where a pattern runs `re` on every row.
_ISO_DATE = re.compile("[0-9]{4}-[0-9]{2}-[0-9]{2}")
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_CHARS)]
ExternalId = Annotated[str, Meta(min_length=1, max_length=MAX_EXTERNAL_ID_CHARS)]
_ZEROS = tuple(b"0" * n for n in range(10))
_MAX_WHOLE_DIGITS = len(str(MAX_ABS_MINOR_UNITS))


class FastRow(Struct, forbid_unknown_fields=True):
    """The shape of an ordinary row. UNSET (absent) is told apart from null so the
    decoder can count the members it saw (the repeated-key proof)."""

    data_stream_key: str
    date: str
    amount: Raw
    currency: str | UnsetType | None = UNSET
    description: Description | UnsetType | None = UNSET
    external_id: ExternalId | UnsetType | None = UNSET
    metadata: Raw | UnsetType = UNSET  # present at all → the precise path (for now)


class FastBody(Struct, forbid_unknown_fields=True):
    """A bulk POST body (SPEC §6), for the one-pass decode of all its rows."""

    records: list[FastRow]
    on_conflict: Raw | UnsetType = UNSET


_ROW = msgspec.json.Decoder(FastRow)
_BODY = msgspec.json.Decoder(FastBody)
_REQUIRED_MEMBERS = 3


@lru_cache(maxsize=8192)
def is_calendar_date(text: str) -> bool:
    if not _ISO_DATE.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _members(row: FastRow) -> int:
    return (
        _REQUIRED_MEMBERS
        + (row.currency is not UNSET)
        + (row.description is not UNSET)
        + (row.external_id is not UNSET)
        + (row.metadata is not UNSET)
    )


def plain_minor_units(raw: bytes, exponent: int) -> int | None:
    """Minor units of an amount spelled as plain decimal digits — a JSON number, or a
    string without escapes: '-' sign only, no exponent, at most 16 whole digits, no more
    decimals than the currency has beyond trailing zeros — else None. For these the
    result is exactly what to_minor_units gives for the parsed int, float or Decimal
    (integer arithmetic on the digits); anything else (1e2, "+1", " 1", "12.") is left
    to the precise path, which also words the error."""
    if raw[:1] == b'"':
        raw = raw[1:-1]  # a JSON string: only digits, '-' and '.' pass the checks below
    whole, dot, fraction = raw.partition(b".")
    digits = whole[1:] if whole[:1] == b"-" else whole
    # bytes.isdigit() is ASCII digits only.
    if not (digits.isdigit() and len(digits) <= _MAX_WHOLE_DIGITS):
        return None
    if dot and not fraction.isdigit():
        return None
    if len(fraction) > exponent:
        fraction = fraction.rstrip(b"0")
        if len(fraction) > exponent:
            return None
    minor = int(whole + fraction + _ZEROS[exponent - len(fraction)])
    return minor if -MAX_ABS_MINOR_UNITS <= minor <= MAX_ABS_MINOR_UNITS else None


# A ValidRecord from its fields without _make's Python frame (this runs once per row).
_new_record = tuple.__new__


def _record(row: FastRow, streams: Mapping[str, StreamRef]) -> ValidRecord | None:
    """The record of a decoded row, or None when the precise path must decide.
    (Identity tests against UNSET rather than isinstance: this runs once per row.)"""
    if row.metadata is not UNSET:
        return None
    stream = streams.get(row.data_stream_key)
    if stream is None or not is_calendar_date(row.date):
        return None
    currency = row.currency
    if currency is None or currency is UNSET:
        currency = stream.currency
    assert isinstance(currency, str)
    exponent = currency_exponent(currency)
    if exponent is None:
        return None
    amount_minor = plain_minor_units(bytes(row.amount), exponent)
    if amount_minor is None:
        return None
    description = row.description
    if description is UNSET:
        description = None
    elif description is not None and "\x00" in description:
        return None
    external_id = row.external_id
    if external_id is UNSET:
        external_id = None
    elif external_id is not None and "\x00" in external_id:
        return None
    record: ValidRecord = _new_record(
        ValidRecord,
        (stream.id, row.date, amount_minor, currency, description, external_id, None),
    )
    return record


def fast_record(raw: bytes, streams: Mapping[str, StreamRef]) -> ValidRecord | None:
    """The record of one row's JSON text, or None when the precise path must decide."""
    try:
        row = _ROW.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    # msgspec keeps the last of a repeated key where the precise path refuses the body:
    # every member needs a ':', so as many ':' as members proves there is no repeat.
    if raw.count(b":") != _members(row):
        return None
    return _record(row, streams)


def decode_fast_body(body: bytes) -> FastBody | None:
    """A whole bulk body decoded in one C pass, or None when it is not all ordinary
    rows (a row fails to decode, a key may repeat): then go row by row."""
    try:
        decoded = _BODY.decode(body)
    except (msgspec.DecodeError, RecursionError):  # msgspec's depth limit: RecursionError
        return None
    members = 1 + (decoded.on_conflict is not UNSET) + sum(map(_members, decoded.records))
    if body.count(b":") != members:  # the repeated-key proof, for the whole body
        return None
    return decoded


def fast_body_records(
    body: bytes, streams: Mapping[str, StreamRef]
) -> list[ValidRecord | None] | None:
    """Every row of a whole bulk body in one C pass: each row's record, or None for a
    row the precise path must decide. None for the whole when the body is not all
    ordinary rows (a row fails to decode, a key may repeat): then go row by row
    (split_records + validate_rows)."""
    decoded = decode_fast_body(body)
    if decoded is None:
        return None
    return [_record(row, streams) for row in decoded.records]


def every_record(decoded: FastBody, streams: Mapping[str, StreamRef]) -> list[ValidRecord] | None:
    """Each row's record when the fast path proves every row, else None (then the whole
    body goes the precise way, which words each row error)."""
    records: list[ValidRecord] = []
    for row in decoded.records:
        record = _record(row, streams)
        if record is None:
            return None
        records.append(record)
    return records


# --- A body accepted raw, finished by the worker ---------------------------------------
# The accept decides only what refuses or shapes the whole request; the worker finishes
# each row (server/staging.py RAW_BODY_V1). A body passes when msgspec decodes it into
# these shapes: every value a scalar, every string real text (msgspec refuses a lone
# surrogate), every number within a double's range or an integer, no metadata, no
# member but the six of an ordinary row, and no repeated key (the ':' count). For such a
# body the precise path answers 202 whatever its rows hold — a row that is not ordinary
# is only a row error —, so the answer is decided here and each row later, by the
# worker: the fast proof where it holds, else the precise staging of the whole body.
Scalar = int | float | str | bool | None


class AcceptRow(Struct, forbid_unknown_fields=True):
    data_stream_key: str
    date: str
    amount: Scalar
    currency: str | UnsetType | None = UNSET
    description: str | UnsetType | None = UNSET
    external_id: str | UnsetType | None = UNSET


class AcceptBody(Struct, forbid_unknown_fields=True):
    records: list[AcceptRow]
    on_conflict: Raw | UnsetType = UNSET


_ACCEPT_BODY = msgspec.json.Decoder(AcceptBody)


def _accept_members(row: AcceptRow) -> int:
    return (
        _REQUIRED_MEMBERS
        + (row.currency is not UNSET)
        + (row.description is not UNSET)
        + (row.external_id is not UNSET)
    )


@dataclass(frozen=True, slots=True)
class DeferrableBody:
    """What the accept keeps of a body whose rows the worker finishes."""

    rows: int
    stream_keys: set[str]


def deferrable_body(body: bytes, max_rows: int) -> DeferrableBody | None:
    """The body's row count and stream keys when its rows can be left to the worker
    (above) and on_conflict is absent or exactly "skip", else None (then the accept
    decides as before: the fast proof of every row, or the precise path)."""
    try:
        decoded = _ACCEPT_BODY.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    records = decoded.records
    if not 0 < len(records) <= max_rows:
        return None
    if not skips_conflicts(decoded):
        return None
    members = 1 + (decoded.on_conflict is not UNSET) + sum(map(_accept_members, records))
    if body.count(b":") != members:
        return None
    return DeferrableBody(len(records), {row.data_stream_key for row in records})


def stream_keys(decoded: FastBody) -> set[str]:
    return {row.data_stream_key for row in decoded.records}


def skips_conflicts(decoded: FastBody | AcceptBody) -> bool:
    """on_conflict is absent or exactly "skip" (anything else: the precise path)."""
    return decoded.on_conflict is UNSET or bytes(decoded.on_conflict) == b'"skip"'


def validate_rows(
    raws: Sequence[bytes],
    streams: Mapping[str, StreamRef],
    precise: Callable[[bytes], ValidRecord | RowProblem],
) -> list[ValidRecord | RowProblem]:
    """Each row's record, through the fast path where it can, else through `precise`
    (the caller's parse + validate_row, which words every row error)."""
    results: list[ValidRecord | RowProblem] = []
    for raw in raws:
        record = fast_record(raw, streams)
        results.append(precise(raw) if record is None else record)
    return results


class _RawRecords(Struct):
    records: list[Raw]


_RAW_RECORDS = msgspec.json.Decoder(_RawRecords)


def split_records(body: bytes) -> list[bytes] | None:
    """The JSON text of each row of a bulk body, or None when the body is not a JSON
    object with a `records` array (the precise path words that)."""
    try:
        return [bytes(raw) for raw in _RAW_RECORDS.decode(body).records]
    except (msgspec.DecodeError, RecursionError):
        return None
