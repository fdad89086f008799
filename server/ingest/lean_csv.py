"""The lean CSV path (issue 14, fourth wave): the rows of a plain file, proved from their
cells by position, with no per-row dict.

A file qualifies when its header maps only record fields (no `metadata.<name>`, no
debit/credit) and its options convert nothing but plain amounts (no `date_format`, a
decimal point) — every file of the default options without metadata columns. For such a
file the reader (server/ingest/csv_reader.py) yields each full-width row whose date
cell starts with a digit as a LeanRow: the tuple of its mapped cells in header order,
its line and its size. The parse proves it here from those cells (`record`); a row this
cannot prove is turned back into the very SourceRow the reader would have built
(`source_row`) and goes the way every row went before (server/ingest/fast_csv.py
csv_record, then the worker's validate_row). So this only ever *accepts*, and for every
row it accepts it builds csv_record's own record (tests/test_fast_csv.py checks both on
generated files and on arbitrary cells).

Pure code, no I/O, nothing of HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from server.constants import (
    MAX_ABS_MINOR_UNITS,
    MAX_DESCRIPTION_CHARS,
    MAX_EXTERNAL_ID_CHARS,
    MAX_REMEMBERED_DATES,
)
from server.ingest.csv_mapping import RowConverter
from server.ingest.fast_csv import EXACT_AMOUNT, new_record
from server.ingest.fast_records import is_calendar_date
from server.ingest.validation import StreamRef, ValidRecord
from server.money import currency_exponent
from server.types import JSON, SourceRow

_LEAN_TARGETS = frozenset(
    {"data_stream_key", "date", "amount", "currency", "description", "external_id"}
)


class LeanRow(NamedTuple):
    """A full-width row of a lean file, as read: its mapped cells in header order."""

    values: tuple[str, ...]
    line: int
    size: int
    layout: LeanLayout


class LeanLayout:
    """Where each record field sits among a lean file's mapped cells (made once per file)."""

    __slots__ = (
        "_amount",
        "_convert",
        "_currency",
        "_days",
        "_default_key",
        "_description",
        "_exact",
        "_external_id",
        "_key",
        "_names",
        "date",
    )

    def __init__(
        self, names: Sequence[str], convert: RowConverter, default_key: str | None
    ) -> None:
        self._names = list(names)
        self._convert = convert
        self._default_key = default_key
        at = {name: i for i, name in enumerate(names)}
        self.date = at["date"]  # the reader checks its first character
        self._amount = at["amount"]
        self._currency = at.get("currency")
        self._description = at.get("description")
        self._external_id = at.get("external_id")
        self._key = at.get("data_stream_key")
        self._days: set[str] = set()  # calendar dates seen in this file
        self._exact: dict[str, re.Pattern[str] | None] = {}  # currency → exact amount form

    @staticmethod
    def of(
        names: Sequence[str], has_metadata: bool, convert: RowConverter, default_key: str | None
    ) -> LeanLayout | None:
        """The layout of a file whose header maps `names` (record fields, in header
        order), or None when the file must take the reader's general path."""
        if (
            has_metadata
            or not convert.only_amounts  # a date_format, a decimal comma or debit/credit
            or not _LEAN_TARGETS.issuperset(names)
            or "date" not in names
            or "amount" not in names
        ):
            return None
        return LeanLayout(names, convert, default_key)

    def _calendar_date(self, day: str) -> bool:
        """is_calendar_date, remembered: a file's rows share few dates."""
        if not is_calendar_date(day):
            return False
        if len(self._days) < MAX_REMEMBERED_DATES:
            self._days.add(day)
        return True

    def _exact_amount(self, currency: str) -> re.Pattern[str] | None:
        """The exact amount form of a currency (None: unknown), remembered per file."""
        exponent = currency_exponent(currency)
        exact = EXACT_AMOUNT.get(exponent) if exponent is not None else None
        if len(self._exact) < MAX_REMEMBERED_DATES:
            self._exact[currency] = exact
        return exact

    def stream_key(self, values: tuple[str, ...]) -> str | None:
        """The stream key the row names (as the reader's fields would hold it)."""
        key = values[self._key] if self._key is not None else ""
        if key and not key.isspace():
            return key
        return self._default_key

    def source_row(self, row: LeanRow) -> SourceRow:
        """The SourceRow csv_reader's general path builds for this row's cells."""
        fields: JSON = {
            k: v for k, v in zip(self._names, row.values, strict=True) if v and not v.isspace()
        }
        problem = self._convert.settle(fields)
        if self._default_key is not None and "data_stream_key" not in fields:
            fields["data_stream_key"] = self._default_key
        return SourceRow(fields, row.line, problem, row.size)

    def record(
        self, values: tuple[str, ...], streams: Mapping[str, StreamRef]
    ) -> ValidRecord | None:
        """The record of an ordinary row, or None when source_row and csv_record decide.

        Each test is csv_record's on the fields source_row would build: an empty cell is
        an absent field; a cell of only whitespace (absent too) is left to them.
        """
        key = values[self._key] if self._key is not None else ""
        if not key:
            key = self._default_key or ""
        elif key.isspace():
            return None
        stream = streams.get(key)
        day = values[self.date]
        if stream is None or (day not in self._days and not self._calendar_date(day)):
            return None
        currency = values[self._currency] if self._currency is not None else ""
        if not currency:
            currency = stream.currency
        try:
            exact = self._exact[currency]
        except KeyError:
            exact = self._exact_amount(currency)
        # Only the exact spelling (digits, the currency's decimals): it needs no
        # conversion, so the reader would have left it as it is.
        if exact is None or not exact.fullmatch(amount := values[self._amount]):
            return None
        minor = int(amount.replace(".", ""))
        if not -MAX_ABS_MINOR_UNITS <= minor <= MAX_ABS_MINOR_UNITS:
            return None
        description: str | None = (
            values[self._description] if self._description is not None else None
        )
        if not description:
            description = None
        elif (
            len(description) > MAX_DESCRIPTION_CHARS
            or "\x00" in description
            or description.isspace()
        ):
            return None
        external_id: str | None = (
            values[self._external_id] if self._external_id is not None else None
        )
        if not external_id:
            external_id = None
        elif (
            len(external_id) > MAX_EXTERNAL_ID_CHARS
            or "\x00" in external_id
            or external_id.isspace()
        ):
            return None
        record: ValidRecord = new_record(
            ValidRecord, (stream.id, day, minor, currency, description, external_id, None)
        )
        return record
