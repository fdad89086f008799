"""What the NACHA parser remembers while it reads: the open batch, the open entry, and
the trace numbers it has seen. Plain state, shared by nacha.py and nacha_rules.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.ingest.nacha_codes import NachaOption


@dataclass(slots=True)
class BatchState:
    line: int
    header: str
    sec: str
    number: str
    odfi: str
    service_class: int | None
    reversal: bool
    row_date: str | None = None  # the records' ISO date, "" when neither date is one
    entries: int = 0
    count: int = 0
    entry_hash: int = 0
    debit: int = 0
    credit: int = 0
    last_trace: str = ""
    last_trace_line: int = 0


@dataclass(slots=True)
class EntryState:
    line: int
    record: str
    code: int
    amount: int
    trace: str
    announced_addenda: bool
    addenda: list[str] = field(default_factory=list)
    last_addenda05_sequence: int = 0


class TraceRegistry:
    """FORMAT.md: two entries of one file with the same (batch number, trace number) are a
    broken file, refused naming both lines, never relaxed (a skipped "duplicate" would be
    a lost payment).

    By default trace numbers must ascend within a batch and batch numbers across the file,
    so a repeat can only be the entry just before: nothing is remembered, memory stays
    flat. When custom_trace_numbers or allow_unordered_batch_numbers lift those rules,
    every (batch number, trace number) is remembered (about 120 bytes per entry:
    60 MB for 500,000).
    """

    def __init__(self, options: frozenset[NachaOption]) -> None:
        self.remember_all = bool(
            options & {NachaOption.CUSTOM_TRACE_NUMBERS, NachaOption.ALLOW_UNORDERED_BATCH_NUMBERS}
        )
        self.seen: dict[int | str, int] = {}

    def earlier_line(self, entry: EntryState, batch: BatchState) -> int | None:
        """The line of an earlier entry with this entry's batch and trace number, if any.

        Call before FieldRules.entry (which moves the batch's last trace on)."""
        if self.remember_all:
            key = batch.number + entry.trace
            # 22 digits as one int take half the memory of the string (a batch number
            # that is not numeric was reported already; its key simply stays a string).
            earlier = self.seen.setdefault(
                int(key) if key.isascii() and key.isdigit() else key, entry.line
            )
            return earlier if earlier != entry.line else None
        if entry.trace == batch.last_trace:
            return batch.last_trace_line
        return None
