"""Bytes of a NACHA file → (line number, 94-character record) pairs; no I/O of its own.

Real files end their lines with LF or CRLF, or have no line breaks at all; editors strip
trailing blanks (short lines are padded back) or add some (lines blank past column 94 are
trimmed). Both are warnings in the ParseReport, listed with bounded memory.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import NoReturn

from server.constants import MAX_NACHA_LINE_BYTES, NACHA_MAX_LISTED_WARNINGS
from server.ingest.nacha_codes import Rule
from server.ingest.nacha_findings import Findings
from server.types import ParseReport

RECORD_LENGTH = 94
# How far to look for the first line break before deciding the file has none.
_HEAD_BYTES = 64 * 1024


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Real files carry Windows-1252 names; undefined bytes there are kept as latin-1.
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def physical_records(
    chunks: Iterable[bytes], report: ParseReport, findings: Findings
) -> Iterator[tuple[int, str]]:
    """(line number, 94-character record) pairs, from LF, CRLF or unbroken files."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if b"\n" in head or len(head) > _HEAD_BYTES:
            break
    if _has_line_breaks(head):
        yield from _Lines(report, findings).records(head, iterator)
    else:
        yield from _unbroken(head, iterator, findings)


def _has_line_breaks(head: bytes) -> bool:
    # An unbroken file may end in one newline: its "first line" is then the whole file,
    # with records (never blanks) past column 94. A first line that is at most 94
    # characters, or only blanks beyond, is a line of a file with line breaks.
    end = head.find(b"\n")
    if end < 0:
        return False
    first = decode(head[:end].rstrip(b"\r"))
    return not first[RECORD_LENGTH:].strip(" ")


class _ListedLines:
    """Line numbers for one warning: the first few kept, the rest only counted."""

    def __init__(self) -> None:
        self.lines: list[int] = []
        self.count = 0

    def add(self, line: int) -> bool:
        self.count += 1
        if len(self.lines) < NACHA_MAX_LISTED_WARNINGS:
            self.lines.append(line)
            return True
        return False

    def phrase(self) -> str:
        """`line 3` / `lines 3 and 5` / `lines 3, 5 and 6` / `lines 3, 5, … and 40 more`."""
        shown = [str(n) for n in self.lines]
        more = self.count - len(shown)
        if len(shown) == 1 and not more:
            return f"line {shown[0]}"
        if more:
            return f"lines {', '.join(shown)} and {more} more"
        return f"lines {', '.join(shown[:-1])} and {shown[-1]}"


class _Lines:
    def __init__(self, report: ParseReport, findings: Findings) -> None:
        self.report = report
        self.findings = findings
        self.number = 0
        self.blank_run: list[int] = []
        self.short = _ListedLines()
        self.long = _ListedLines()

    def records(self, head: bytes, rest: Iterator[bytes]) -> Iterator[tuple[int, str]]:
        # Each chunk is searched once from where the last line ended; only the part of a
        # line that spans chunks is kept, and never more than a line may hold: reading
        # stays linear in the file and memory bounded however long a line is.
        pending = bytearray()
        for chunk in chain((head,), rest):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                if pending:
                    pending += chunk[start:end]
                    raw = bytes(pending)
                    pending.clear()
                else:
                    raw = chunk[start:end]
                found = self._record(raw)
                if found is not None:
                    yield found
                start = end + 1
            if len(pending) + len(chunk) - start > MAX_NACHA_LINE_BYTES:
                self._too_long(self.number + 1)
            pending += chunk[start:]
        if pending:
            found = self._record(bytes(pending))
            if found is not None:
                yield found
        if self.short.count > len(self.short.lines):
            more = self.short.count - len(self.short.lines)
            self.report.warnings.append(f"{more} more short lines padded")
        if self.long.count:
            verb = "carries" if self.long.count == 1 else "carry"
            self.report.warnings.append(
                f"{self.long.phrase()} {verb} blanks past column {RECORD_LENGTH}: trimmed"
            )

    def _too_long(self, number: int) -> NoReturn:
        raise self.findings.fatal(
            number,
            Rule.RECORD_LENGTH,
            f"more than {MAX_NACHA_LINE_BYTES} bytes without a line break "
            f"(a record is {RECORD_LENGTH} characters)",
        )

    def _record(self, raw: bytes) -> tuple[int, str] | None:
        """The line's record, or None for a blank line (allowed only at the end)."""
        self.number += 1
        number = self.number
        if len(raw) > MAX_NACHA_LINE_BYTES:
            self._too_long(number)
        text = decode(raw.rstrip(b"\r"))
        if not text.strip():
            self.blank_run.append(number)
            return None
        if self.blank_run:
            raise self.findings.fatal(
                self.blank_run[0], Rule.BLANK_LINE, "blank line inside the file"
            )
        if len(text) > RECORD_LENGTH:
            if text[RECORD_LENGTH:].strip(" "):
                raise self.findings.fatal(
                    number,
                    Rule.RECORD_LENGTH,
                    f"length {len(text)} > {RECORD_LENGTH}, with characters past "
                    f"column {RECORD_LENGTH} that are not blanks",
                    length=len(text),
                )
            self.long.add(number)
            text = text[:RECORD_LENGTH]
        elif len(text) < RECORD_LENGTH:
            if self.short.add(number):
                self.report.warnings.append(f"line {number}: short ({len(text)}), padded")
            text = text.ljust(RECORD_LENGTH)
        return number, text


def _unbroken(head: bytes, rest: Iterator[bytes], findings: Findings) -> Iterator[tuple[int, str]]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(head)
    number = 0
    for chunk in rest:
        text += decoder.decode(chunk)
        # The last record is held back: only at the end is it known whether a final
        # line break follows it. Slicing by offset keeps each chunk linear in its size.
        start = 0
        while start + RECORD_LENGTH * 2 <= len(text):
            number += 1
            yield number, text[start : start + RECORD_LENGTH]
            start += RECORD_LENGTH
        text = text[start:]
    text += decoder.decode(b"", final=True)
    text = text.rstrip("\r\n")
    if len(text) % RECORD_LENGTH:
        total = number * RECORD_LENGTH + len(text)
        raise findings.fatal(
            None,
            Rule.RECORD_LENGTH,
            f"the file has no line breaks and its length {total} is not a multiple "
            f"of {RECORD_LENGTH}",
            length=total,
        )
    for start in range(0, len(text), RECORD_LENGTH):
        number += 1
        yield number, text[start : start + RECORD_LENGTH]
