"""Unit tests of server/ingest/validation.py: `validate_row` called directly, no I/O."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from server.constants import (
    MAX_ABS_MINOR_UNITS,
    MAX_DESCRIPTION_CHARS,
    MAX_EXTERNAL_ID_CHARS,
    MAX_METADATA_BYTES,
)
from server.ingest.validation import _NO_NUL, StreamRef, ValidRecord, text_problem, validate_row
from server.types import RowProblem

STREAMS = {
    "usd": StreamRef(1, "USD"),
    "jpy": StreamRef(2, "JPY"),
    "kwd": StreamRef(3, "KWD"),
    "clf": StreamRef(4, "CLF"),
}

# A field value meaning "leave this field out of the row".
_DROP = object()


def row(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"date": "2024-02-29", "data_stream_key": "usd", "amount": "12.34"}
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not _DROP}


def problem(fields: Any) -> tuple[str, str]:
    result = validate_row(fields, STREAMS)
    assert isinstance(result, RowProblem), result
    assert result.message  # every problem says what is wrong
    return result.code, result.pointer


def valid(fields: Any) -> ValidRecord:
    result = validate_row(fields, STREAMS)
    assert isinstance(result, ValidRecord), result
    return result


def test_a_full_row_becomes_the_record_to_insert() -> None:
    record = valid(
        row(
            data_stream_key="kwd",
            amount="-1.005",
            description="rent",
            external_id="inv-1",
            metadata={"b": [1, "x"], "a": None},
        )
    )
    assert record == ValidRecord(
        3, "2024-02-29", -1005, "KWD", "rent", "inv-1", '{"b":[1,"x"],"a":null}'
    )


def test_currency_defaults_to_the_streams_and_an_explicit_one_wins() -> None:
    assert valid(row(data_stream_key="jpy", amount="500")).currency == "JPY"
    explicit = valid(row(data_stream_key="jpy", currency="EUR", amount="5.5"))
    # The exponent is the row's currency's (EUR: 2), not the stream's (JPY: 0).
    assert (explicit.currency, explicit.amount_minor) == ("EUR", 550)


@pytest.mark.parametrize(
    ("stream", "amount", "minor"),
    [
        ("jpy", "500", 500),
        ("jpy", "500.0", 500),  # trailing zeros past the exponent are exact
        ("usd", "12.3", 1230),
        ("usd", "-0.01", -1),
        ("usd", 7, 700),
        ("usd", Decimal("0.10"), 10),
        ("kwd", "1.234", 1234),
        ("clf", "1.2345", 12345),
        ("usd", "0.1", 10),
        ("usd", 0.1, 10),  # a float that is its JSON literal, read as that decimal
    ],
)
def test_exact_minor_units_per_currency_exponent(stream: str, amount: Any, minor: int) -> None:
    assert valid(row(data_stream_key=stream, amount=amount)).amount_minor == minor


@pytest.mark.parametrize(
    ("stream", "amount"),
    [("jpy", "1.5"), ("usd", "1.001"), ("kwd", "0.0001"), ("clf", "1.00001")],
)
def test_one_decimal_more_than_the_currency_allows_is_refused(stream: str, amount: str) -> None:
    assert problem(row(data_stream_key=stream, amount=amount)) == ("too_many_decimals", "/amount")


def test_amount_bounds_at_and_just_past() -> None:
    top = MAX_ABS_MINOR_UNITS
    assert valid(row(data_stream_key="jpy", amount=str(top))).amount_minor == top
    assert valid(row(data_stream_key="jpy", amount=str(-top))).amount_minor == -top
    assert problem(row(data_stream_key="jpy", amount=str(top + 1))) == (
        "amount_out_of_range",
        "/amount",
    )
    assert problem(row(data_stream_key="jpy", amount=top + 1)) == ("amount_out_of_range", "/amount")
    whole, cents = divmod(top, 100)
    assert valid(row(amount=f"{whole}.{cents:02d}")).amount_minor == top
    assert problem(row(amount=f"{whole}.{cents + 1:02d}")) == ("amount_out_of_range", "/amount")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([1, 2], ("invalid_type", "")),
        ("text", ("invalid_type", "")),
        (row(colour="red"), ("unknown_field", "/colour")),
        (row(**{"a/b~": 1}), ("unknown_field", "/a~1b~0")),  # pointer token escaped
        (row(data_stream_key=_DROP), ("required", "/data_stream_key")),
        (row(data_stream_key=None), ("required", "/data_stream_key")),
        (row(data_stream_key=5), ("invalid_type", "/data_stream_key")),
        (row(data_stream_key="nope"), ("unknown_data_stream", "/data_stream_key")),
        (row(date=_DROP), ("required", "/date")),
        (row(date=20240131), ("invalid_date", "/date")),
        (row(date="2024-1-31"), ("invalid_date", "/date")),
        (row(date="2023-02-29"), ("invalid_date", "/date")),
        (row(date="2024-01-31T00:00:00Z"), ("invalid_date", "/date")),
        (row(currency=840), ("invalid_type", "/currency")),
        (row(currency="usd"), ("invalid_currency", "/currency")),
        (row(currency="XYZ"), ("invalid_currency", "/currency")),
        (row(amount=_DROP), ("required", "/amount")),
        (row(amount=None), ("required", "/amount")),
        (row(amount=True), ("invalid_amount", "/amount")),
        (row(amount="12,34"), ("invalid_amount", "/amount")),
        (row(amount="NaN"), ("invalid_amount", "/amount")),
        (row(amount=Decimal("Infinity")), ("invalid_amount", "/amount")),
        (row(amount=[1]), ("invalid_amount", "/amount")),
        (row(description=3), ("invalid_type", "/description")),
        (row(description="a\x00b"), ("invalid_characters", "/description")),
        (row(external_id=3), ("invalid_type", "/external_id")),
        (row(external_id=""), ("invalid_length", "/external_id")),
        (row(external_id="a\x00"), ("invalid_characters", "/external_id")),
        (row(metadata=[1]), ("invalid_type", "/metadata")),
        (row(metadata={"a": {"b": ["ok", "x\x00"]}}), ("invalid_characters", "/metadata/a/b/1")),
        (row(metadata={"k\x00": 1}), ("invalid_characters", "/metadata/k\x00")),
    ],
)
def test_each_row_error_code_and_its_pointer(fields: Any, expected: tuple[str, str]) -> None:
    assert problem(fields) == expected


def test_the_first_problem_in_field_order_is_the_one_reported() -> None:
    # Stream before date before currency before amount: deterministic, one per row.
    assert problem(row(data_stream_key="nope", date="bad", amount="x")) == (
        "unknown_data_stream",
        "/data_stream_key",
    )
    assert problem(row(date="bad", currency="XYZ")) == ("invalid_date", "/date")
    assert problem(row(currency="XYZ", amount="x")) == ("invalid_currency", "/currency")


def test_a_literal_backslash_u0000_in_metadata_is_not_a_nul() -> None:
    # Its JSON text holds `\\u0000`; the walk decides there is no NUL.
    assert (
        valid(row(metadata={"path": "C:\\u0000"})).metadata
        == orjson.dumps({"path": "C:\\u0000"}).decode()
    )


def test_description_length_at_and_just_past_the_limit() -> None:
    assert valid(row(description="é" * MAX_DESCRIPTION_CHARS)).description is not None
    assert problem(row(description="é" * (MAX_DESCRIPTION_CHARS + 1))) == (
        "too_long",
        "/description",
    )


def test_external_id_length_at_and_just_past_the_limits() -> None:
    assert valid(row(external_id="x")).external_id == "x"
    assert valid(row(external_id="x" * MAX_EXTERNAL_ID_CHARS)).external_id is not None
    assert problem(row(external_id="x" * (MAX_EXTERNAL_ID_CHARS + 1))) == (
        "invalid_length",
        "/external_id",
    )


def test_metadata_size_at_and_just_past_the_limit() -> None:
    overhead = len(orjson.dumps({"k": ""}))
    at_limit = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert len(orjson.dumps(at_limit)) == MAX_METADATA_BYTES
    assert valid(row(metadata=at_limit)).metadata is not None
    past = {"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}
    assert problem(row(metadata=past)) == ("too_large", "/metadata")


def test_null_optional_fields_are_absent() -> None:
    record = valid(row(description=None, external_id=None, metadata=None, currency=None))
    assert (record.description, record.external_id, record.metadata, record.currency) == (
        None,
        None,
        None,
        "USD",
    )


def test_text_problem_names_nul_and_lone_surrogates() -> None:
    assert text_problem("fine") is None
    assert text_problem("a\x00") == RowProblem("invalid_characters", _NO_NUL)
    surrogate = text_problem("a\ud800")
    assert surrogate is not None
    assert surrogate.code == "invalid_unicode"
