"""Row-level validation: one input row → a storable record or one RowProblem.

Pure code (no I/O): the worker prefetches the data streams a batch names and passes
them in. Every input source (JSON API, CSV, NACHA) goes through this one function, so
a row means the same thing however it arrived.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from server.constants import (
    MAX_DESCRIPTION_CHARS,
    MAX_EXTERNAL_ID_CHARS,
    MAX_METADATA_BYTES,
)
from server.ingest.json_checks import has_lone_surrogate, pointer_token
from server.money import AmountError, currency_exponent, to_minor_units
from server.types import RowProblem

KNOWN_FIELDS = frozenset(
    {"date", "data_stream_key", "amount", "currency", "description", "external_id", "metadata"}
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class StreamRef(NamedTuple):
    id: int
    currency: str


class ValidRecord(NamedTuple):
    """A row ready to insert; field order matches the records INSERT."""

    data_stream_id: int
    date: str
    amount_minor: int
    currency: str
    description: str | None
    external_id: str | None
    metadata: str | None  # serialized JSON object


def validate_row(fields: Any, streams: Mapping[str, StreamRef]) -> ValidRecord | RowProblem:
    """Check one row; return the record to store or the first problem found.

    Fields are checked in a fixed order (stream, date, currency, amount, …) so the
    reported problem is deterministic; one problem per row keeps the error report one
    line per failed row, which is what a user fixing a file wants to read.
    """
    if not isinstance(fields, dict):
        return RowProblem("invalid_type", "a record must be a JSON object", "")
    if not KNOWN_FIELDS.issuperset(fields):
        name = sorted(fields.keys() - KNOWN_FIELDS)[0]
        return RowProblem("unknown_field", f"unknown field {name!r}", f"/{pointer_token(name)}")

    key = fields.get("data_stream_key")
    if key is None:
        return RowProblem("required", "data_stream_key is required", "/data_stream_key")
    if not isinstance(key, str):
        return RowProblem("invalid_type", "data_stream_key must be a string", "/data_stream_key")
    stream = streams.get(key)
    if stream is None:
        return RowProblem(
            "unknown_data_stream", f"no data stream with key {key!r}", "/data_stream_key"
        )

    raw_date = fields.get("date")
    if raw_date is None:
        return RowProblem("required", "date is required", "/date")
    if not isinstance(raw_date, str):
        return RowProblem("invalid_date", "date must be a string YYYY-MM-DD", "/date")
    date_problem = _date_problem(raw_date)
    if date_problem is not None:
        return date_problem

    currency = fields.get("currency")
    if currency is None:
        currency = stream.currency
    elif not isinstance(currency, str):
        return RowProblem("invalid_type", "currency must be a string", "/currency")
    exponent = currency_exponent(currency)
    if exponent is None:
        return RowProblem(
            "invalid_currency", f"{currency!r} is not an ISO 4217 currency code", "/currency"
        )

    if "amount" not in fields or fields["amount"] is None:
        return RowProblem("required", "amount is required", "/amount")
    try:
        amount_minor = to_minor_units(fields["amount"], exponent)
    except AmountError as exc:
        return RowProblem(exc.code, exc.message, "/amount")

    description = fields.get("description")
    if description is not None:
        if not isinstance(description, str):
            return RowProblem("invalid_type", "description must be a string", "/description")
        if len(description) > MAX_DESCRIPTION_CHARS:
            return RowProblem(
                "too_long",
                f"description is longer than {MAX_DESCRIPTION_CHARS} characters",
                "/description",
            )
        if "\x00" in description:
            return _nul_problem("description")

    external_id = fields.get("external_id")
    if external_id is not None:
        if not isinstance(external_id, str):
            return RowProblem("invalid_type", "external_id must be a string", "/external_id")
        if not 1 <= len(external_id) <= MAX_EXTERNAL_ID_CHARS:
            return RowProblem(
                "invalid_length",
                f"external_id must be 1 to {MAX_EXTERNAL_ID_CHARS} characters",
                "/external_id",
            )
        if "\x00" in external_id:
            return _nul_problem("external_id")

    metadata = fields.get("metadata")
    metadata_json: str | None = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            return RowProblem("invalid_type", "metadata must be a JSON object", "/metadata")
        encoded = orjson.dumps(metadata)
        if len(encoded) > MAX_METADATA_BYTES:
            return RowProblem(
                "too_large",
                f"metadata is larger than {MAX_METADATA_BYTES} bytes when serialized",
                "/metadata",
            )
        if b"\\u0000" in encoded:  # orjson writes NUL as this escape: cheap to look for
            where = _metadata_nul_pointer(metadata, "/metadata")
            if where is not None:
                return RowProblem("invalid_characters", f"metadata {_NO_NUL}", where)
        metadata_json = encoded.decode()

    return ValidRecord(
        stream.id, raw_date, amount_minor, currency, description, external_id, metadata_json
    )


@lru_cache(maxsize=8192)
def _date_problem(text: str) -> RowProblem | None:
    """Cached: a file's rows share few distinct dates, and parsing them is not free."""
    if not _ISO_DATE.fullmatch(text):
        return RowProblem("invalid_date", "date must be a string YYYY-MM-DD", "/date")
    try:
        date.fromisoformat(text)
    except ValueError:
        return RowProblem("invalid_date", f"{text} is not a calendar date", "/date")
    return None


def _nul_problem(name: str) -> RowProblem:
    return RowProblem("invalid_characters", f"{name} {_NO_NUL}", f"/{name}")


# U+0000 ends a string in C: CSV tools, C libraries and many databases downstream would
# silently cut the text there, so nothing the service stores ever carries one.
_NO_NUL = "must not contain U+0000 (NUL)"


def text_problem(text: str) -> RowProblem | None:
    """Why `text` cannot be stored as it is (a NUL, or a lone surrogate), or None.
    The message reads after the field's name; the caller sets the pointer."""
    if "\x00" in text:
        return RowProblem("invalid_characters", _NO_NUL)
    if has_lone_surrogate(text):
        return RowProblem("invalid_unicode", "must not contain a lone surrogate (U+D800 to U+DFFF)")
    return None


def _metadata_nul_pointer(metadata: Any, pointer: str) -> str | None:
    """The pointer of the first key or string in `metadata` holding a NUL, if any.
    Called only when its JSON text has a `\\u0000`, which a literal backslash before
    `u0000` also produces: this walk is what decides."""
    stack: list[tuple[Any, str]] = [(metadata, pointer)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where
        elif isinstance(item, dict):
            for key, value in item.items():
                child = f"{where}/{pointer_token(key)}"
                if "\x00" in key:
                    return child
                stack.append((value, child))
        elif isinstance(item, list):
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(item))
    return None
