"""CSV uploads → SourceRows. A plain iterator over byte chunks: no I/O of its own.

UTF-8 (a BOM is tolerated), LF or CRLF, quoted fields with commas, quotes and newlines
(the stdlib `csv` module does the quoting). Known columns map to record fields,
`metadata.<name>` columns into `metadata`, and unknown columns are ignored, so the
error export (which adds `row`, `line`, `error_*` columns) can be fixed and re-uploaded.

Memory stays bounded by the longest line, not the file: bytes are decoded chunk by chunk
and handed to `csv` one physical line at a time, which also makes `reader.line_num` the
physical line number that row errors report.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter

from server.types import FileRejected, RowProblem, SourceRow

RECORD_COLUMNS = ("date", "amount", "currency", "description", "external_id", "data_stream_key")
METADATA_PREFIX = "metadata."
EXPECTED_COLUMNS = ", ".join(RECORD_COLUMNS) + " or metadata.<name>"
# csv's default cap is 128 KiB per field and a longer one aborts the whole file; with
# 1 MiB an over-long description is a row error (too_long) instead.
MAX_FIELD_CHARS = 1024 * 1024
if csv.field_size_limit() < MAX_FIELD_CHARS:
    csv.field_size_limit(MAX_FIELD_CHARS)
# A physical line is buffered whole before csv sees it; without a cap a file with no LF
# (e.g. bare-CR line ends) would be held in memory entire. No legitimate row comes close.
MAX_LINE_CHARS = 8 * MAX_FIELD_CHARS
_BOM = "\ufeff"


class _Utf8Lines:
    """Strictly decoded UTF-8 text, re-cut into physical lines that keep their LF.

    Iterating yields one list of complete lines per input chunk (possibly empty), so the
    per-line work is done in C (`str.split`, `itertools.chain`) rather than by a Python
    generator step per line.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._lines_done = 0  # line breaks decoded so far, i.e. complete lines handed out

    def __iter__(self) -> Iterator[list[str]]:
        decode = codecs.utf_8_decode
        pending = b""  # an incomplete UTF-8 sequence carried over to the next chunk
        offset = 0  # file offset of pending[0]
        partial: list[str] = []  # the current line's text so far; it holds no LF
        partial_chars = 0
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
            lines = text.split("\n")
            last = lines.pop()
            if lines:
                if partial:
                    lines[0] = "".join(partial) + lines[0]
                    partial = []
                    partial_chars = 0
                self._lines_done += len(lines)
                # csv needs the LF itself: inside a quoted field it is part of the value.
                batch = [line + "\n" for line in lines]
            else:
                batch = []
            if last:
                partial.append(last)
                partial_chars += len(last)
                if partial_chars > MAX_LINE_CHARS:
                    raise self._too_long()
            if final and partial:
                batch.append("".join(partial))  # the last line, without a line break
            if batch:
                yield batch

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

    def _too_long(self) -> FileRejected:
        line = self._lines_done + 1
        return FileRejected(
            f"line {line}: more than {MAX_LINE_CHARS} characters without a line break "
            "(line breaks must be LF or CRLF)",
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

    def __init__(self, header: list[str], line: int) -> None:
        self.width = len(header)
        self.fields: list[tuple[int, str]] = []
        self.metadata: list[tuple[int, str]] = []
        seen: set[str] = set()
        for index, cell in enumerate(header):
            name = cell.strip()
            lowered = name.lower()
            if lowered in RECORD_COLUMNS:
                target = lowered
                self.fields.append((index, lowered))
            elif lowered.startswith(METADATA_PREFIX):
                # The key keeps its case and inner text: the error export writes
                # `metadata.<key>` for whatever keys the rows had, and must round-trip.
                key = name[len(METADATA_PREFIX) :]
                target = METADATA_PREFIX + key
                self.metadata.append((index, key))
            else:
                continue  # unknown column: ignored on purpose (see module docstring)
            if target in seen:
                raise FileRejected(
                    f"line {line}: the column {name!r} appears more than once in the header",
                    {"line": line, "column": name},
                )
            seen.add(target)
        if not seen:
            shown = ", ".join(repr(cell.strip()[:40]) for cell in header[:8])
            more = ", …" if len(header) > 8 else ""
            raise FileRejected(
                f"line {line}: the header row ({shown}{more}) has none of the expected "
                f"columns: {EXPECTED_COLUMNS}",
                {"line": line},
            )
        self.field_names = [name for _, name in self.fields]
        self.meta_names = [key for _, key in self.metadata]
        self.get_fields = _getter([i for i, _ in self.fields]) if self.fields else None
        self.get_meta = _getter([i for i, _ in self.metadata]) if self.metadata else None


def iter_csv_rows(chunks: Iterable[bytes], *, data_stream_key: str | None) -> Iterator[SourceRow]:
    """One SourceRow per data row; FileRejected when the file as a whole is unusable.

    Rows may already have been yielded when FileRejected is raised (the caller discards
    them). `line` is the physical line where the row starts, the header being line 1.
    """
    reader = csv.reader(chain.from_iterable(_Utf8Lines(chunks)), strict=True)
    default_key = data_stream_key or None
    end = 0  # the physical line on which the previous csv record ended
    try:
        columns: _Columns | None = None
        for cells in reader:
            start = end + 1
            end = reader.line_num
            if not _blank(cells):
                columns = _Columns(cells, start)
                break
        if columns is None:
            raise FileRejected("the file is empty: a header row is required")
        width = columns.width
        field_names = columns.field_names
        get_fields = columns.get_fields
        meta_names = columns.meta_names
        get_meta = columns.get_meta
        rows = 0
        for cells in reader:
            start = end + 1
            end = reader.line_num
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
                problem = None
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
            yield SourceRow(fields, start, problem)
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
    fields: dict[str, object] = {
        name: cells[i]
        for i, name in columns.fields
        if i < width and cells[i] and not cells[i].isspace()
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
    if text.startswith("field larger than field limit"):
        return FileRejected(
            f"line {start}: a field in the row starting here is longer than "
            f"{MAX_FIELD_CHARS} characters (is a quote left open?)",
            {"line": start},
        )
    if text.startswith("new-line character seen in unquoted field"):
        return FileRejected(
            f"line {line}: a bare carriage return (CR) outside quotes; "
            "line breaks must be LF or CRLF",
            {"line": line},
        )
    return FileRejected(f"line {line}: the CSV cannot be read: {text}", {"line": line})
