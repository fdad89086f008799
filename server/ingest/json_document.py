"""A bulk body parsed the precise way: exact numbers, and amounts as the precise path
stages them. Pure code, no I/O, nothing of HTTP: the handlers word the errors
(server/api/common.py parse_json_document), and the worker uses the same parse for a
body staged raw (server/staging.py RAW_BODY_V1), so both stage exactly the same rows.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from server.constants import ORJSON_MAX_TEXT_BYTES
from server.ingest.json_checks import STRUCTURAL_BYTES, fits_storage
from server.money import canonical_amount_text
from server.types import JSON

# Finds JSON numbers a double might not hold exactly: a run of 16+ number characters, or
# a digit followed by an exponent. It matches inside strings too (long ids, "2eggs");
# those bodies merely take the slower exact path. bytes.translate + `in` run in C: a
# regex over a 150 kB body cost more than the whole parse it was meant to save. The
# same translation marks the bytes `: { [` as `x`, for the duplicate-key proof of
# json_checks.proves_no_duplicate_keys (one count instead of a second parse).
_SHAPE = bytes(
    ord("0")
    if chr(b) in "0123456789.+-"
    else ord("e")
    if chr(b) in "eE"
    else ord("x")
    if b in STRUCTURAL_BYTES
    else ord(" ")
    for b in range(256)
)
_LONG_NUMBER = b"0" * 16
_EXPONENT = b"0e"


@dataclass(frozen=True, slots=True)
class JsonDocument:
    """A parsed request body, with what the checks after parsing need of its text."""

    value: Any
    raw: bytes
    # True when numbers may be Decimals or integers beyond 64 bits (the exact parser ran).
    may_hold_decimals: bool
    # How many of the bytes `: { [` the body holds. Counted before parsing, so that the
    # body's shape (a copy of its size) is gone before the parsed objects exist.
    structural: int

    def structural_count(self) -> int:
        return self.structural


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_document(raw: bytes) -> JsonDocument:
    """A JSON body parsed. Numbers a double holds exactly come back as float/int; any
    other number comes back as an exact Decimal (or a big int), and then
    `may_hold_decimals` is True. Raises json.JSONDecodeError, UnicodeDecodeError,
    RecursionError or ValueError, which the caller words."""
    shape = raw.translate(_SHAPE)
    structural = shape.count(b"x")
    maybe_inexact = _LONG_NUMBER in shape or _EXPONENT in shape
    del shape
    if not maybe_inexact and len(raw) > ORJSON_MAX_TEXT_BYTES:
        # Exact for the reason given below, without orjson's document tree, which more
        # than doubles a large body's peak memory (constants.ORJSON_MAX_TEXT_BYTES).
        value = json.loads(raw, parse_constant=_reject_constant)
        return JsonDocument(value, raw, False, structural)
    if not maybe_inexact:
        # orjson is ~3× faster than json+Decimal (most of a bulk POST's accept time) and
        # exact here: with no exponent and at most 15 significant digits, a decimal
        # literal survives float → repr() unchanged (DBL_DIG is 15). Anything it rejects
        # goes on to the exact parser below, which also words the error.
        with contextlib.suppress(orjson.JSONDecodeError):
            return JsonDocument(orjson.loads(raw), raw, False, structural)
    value = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    return JsonDocument(value, raw, True, structural)


def rewrite_amounts(records: list[JSON]) -> None:
    """Amounts as canonical decimal text, where that matters (see the bulk POST
    handler, server/api/bulk_requests.py)."""
    for record in records:
        amount = record.get("amount")
        if isinstance(amount, Decimal):
            record["amount"] = canonical_amount_text(str(amount))
        elif isinstance(amount, float):
            record["amount"] = canonical_amount_text(repr(amount))
        elif isinstance(amount, str):
            record["amount"] = canonical_amount_text(amount)
        elif isinstance(amount, int) and not fits_storage(amount):
            # Out of range for every currency (a row error, amount_out_of_range), and
            # for orjson: as text it stages like any other bad amount.
            record["amount"] = str(amount)


def precise_records(raw: bytes) -> list[JSON]:
    """The records of an unkeyed bulk body the accept cleared (see fast_records
    `deferrable_body`) as the precise path stages them: amounts rewritten when the body
    may hold decimals. The body is known to parse, be an object with a `records` array
    of objects, and hold nothing the precise path refuses the whole body for."""
    document = parse_document(raw)
    records: list[JSON] = document.value["records"]
    if document.may_hold_decimals:
        rewrite_amounts(records)
    return records
