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
from server.models import BulkRequest
from server.staging import StagedItem
from server.types import RowProblem

T = TypeVar("T")


@dataclass(slots=True)
class Batch:
    start_row: int
    items: Sequence[StagedItem]
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


def withhold_reserved(
    batch: Batch,
    rows: Sequence[T],
    reserved: set[tuple[int, str]],
    problems: list[tuple[int, RowProblem]],
) -> list[T]:
    """Candidates whose (stream, external_id) hidden records of another atomic request
    hold (SPEC §14) become external_id_reserved problems, whatever on_conflict says; the
    batch keeps the other candidates, and their rows are returned (aligned with them)."""
    kept: list[tuple[int, ValidRecord]] = []
    kept_rows: list[T] = []
    for (offset, rec), row in zip(batch.candidates, rows, strict=True):
        if rec.external_id is not None and (rec.data_stream_id, rec.external_id) in reserved:
            problems.append(
                (
                    offset,
                    RowProblem(
                        "external_id_reserved",
                        f"external_id {rec.external_id!r} is held by an atomic bulk request "
                        "of this data stream that has not completed; retry this row once "
                        "that request has ended",
                        "/external_id",
                    ),
                )
            )
            continue
        kept.append((offset, rec))
        kept_rows.append(row)
    batch.candidates = kept
    return kept_rows


def atomic_failure_message(request: BulkRequest) -> str:
    """The error_message of an atomic request that ended with failed rows (SPEC §14)."""
    return (
        f"atomic request: {request.failed_items} of {request.total_items} rows failed, so no "
        f"record of it was stored; the failed rows are at "
        f"/v1/bulk_requests/{request.id}/errors"
    )
