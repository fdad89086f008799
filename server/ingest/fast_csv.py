"""The record of an ordinary CSV row, proved once by the parsing job (issue 14), with the
precise validator (server.ingest.validation.validate_row) deciding every other row.

A CSV row arrives from server/ingest/csv_reader.py as its fields by target, every value
a string already in our formats (csv_options applied: ISO dates, plain decimal amounts,
debit/credit folded into `amount`). Like the JSON fast path (fast_records.py) this only
ever *accepts*: a row it cannot prove ordinary — metadata, an unknown stream or
currency, an amount that is not plain digits, a date that is not a calendar date, a
field over its limit, a NUL — returns None and goes to the worker's precise path,
which words its error exactly as before. For every row it accepts it builds the very
`ValidRecord` validate_row builds (tests/test_fast_csv.py checks that on arbitrary
rows), so the worker only decodes and binds it.

Pure code, no I/O, nothing of HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from server.constants import MAX_ABS_MINOR_UNITS, MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS
from server.ingest.fast_records import is_calendar_date, plain_minor_units
from server.ingest.validation import StreamRef, ValidRecord
from server.money import currency_exponent

# The fields a provable row may have: metadata (a JSON object to serialize and bound)
# and anything else go to the precise path.
_PLAIN_FIELDS = frozenset(
    {"data_stream_key", "date", "amount", "currency", "description", "external_id"}
)
# An amount with exactly its currency's decimals ("-1234.56" in USD), as nearly every
# export writes it: its minor units are its digits (int() of them, never a float). A
# regex and one int() cost ~0.4 µs where plain_minor_units, which decides the rest, ~1.
EXACT_AMOUNT = {
    exponent: re.compile(rf"-?[0-9]{{1,16}}\.[0-9]{{{exponent}}}" if exponent else "-?[0-9]{1,16}")
    for exponent in range(5)
}
# A ValidRecord from its fields without _make's Python frame (this runs once per row).
new_record = tuple.__new__


def csv_record(fields: dict[str, object], streams: Mapping[str, StreamRef]) -> ValidRecord | None:
    """The record of one CSV row's fields (strings, as the reader gives them, with no
    row problem of its own), or None when the precise path must decide."""
    if not _PLAIN_FIELDS.issuperset(fields):
        return None
    key = fields.get("data_stream_key")
    stream = streams.get(key) if isinstance(key, str) else None
    day = fields.get("date")
    if stream is None or not isinstance(day, str) or not is_calendar_date(day):
        return None
    currency = fields.get("currency")
    if currency is None:
        currency = stream.currency
    elif not isinstance(currency, str):
        return None
    exponent = currency_exponent(currency)
    amount = fields.get("amount")
    # A leading quote: plain_minor_units reads JSON string text, which a cell is not.
    if exponent is None or not isinstance(amount, str) or amount[:1] == '"':
        return None
    exact = EXACT_AMOUNT.get(exponent)
    if exact is not None and exact.fullmatch(amount):
        minor = int(amount.replace(".", ""))
        amount_minor = minor if -MAX_ABS_MINOR_UNITS <= minor <= MAX_ABS_MINOR_UNITS else None
    else:
        amount_minor = plain_minor_units(amount.encode(), exponent)
    if amount_minor is None:
        return None
    description = fields.get("description")
    if description is not None and not (
        isinstance(description, str)
        and len(description) <= MAX_DESCRIPTION_CHARS
        and "\x00" not in description
    ):
        return None
    external_id = fields.get("external_id")
    if external_id is not None and not (
        isinstance(external_id, str)
        and 1 <= len(external_id) <= MAX_EXTERNAL_ID_CHARS
        and "\x00" not in external_id
    ):
        return None
    record: ValidRecord = new_record(
        ValidRecord, (stream.id, day, amount_minor, currency, description, external_id, None)
    )
    return record
