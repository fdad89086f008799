"""One batch of rows: validate it, and the pure rules of how its transaction writes it.

A storage adapter's `commit_batch` (server/db/port.py) inserts the records, records the
row errors, advances the counters and the checkpoint and writes the heartbeat, all
fenced by the worker's claim, so a batch is either wholly applied exactly once or not
at all. What it decides — which candidates are duplicates to report, which external_id
a row error keeps — is decided here, the same for every adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.ingest.validation import StreamRef, ValidRecord, validate_row
from server.staging import StagedItem
from server.types import RowProblem

T = TypeVar("T")


@dataclass(slots=True)
class Batch:
    start_row: int
    # The staged rows (a validated batch: its records, which never make a row error).
    items: Sequence[StagedItem] | Sequence[ValidRecord]
    candidates: list[tuple[int, ValidRecord]] = field(default_factory=list)
    problems: list[tuple[int, RowProblem]] = field(default_factory=list)


def validate_batch(
    start_row: int, items: Sequence[StagedItem], streams: dict[str, StreamRef]
) -> Batch:
    batch = Batch(start_row, items)
    for offset, (_line, fields, problem) in enumerate(items):
        if problem is not None:
            batch.problems.append((offset, RowProblem(*problem)))
            continue
        result = validate_row(fields, streams)
        if isinstance(result, RowProblem):
            batch.problems.append((offset, result))
        else:
            batch.candidates.append((offset, result))
    return batch


def validated_batch(start_row: int, records: Sequence[ValidRecord]) -> Batch:
    """A batch of rows the accept proved valid (server/staging.py ValidatedRows): every
    row is a candidate, nothing is validated again."""
    return Batch(start_row, records, candidates=list(enumerate(records)))


def stream_keys_of(items: Sequence[StagedItem]) -> set[str]:
    keys: set[str] = set()
    for _line, fields, _problem in items:
        if isinstance(fields, dict):
            key = fields.get("data_stream_key")
            if isinstance(key, str):
                keys.add(key)
    return keys


def external_id_of(fields: Any) -> str | None:
    """The external_id a row error keeps for a staged row's fields."""
    value = fields.get("external_id") if isinstance(fields, dict) else None
    # Like records (validation refuses a NUL in external_id), row errors hold no NUL in
    # this column; the row's `source` keeps the original id whole.
    return value if isinstance(value, str) and "\x00" not in value else None


def candidate_pairs(batch: Batch) -> list[tuple[int, str]]:
    """The (data_stream_id, external_id) pairs the batch's candidates would take."""
    return [
        (rec.data_stream_id, rec.external_id)
        for _o, rec in batch.candidates
        if rec.external_id is not None
    ]


def split_duplicates(
    batch: Batch,
    rows: Sequence[T],
    existing: set[tuple[int, str]],
    problems: list[tuple[int, RowProblem]],
) -> list[T]:
    """on_conflict=error: which candidates to insert, given the pairs already stored.

    `rows` are the candidates as the adapter inserts them (one per candidate, in order).
    A candidate whose (stream, external_id) is stored, or taken earlier in this batch,
    becomes a duplicate_external_id problem appended to `problems`; the rest are returned.
    """
    seen = set(existing)
    inserts: list[T] = []
    for (offset, rec), row in zip(batch.candidates, rows, strict=True):
        if rec.external_id is not None:
            pair = (rec.data_stream_id, rec.external_id)
            if pair in seen:
                problems.append(
                    (
                        offset,
                        RowProblem(
                            "duplicate_external_id",
                            f"a record with external_id {rec.external_id!r} already exists "
                            "in this data stream",
                            "/external_id",
                        ),
                    )
                )
                continue
            seen.add(pair)
        inserts.append(row)
    return inserts
