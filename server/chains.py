"""Chains of retries (SPEC §7): which original rows a chain has already dealt with.

A request and its retries form a chain. Its rows are named by their index in the
chain's *origin*: the first member whose rows were staged (the request itself, or for
an upload cancelled before its file was parsed, the retry that parsed it). A retry's
rows are recorded as runs of origin rows (`RowRun`), so that whichever member is
retried, the new request holds exactly the origin rows no member stored or skipped.

Pure row arithmetic, no I/O: a storage adapter's `create_retry` reads the chain in its
write transaction and builds the new request from what this module computes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from server.models import ChainMember
from server.types import Mode, Status

# A half-open range of row indexes [start, end).
RowRange = tuple[int, int]


@dataclass(frozen=True, slots=True)
class RowRun:
    """Rows first_row … first_row+row_count-1 of a request are origin rows origin_row … ."""

    first_row: int
    row_count: int
    origin_row: int


def identity_runs(total_items: int) -> list[RowRun]:
    """The origin's own rows: row i is origin row i."""
    return [RowRun(0, total_items, 0)] if total_items else []


class RowMap:
    """A request's rows → origin rows, from its runs (ordered by first_row, contiguous)."""

    def __init__(self, runs: Sequence[RowRun]) -> None:
        self.runs = list(runs)
        self._firsts = [run.first_row for run in self.runs]

    def to_origin(self, start: int, end: int) -> Iterator[RowRange]:
        """The origin rows of the request's rows [start, end), as ranges in row order."""
        index = max(0, bisect_right(self._firsts, start) - 1)
        position = start
        while position < end and index < len(self.runs):
            run = self.runs[index]
            run_end = run.first_row + run.row_count
            if not run.first_row <= position < run_end:
                break
            stop = min(end, run_end)
            offset = run.origin_row - run.first_row
            yield position + offset, stop + offset
            position = stop
            index += 1
        if position < end:
            raise ValueError(f"row {position} is outside the request's recorded runs")


def handled_rows(next_row: int, error_rows: Iterable[int]) -> Iterator[RowRange]:
    """A member's rows that were stored or skipped: processed (below the checkpoint) and
    not failed. `error_rows` ascending, as row_errors lists them."""
    position = 0
    for row in error_rows:
        if row > position:
            yield position, row
        position = row + 1
    if next_row > position:
        yield position, next_row


def remainder_runs(
    parent: RowMap, next_row: int, total_items: int, error_rows: Sequence[int]
) -> list[RowRun]:
    """The runs of a retry made before retry_row_runs existed (its migration).

    Such a retry held its parent's failed rows then its never-processed rows, in the
    parent's order; the parent was terminal, so these are still exactly known.
    """
    parent_rows: list[RowRange] = [(row, row + 1) for row in error_rows]
    if next_row < total_items:
        parent_rows.append((next_row, total_items))
    builder = RunBuilder()
    for start, end in parent_rows:
        for origin_start, origin_end in parent.to_origin(start, end):
            builder.add(origin_start, origin_end)
    return builder.runs


class RunBuilder:
    """Appends origin ranges as a new request's rows, merging adjacent ones into runs."""

    def __init__(self) -> None:
        self.runs: list[RowRun] = []
        self.row_count = 0

    def add(self, origin_start: int, origin_end: int) -> None:
        count = origin_end - origin_start
        last = self.runs[-1] if self.runs else None
        if last is not None and last.origin_row + last.row_count == origin_start:
            self.runs[-1] = RowRun(last.first_row, last.row_count + count, last.origin_row)
        else:
            self.runs.append(RowRun(self.row_count, count, origin_start))
        self.row_count += count


class Coverage:
    """Which origin rows some member of the chain has stored or skipped (one byte each:
    a million-row file costs 1 MB while its retry is built, then nothing)."""

    def __init__(self, origin_total: int) -> None:
        self._handled = bytearray(origin_total)

    def mark(self, start: int, end: int) -> None:
        self._handled[start:end] = b"\x01" * (end - start)

    def gaps(self) -> Iterator[RowRange]:
        """The origin rows nobody stored or skipped, as maximal ranges in order."""
        handled = self._handled
        position = 0
        while (start := handled.find(0, position)) >= 0:
            end = handled.find(1, start)
            end = len(handled) if end < 0 else end
            yield start, end
            position = end


def chain_coverage(
    staged: Sequence[ChainMember],
    error_rows: Mapping[int, list[int]],
    recorded_runs: Mapping[int, list[RowRun]],
) -> Coverage:
    """Which origin rows the chain stored or skipped, from what each member processed.

    `staged` are the members that staged rows, oldest first: the origin, then retries;
    `error_rows` each member's row-error rows and `recorded_runs` each retry's runs (as
    the adapter read them in the retry's transaction; empty for a retry made before runs
    were recorded, whose runs are rebuilt from its parent).
    """
    origin = staged[0]
    coverage = Coverage(origin.total_items)
    maps: dict[int, RowMap] = {}
    for member in staged:
        if member is origin:
            runs = identity_runs(origin.total_items)
        else:
            runs = recorded_runs.get(member.id, [])
            if not runs:  # a retry made before runs were recorded
                parent = next(m for m in staged if m.id == member.parent_bulk_request_id)
                runs = remainder_runs(
                    maps[parent.id],
                    parent.next_row,
                    parent.total_items,
                    error_rows[parent.id],
                )
        row_map = maps[member.id] = RowMap(runs)
        if member.mode == Mode.ATOMIC and member.status != Status.COMPLETED:
            # SPEC §14: an atomic request that did not complete stored (and skipped) nothing.
            continue
        for start, end in handled_rows(member.next_row, error_rows[member.id]):
            for origin_start, origin_end in row_map.to_origin(start, end):
                coverage.mark(origin_start, origin_end)
    return coverage
