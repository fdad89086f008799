"""CSV uploads → SourceRows. A plain iterator over byte chunks: no I/O of its own.

UTF-8 (a BOM is tolerated), LF or CRLF, quoted fields with commas, quotes and newlines
(the stdlib `csv` module does the quoting). Known columns map to record fields,
`metadata.<name>` columns into `metadata`, and unknown columns are ignored, so the
error export (which adds `row`, `line`, `error_*` columns) can be fixed and re-uploaded.

Memory stays bounded by the limits, not the file (SPEC §11): bytes are decoded chunk by
chunk and handed to `csv` one physical line at a time (which also makes `reader.line_num`
the physical line number that row errors report), each line counted against the row it
belongs to, so no row longer than MAX_CSV_ROW_BYTES is ever held whole; a header wider
than MAX_CSV_COLUMNS fails the file. Fields over the record limits (a 5000-character
description) are row errors, found by validation; each is bounded by its row here.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter
from typing import cast

from server.constants import MAX_CSV_COLUMNS, MAX_CSV_ROW_BYTES
from server.ingest.csv_mapping import (
    DEBIT,
    DELIMITERS,
    METADATA_PREFIX,
    PAIR_TARGETS,
    RECORD_TARGETS,
    RowConverter,
    column_targets,
    detect_delimiter,
)
from server.ingest.csv_options import DEFAULT_CSV_OPTIONS, CsvOptions
from server.ingest.lean_csv import LeanLayout, LeanRow
from server.types import FileRejected, ParseReport, RowProblem, SourceRow

EXPECTED_COLUMNS = ", ".join(RECORD_TARGETS) + " or metadata.<name>"
# csv's own cap (128 KiB per field by default) is never reached: a field lies inside a
# row, and a row is refused past MAX_CSV_ROW_BYTES before csv sees the line that is over.
assert csv.field_size_limit() > MAX_CSV_ROW_BYTES
_BOM = "\ufeff"
# A LeanRow from its fields without the NamedTuple's Python __new__ (once per row).
new_lean_row = tuple.__new__


class _RowBudget:
    """The bytes handed to csv for the row it is reading now (reset as each row ends)."""

    __slots__ = ("start_line", "used")

    def __init__(self) -> None:
        self.start_line = 1  # the physical line the current row starts on
        self.used = 0

    def exceeded(self) -> FileRejected:
        line = self.start_line
        if line == 1:
            what = (
                f"the header row is longer than {MAX_CSV_ROW_BYTES // 1024} KiB; a CSV file "
                f"may have at most {MAX_CSV_COLUMNS} columns"
            )
        else:
            what = (
                f"the row starting on this line is longer than {MAX_CSV_ROW_BYTES // 1024} KiB "
                f"({MAX_CSV_ROW_BYTES} bytes), the most one row may hold (is a quote left open?)"
            )
        return FileRejected(
            f"line {line}: {what}", {"line": line, "max_row_bytes": MAX_CSV_ROW_BYTES}
        )


class _Utf8Lines:
    """Strictly decoded UTF-8 text, re-cut into physical lines that keep their LF.

    `_batches()` yields the complete lines of each input chunk as one list (possibly
    empty) with whether they are all ASCII, so splitting runs in C (`str.split`);
    `lines()` hands them to csv one at a time, counting each against the current row.
    """

    def __init__(self, chunks: Iterable[bytes], budget: _RowBudget) -> None:
        self._chunks = chunks
        self._budget = budget
        self._lines_done = 0  # line breaks decoded so far, i.e. complete lines handed out

    def lines(self) -> Iterator[str]:
        budget = self._budget
        for batch, ascii_only in self._batches():
            for line in batch:
                # UTF-8 bytes; for ASCII text (nearly every file) that is the length.
                budget.used += len(line) if ascii_only else len(line.encode())
                if budget.used > MAX_CSV_ROW_BYTES:
                    raise budget.exceeded()
                yield line

    def _batches(self) -> Iterator[tuple[list[str], bool]]:
        decode = codecs.utf_8_decode
        pending = b""  # an incomplete UTF-8 sequence carried over to the next chunk
        offset = 0  # file offset of pending[0]
        partial: list[str] = []  # the current line's text so far; it holds no LF
        partial_chars = 0
        partial_ascii = True
        at_start = True
        for chunk in chunks_with_end(self._chunks):
            final = chunk is None
            data = pending if chunk is None else pending + chunk
            try:
                text, used = decode(data, "strict", final)
            except UnicodeDecodeError as exc:
                raise self._undecodable(exc, offset) from None
            pending = data[used:]
            offset += used
            if at_start and text:
                at_start = False
                text = text.removeprefix(_BOM)
            if "\x00" in text:
                raise self._nul(text)
            # Whether every line of this batch is ASCII: its first holds the partial.
            ascii_only = text.isascii() and partial_ascii
            lines = text.split("\n")
            last = lines.pop()
            if lines:
                if partial:
                    lines[0] = "".join(partial) + lines[0]
                    partial = []
                    partial_chars = 0
                    partial_ascii = True
                self._lines_done += len(lines)
                # csv needs the LF itself: inside a quoted field it is part of the value.
                batch = [line + "\n" for line in lines]
            else:
                batch = []
            if last:
                partial.append(last)
                partial_chars += len(last)
                partial_ascii = partial_ascii and last.isascii()
            if final and partial:
                batch.append("".join(partial))  # the last line, without a line break
                ascii_only = ascii_only and partial_ascii
            if batch:
                yield batch, ascii_only
            # A line this long (in characters, so in bytes too) is over its row's budget
            # whatever row it is in. Raised once csv has read the lines before it, so the
            # budget names the row it belongs to; it is never held longer than this.
            if partial_chars > MAX_CSV_ROW_BYTES:
                if any("\r" in piece for piece in partial):
                    raise _bare_cr(self._lines_done + 1)
                raise self._budget.exceeded()

    def _line_at(self, before: str | bytes) -> int:
        """The line of a position, given the text of its chunk before it."""
        newlines = before.count("\n") if isinstance(before, str) else before.count(b"\n")
        return self._lines_done + newlines + 1

    def _undecodable(self, exc: UnicodeDecodeError, offset: int) -> FileRejected:
        bad = offset + exc.start
        line = self._line_at(exc.object[: exc.start])
        return FileRejected(
            f"byte offset {bad} (line {line}): the file is not valid UTF-8 text "
            "(save it as “CSV UTF-8”)",
            {"byte_offset": bad},
        )

    def _nul(self, text: str) -> FileRejected:
        line = self._line_at(text[: text.index("\x00")])
        # csv (3.11+) would accept it, but a NUL means UTF-16 or a binary file, not CSV.
        return FileRejected(
            f"line {line}: the file contains a NUL byte, so it is not UTF-8 CSV text "
            "(UTF-16 or a binary file?)",
            {"line": line},
        )


def chunks_with_end(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    """The chunks, then None: the decoder's final call (an unfinished character is an error)."""
    yield from chunks
    yield None


Getter = Callable[[Sequence[str]], Sequence[str]]


def _getter(indexes: list[int]) -> Getter:
    """cells → the cells at `indexes`, as a sequence (itemgetter returns a bare item for one)."""
    if len(indexes) == 1:
        index = indexes[0]
        return lambda cells: (cells[index],)
    return itemgetter(*indexes)


class _Columns:
    """The header, resolved once: which cell index feeds which field or metadata key."""

    def __init__(self, header: list[str], line: int, options: CsvOptions) -> None:
        if len(header) > MAX_CSV_COLUMNS:
            raise FileRejected(
                f"line {line}: the header row has {len(header)} columns; a CSV file may have "
                f"at most {MAX_CSV_COLUMNS}",
                {"line": line, "columns": len(header), "max_columns": MAX_CSV_COLUMNS},
            )
        self.width = len(header)
        self.fields: list[tuple[int, str]] = []  # record fields, and debit / credit
        self.metadata: list[tuple[int, str]] = []
        names: dict[str, str] = {}
        for index, target in enumerate(column_targets(header, line, options.columns)):
            if target is None:
                continue  # unknown column: ignored on purpose (see module docstring)
            names[target] = header[index].strip()
            if target.startswith(METADATA_PREFIX):
                self.metadata.append((index, target[len(METADATA_PREFIX) :]))
            else:
                self.fields.append((index, target))
        if not names:
            shown = ", ".join(repr(cell.strip()[:40]) for cell in header[:8])
            more = ", …" if len(header) > 8 else ""
            raise FileRejected(
                f"line {line}: the header row ({shown}{more}) has none of the expected "
                f"columns: {EXPECTED_COLUMNS}"
                + (" (and columns maps none of them)" if options.columns else ""),
                {"line": line},
            )
        self.field_names = [name for _, name in self.fields]
        self.meta_names = [key for _, key in self.metadata]
        self.get_fields = _getter([i for i, _ in self.fields]) if self.fields else None
        self.get_meta = _getter([i for i, _ in self.metadata]) if self.metadata else None
        self.convert = RowConverter(
            decimal=options.decimal_separator,
            date_format=options.date_format,
            pair=DEBIT in names,
            names=names,
        )


def _header_delimiter(
    lines: Iterator[str], options: CsvOptions, report: ParseReport | None
) -> tuple[str, Iterator[str]]:
    """The delimiter (detected from the first non-blank line when not given), and the
    lines again from the start: the ones read to see it are handed to csv first."""
    if options.delimiter is not None:
        return DELIMITERS[options.delimiter], lines
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line.strip():
            break
    delimiter = detect_delimiter(seen[-1]) if seen else ","
    if delimiter != "," and report is not None:
        word = next(name for name, char in DELIMITERS.items() if char == delimiter)
        report.notes.append(f"the delimiter {word!r} was detected from the header line")
    return delimiter, chain(seen, lines)


def iter_csv_rows(
    chunks: Iterable[bytes],
    *,
    data_stream_key: str | None,
    options: CsvOptions = DEFAULT_CSV_OPTIONS,
    report: ParseReport | None = None,
) -> Iterator[SourceRow]:
    """One SourceRow per data row; FileRejected when the file as a whole is unusable.

    `options` (SPEC §15) map the header and say how amounts and dates are written; the
    rows come out in our column names and formats. `report` gets a note when the
    delimiter detected is not a comma.

    Rows may already have been yielded when FileRejected is raised (the caller discards
    them). `line` is the physical line where the row starts, the header being line 1.
    """
    rows = _csv_rows(chunks, data_stream_key, options, report, lean=False)
    return cast(Iterator[SourceRow], rows)  # lean=False: never a LeanRow


def iter_csv_rows_lean(
    chunks: Iterable[bytes],
    *,
    data_stream_key: str | None,
    options: CsvOptions = DEFAULT_CSV_OPTIONS,
    report: ParseReport | None = None,
) -> Iterator[SourceRow | LeanRow]:
    """As iter_csv_rows, but when the file qualifies (server/ingest/lean_csv.py) a
    full-width row whose date cell starts with a digit comes as a LeanRow, its cells
    not yet made fields (LeanRow.layout.source_row makes them the very SourceRow).
    Every other row, and every row of a file that does not qualify, is as there."""
    return _csv_rows(chunks, data_stream_key, options, report, lean=True)


def _csv_rows(
    chunks: Iterable[bytes],
    data_stream_key: str | None,
    options: CsvOptions,
    report: ParseReport | None,
    *,
    lean: bool,
) -> Iterator[SourceRow | LeanRow]:
    budget = _RowBudget()
    delimiter, lines = _header_delimiter(_Utf8Lines(chunks, budget).lines(), options, report)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    default_key = data_stream_key or None
    end = 0  # the physical line on which the previous csv record ended
    try:
        columns: _Columns | None = None
        for cells in reader:
            start = end + 1
            end = reader.line_num
            budget.start_line = end + 1
            budget.used = 0
            if not _blank(cells):
                columns = _Columns(cells, start, options)
                break
        if columns is None:
            raise FileRejected("the file is empty: a header row is required")
        width = columns.width
        field_names = columns.field_names
        get_fields = columns.get_fields
        meta_names = columns.meta_names
        get_meta = columns.get_meta
        convert = columns.convert
        layout = (
            LeanLayout.of(field_names, get_meta is not None, convert, default_key)
            if lean and get_fields is not None
            else None
        )
        lean_date = layout.date if layout is not None else 0
        rows = 0
        for cells in reader:
            start = end + 1
            end = reader.line_num
            size = budget.used
            budget.start_line = end + 1
            budget.used = 0
            if layout is not None and len(cells) == width:
                values = get_fields(cells)  # type: ignore[misc]  # a lean file has fields
                # A date cell starting with a digit: the row is not blank, so it is a row.
                if values[lean_date][:1].isdigit():
                    rows += 1
                    yield new_lean_row(LeanRow, (values, start, size, layout))
                    continue
            if len(cells) == width:
                # The hot path: every row of a well-formed file comes through here.
                fields: dict[str, object] = (
                    {
                        k: v
                        for k, v in zip(field_names, get_fields(cells), strict=True)
                        if v and not v.isspace()
                    }
                    if get_fields is not None
                    else {}
                )
                if get_meta is not None:
                    meta = {
                        k: v
                        for k, v in zip(meta_names, get_meta(cells), strict=True)
                        if v and not v.isspace()
                    }
                    if meta:
                        fields["metadata"] = meta
                if not fields and _blank(cells):
                    continue
                # The default options (and any with only a column mapping): a plain
                # amount and an ISO date need no work, and most rows have nothing else
                # (measured in README, "CSV as…").
                problem = convert.settle(fields)
            else:
                if _blank(cells):
                    continue  # an empty line, or fewer/more commas and nothing else
                fields = _partial_fields(columns, cells)
                problem = RowProblem(
                    "malformed_row", f"line {start}: {len(cells)} cells, but the header has {width}"
                )
            if default_key is not None and "data_stream_key" not in fields:
                fields["data_stream_key"] = default_key
            rows += 1
            yield SourceRow(fields, start, problem, size)
    except csv.Error as exc:
        raise _csv_error(exc, end + 1, reader.line_num) from None
    if rows == 0:
        raise FileRejected("the file has a header but no rows")


def _blank(cells: list[str]) -> bool:
    """True for a row with no content: an empty line, or only commas and whitespace."""
    joined = "".join(cells)
    return not joined or joined.isspace()


def _partial_fields(columns: _Columns, cells: list[str]) -> dict[str, object]:
    """The mappable cells of a row whose width differs from the header's."""
    width = len(cells)
    # debit and credit are left out: a row in this shape stays a record's (its problem
    # says why it is not one), and the error export writes our columns.
    fields: dict[str, object] = {
        name: cells[i]
        for i, name in columns.fields
        if i < width and cells[i] and not cells[i].isspace() and name not in PAIR_TARGETS
    }
    meta = {
        key: cells[i]
        for i, key in columns.metadata
        if i < width and cells[i] and not cells[i].isspace()
    }
    if meta:
        fields["metadata"] = meta
    return fields


def _csv_error(exc: csv.Error, start: int, line: int) -> FileRejected:
    """A csv.Error as a whole-file rejection, worded for a person fixing the file."""
    text = str(exc)
    if text.startswith("unexpected end of data"):
        # The quote was opened on the row's first line; that is where the fix goes.
        return FileRejected(
            f"line {start}: a quoted field starting in this row is never closed "
            "(the file ends inside quotes)",
            {"line": start},
        )
    if text.startswith("new-line character seen in unquoted field"):
        return _bare_cr(line)
    return FileRejected(f"line {line}: the CSV cannot be read: {text}", {"line": line})


def _bare_cr(line: int) -> FileRejected:
    return FileRejected(
        f"line {line}: a bare carriage return (CR) outside quotes; line breaks must be LF or CRLF",
        {"line": line},
    )
