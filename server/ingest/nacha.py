"""NACHA (ACH) files → SourceRows: a strict streaming parser with no I/O of its own.

The rules are `shared/nacha/FORMAT.md`'s: the structure (record order, counts, hashes,
totals, repeated trace numbers) here, the field rules in nacha_rules.py, the physical
lines in nacha_records.py. Entries are yielded as soon as their addenda are read, before
the batch and file controls that vouch for them have been checked: the caller only stages
rows and discards them all when FileRejected is raised, so "nothing is inserted unless
the whole file is valid" holds with bounded memory. Once a rule is broken no more rows
are yielded, but reading goes on to report every problem (nacha_findings.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from server.ingest.nacha_codes import NachaOption, Rule
from server.ingest.nacha_findings import Findings
from server.ingest.nacha_mapping import entry_row
from server.ingest.nacha_records import RECORD_LENGTH, physical_records
from server.ingest.nacha_rules import FieldRules
from server.ingest.nacha_state import BatchState, EntryState, TraceRegistry
from server.types import ParseReport, SourceRow

PADDING = "9" * RECORD_LENGTH
HASH_MODULUS = 10**10  # entry hashes keep only their rightmost 10 digits
BLOCKING_FACTOR = 10  # records per block


def iter_nacha_rows(
    chunks: Iterable[bytes],
    *,
    data_stream_key: str,
    report: ParseReport | None = None,
    options: Iterable[NachaOption] = (),
) -> Iterator[SourceRow]:
    report = report if report is not None else ParseReport()
    parser = _Parser(data_stream_key, report, frozenset(options))
    for line, record in physical_records(chunks, report, parser.findings):
        row = parser.feed(line, record)
        if row is not None:
            yield row
    parser.finish()


@dataclass(slots=True)
class _FileTotals:
    batches: int = 0
    count: int = 0
    entry_hash: int = 0
    debit: int = 0
    credit: int = 0


class _Parser:
    def __init__(self, stream: str, report: ParseReport, options: frozenset[NachaOption]):
        self.stream = stream
        self.report = report
        self.findings = Findings(options)
        self.rules = FieldRules(self.findings)
        self.traces = TraceRegistry(options)
        self.totals = _FileTotals()
        self.identity = ""
        self.creation_date = ""
        self.batch: BatchState | None = None
        self.entry: EntryState | None = None
        self.seen_header = False
        self.control_line: int | None = None
        self.records = 0
        self.control_index = 0
        self.block_count = 0

    def feed(self, line: int, record: str) -> SourceRow | None:
        """Take one record; return the row of the entry it completes, if any."""
        self.records += 1
        kind = record[0]
        if self.control_line is not None:
            if record != PADDING:
                raise self.findings.fatal(
                    line, Rule.AFTER_FILE_CONTROL, "data after the file control record"
                )
            return None
        self.rules.characters(line, record)
        if not self.seen_header:
            if kind != "1":
                raise self.findings.fatal(
                    line, Rule.NO_FILE_HEADER, "no file header (the first record must be type 1)"
                )
            self.seen_header = True
            self.creation_date = record[23:29]
            self.identity = self.rules.file_header(line, record)
            return None
        row = self._complete_entry() if kind != "7" and self.entry is not None else None
        if kind == "5":
            self._batch_header(line, record)
        elif kind == "6":
            self._entry(line, record)
        elif kind == "7":
            self._addenda(line, record)
        elif kind == "8":
            self._batch_control(line, record)
        elif kind == "9":
            self._file_control(line, record)
        elif kind == "1":
            raise self.findings.fatal(line, Rule.SECOND_FILE_HEADER, "a second file header")
        else:
            raise self.findings.fatal(
                line, Rule.UNKNOWN_RECORD_TYPE, f"unknown record type {kind!r}"
            )
        return row

    def finish(self) -> None:
        if not self.seen_header:
            raise self.findings.fatal(
                None, Rule.NO_FILE_HEADER, "the file is empty: no file header"
            )
        if self.control_line is None:
            raise self.findings.fatal(
                None, Rule.NO_FILE_CONTROL, "the file ends without a file control record"
            )
        if self.findings:
            raise self.findings.rejection()
        blocks = -(-self.control_index // BLOCKING_FACTOR)
        if self.block_count != blocks:
            self.report.warnings.append(
                f"file control block count {self.block_count}, but the file has "
                f"{blocks} blocks (all totals agree)"
            )
        if self.records % BLOCKING_FACTOR:
            self.report.notes.append("the file is not padded to a multiple of 10 records")

    # --- records ---------------------------------------------------------------------------

    def _batch_header(self, line: int, record: str) -> None:
        if self.batch is not None:
            raise self.findings.fatal(
                line, Rule.BATCH_HEADER_INSIDE_BATCH, "batch header inside batch"
            )
        if record[50:53] == "ADV":
            raise self.findings.fatal(
                line,
                Rule.ADV_NOT_SUPPORTED,
                "ADV (automated accounting advice) files use a different entry layout "
                "and are not supported",
            )
        self.batch = self.rules.batch_header(line, record)

    def _entry(self, line: int, record: str) -> None:
        batch = self.batch
        if batch is None:
            raise self.findings.fatal(
                line, Rule.ENTRY_OUTSIDE_BATCH, "entry detail outside a batch"
            )
        code = self._number(record[1:3], line, "transaction code", Rule.ENTRY_NUMERIC)
        rdfi = self._number(record[3:11], line, "receiving DFI identification", Rule.ENTRY_NUMERIC)
        amount = self._number(record[29:39], line, "amount", Rule.ENTRY_NUMERIC)
        trace = record[79:94]
        self._number(trace, line, "trace number", Rule.ENTRY_NUMERIC)
        entry = EntryState(line, record, code, amount, trace, record[78] == "1")
        earlier = self.traces.earlier_line(entry, batch)
        if earlier is not None:
            self.findings.add(
                line,
                Rule.REPEATED_TRACE_NUMBER,
                f"trace number {trace} repeats line {earlier}",
                first_line=earlier,
                batch_number=batch.number,
                trace_number=trace,
            )
        self.rules.entry(entry, batch)
        batch.entries += 1
        batch.count += 1
        batch.entry_hash += rdfi
        if code % 10 >= 5:
            batch.debit += amount
        else:
            batch.credit += amount
        self.entry = entry

    def _addenda(self, line: int, record: str) -> None:
        entry = self.entry
        if entry is None or not entry.announced_addenda:
            raise self.findings.fatal(
                line, Rule.STRAY_ADDENDA, "addenda without an entry that announced it"
            )
        assert self.batch is not None
        self.batch.count += 1
        entry.addenda.append(record)
        self.rules.addenda(line, record, entry)

    def _complete_entry(self) -> SourceRow | None:
        entry, batch = self.entry, self.batch
        assert entry is not None
        assert batch is not None
        self.entry = None
        self.rules.entry_complete(entry)
        if self.findings:
            return None  # the file is rejected already: no row is worth mapping
        return entry_row(entry, batch, self.identity, self.creation_date, self.stream, self.report)

    def _batch_control(self, line: int, record: str) -> None:
        batch = self.batch
        if batch is None:
            raise self.findings.fatal(
                line, Rule.CONTROL_OUTSIDE_BATCH, "batch control outside a batch"
            )
        if not batch.entries:
            self.findings.add(
                line, Rule.BATCH_WITHOUT_ENTRIES, f"the batch of line {batch.line} has no entries"
            )

        def num(a: int, b: int, what: str) -> int:
            return self._number(record[a:b], line, what, Rule.BATCH_CONTROL_NUMERIC)

        for rule, what, stated, actual, unit in (
            (
                Rule.BATCH_ENTRY_COUNT,
                "batch control entry/addenda count",
                num(4, 10, "entry/addenda count"),
                batch.count,
                "the batch has",
            ),
            (
                Rule.BATCH_ENTRY_HASH,
                "batch control entry hash",
                num(10, 20, "entry hash"),
                batch.entry_hash % HASH_MODULUS,
                "its entries sum to",
            ),
            (
                Rule.BATCH_DEBIT_TOTAL,
                "batch control total debit",
                num(20, 32, "total debit"),
                batch.debit,
                "its debit entries sum to",
            ),
            (
                Rule.BATCH_CREDIT_TOTAL,
                "batch control total credit",
                num(32, 44, "total credit"),
                batch.credit,
                "its credit entries sum to",
            ),
        ):
            self._compare(line, rule, what, stated, actual, unit)
        self.rules.batch_control(line, record, batch)
        totals = self.totals
        totals.batches += 1
        totals.count += batch.count
        totals.entry_hash += batch.entry_hash
        totals.debit += batch.debit
        totals.credit += batch.credit
        self.batch = None

    def _file_control(self, line: int, record: str) -> None:
        if self.batch is not None:
            raise self.findings.fatal(
                line, Rule.FILE_CONTROL_INSIDE_BATCH, "file control before the batch control"
            )

        def num(a: int, b: int, what: str) -> int:
            return self._number(record[a:b], line, what, Rule.FILE_CONTROL_NUMERIC)

        totals = self.totals
        for rule, what, stated, actual, unit in (
            (
                Rule.FILE_BATCH_COUNT,
                "file control batch count",
                num(1, 7, "batch count"),
                totals.batches,
                "the file has {} batches",
            ),
            (
                Rule.FILE_ENTRY_COUNT,
                "file control entry/addenda count",
                num(13, 21, "entry/addenda count"),
                totals.count,
                "the batches have",
            ),
            (
                Rule.FILE_ENTRY_HASH,
                "file control entry hash",
                num(21, 31, "entry hash"),
                totals.entry_hash % HASH_MODULUS,
                "the batches sum to",
            ),
            (
                Rule.FILE_DEBIT_TOTAL,
                "file control total debit",
                num(31, 43, "total debit"),
                totals.debit,
                "the batches sum to",
            ),
            (
                Rule.FILE_CREDIT_TOTAL,
                "file control total credit",
                num(43, 55, "total credit"),
                totals.credit,
                "the batches sum to",
            ),
        ):
            self._compare(line, rule, what, stated, actual, unit)
        if not totals.batches:
            self.findings.add(line, Rule.NO_BATCHES, "the file has no batch")
        self.control_line = line
        self.control_index = self.records
        self.block_count = num(7, 13, "block count")

    def _number(self, text: str, line: int, what: str, rule: Rule) -> int:
        # The fields every total depends on: the structure cannot be checked without them.
        if not text.isdigit() or not text.isascii():
            raise self.findings.fatal(line, rule, f"{what} {text.strip()!r} is not numeric")
        return int(text)

    def _compare(
        self, line: int, rule: Rule, what: str, stated: int, actual: int, unit: str
    ) -> None:
        # `unit` reads before the actual value, or around it where it holds a "{}".
        if stated != actual:
            said = unit.format(actual) if "{}" in unit else f"{unit} {actual}"
            self.findings.add(
                line, rule, f"{what} {stated}, but {said}", stated=stated, actual=actual
            )
