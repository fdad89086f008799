"""CSV uploads → SourceRows. A plain iterator over byte chunks: no I/O of its own.

UTF-8 (a BOM is tolerated), LF or CRLF, quoted fields with commas, quotes and newlines
(the stdlib `csv` module does the quoting). Known columns map to record fields,
`metadata.<name>` columns into `metadata`, and unknown columns are ignored, so the
error export (which adds `row`, `line`, `error_*` columns) can be fixed and re-uploaded.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator

from server.types import FileRejected, RowProblem, SourceRow

RECORD_COLUMNS = ("date", "amount", "currency", "description", "external_id", "data_stream_key")
METADATA_PREFIX = "metadata."
# csv's default cap is 128 KiB per field and a longer one aborts the whole file; with
# 1 MiB an over-long description is a row error (too_long) instead.
MAX_FIELD_CHARS = 1024 * 1024
if csv.field_size_limit() < MAX_FIELD_CHARS:
    csv.field_size_limit(MAX_FIELD_CHARS)


def _text_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Decode strictly and split on LF only (keeping it), reporting bad bytes by offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0
    carry = ""
    at_start = True
    for chunk in chunks_with_end(chunks):
        final = chunk is None
        data = b"" if chunk is None else chunk
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:
            offset = fed - pending + exc.start
            raise FileRejected(
                f"byte offset {offset}: the file is not valid UTF-8 text (save it as CSV UTF-8)",
                {"byte_offset": offset},
            ) from None
        fed += len(data)
        if at_start and text:
            text = text.removeprefix("\ufeff")
            at_start = False
        if not text:
            continue
        parts = (carry + text).split("\n")
        carry = parts.pop()
        for part in parts:
            yield part + "\n"
    if carry:
        yield carry


def chunks_with_end(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    """The chunks, then None: the decoder's final call (an unfinished character is an error)."""
    yield from chunks
    yield None


class _Columns:
    """The header, resolved once: cell index → record field or metadata key."""

    def __init__(self, header: list[str]) -> None:
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
            elif lowered.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
                target = METADATA_PREFIX + name[len(METADATA_PREFIX) :]
                self.metadata.append((index, name[len(METADATA_PREFIX) :]))
            else:
                continue  # unknown column: ignored on purpose (see module docstring)
            if target in seen:
                raise FileRejected(
                    f"line 1: column {name!r} appears twice in the header",
                    {"line": 1, "column": name},
                )
            seen.add(target)
        if not self.fields and not self.metadata:
            raise FileRejected(
                "the header row has none of the expected columns "
                f"({', '.join(RECORD_COLUMNS)}, metadata.<name>)",
                {"line": 1, "header": header[:50]},
            )


def iter_csv_rows(chunks: Iterable[bytes], *, data_stream_key: str | None) -> Iterator[SourceRow]:
    lines = _text_lines(chunks)
    reader = csv.reader(lines, strict=True)
    columns: _Columns | None = None
    rows = 0
    try:
        while True:
            start_line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            if columns is None:
                columns = _Columns(cells)
                continue
            rows += 1
            yield _row(columns, cells, start_line, data_stream_key)
    except csv.Error as exc:
        line = reader.line_num
        raise FileRejected(f"line {line}: the CSV cannot be read: {exc}", {"line": line}) from None
    if columns is None:
        raise FileRejected("the file is empty: a header row is required")
    if rows == 0:
        raise FileRejected("the file has a header but no rows")


def _row(columns: _Columns, cells: list[str], line: int, default_key: str | None) -> SourceRow:
    width = len(cells)
    fields: dict[str, object] = {}
    for index, name in columns.fields:
        if index < width:
            value = cells[index]
            if value and not value.isspace():
                fields[name] = value
    if columns.metadata:
        metadata = {
            key: cells[i]
            for i, key in columns.metadata
            if i < width and cells[i] and not cells[i].isspace()
        }
        if metadata:
            fields["metadata"] = metadata
    if "data_stream_key" not in fields and default_key:
        fields["data_stream_key"] = default_key
    problem = None
    if width != columns.width:
        problem = RowProblem(
            "malformed_row",
            f"line {line}: {width} cells, but the header has {columns.width}",
        )
    return SourceRow(fields=fields, line=line, problem=problem)
