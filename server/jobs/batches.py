"""One batch of rows: validate, resolve external_id conflicts, write in one transaction.

The transaction inserts the records, records the row errors, advances the counters
and the checkpoint and writes the heartbeat, all fenced by the worker's claim, so a
batch is either wholly applied exactly once or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.clock import now_rfc3339
from server.db.sqlite.store import Store
from server.db.sqlite.tx import StagedItem, WriteTx
from server.ingest.validation import StreamRef, ValidRecord, validate_row
from server.jobs.fencing import FencedOut
from server.outcomes import Transition
from server.types import JSON, RowProblem


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


def _external_id(fields: Any) -> str | None:
    value = fields.get("external_id") if isinstance(fields, dict) else None
    # Like records (validation refuses a NUL in external_id), row errors hold no NUL in
    # this column; the row's `source` keeps the original id whole.
    return value if isinstance(value, str) and "\x00" not in value else None


async def commit_batch(store: Store, job: JSON, worker: str, batch: Batch) -> JSON:
    """Apply the batch; return the updated request row or raise FencedOut."""
    request_id = job["id"]
    start = batch.start_row
    now = now_rfc3339()
    on_conflict_skip = job["on_conflict"] == "skip"
    # Rows are shaped here, on the loop, so the writer thread holds the lock only for SQL.
    candidates = [(*rec, request_id, start + offset, now) for offset, rec in batch.candidates]

    def work(tx: WriteTx) -> JSON:
        problems = list(batch.problems)
        if on_conflict_skip:
            # The unique index decides; only the count of skipped rows is needed.
            inserted = tx.insert_records_skipping_duplicates(candidates) if candidates else 0
            skipped = len(candidates) - inserted
        else:
            inserted, skipped = _insert_reporting_duplicates(tx, batch, candidates, problems)
        if problems:
            tx.insert_row_errors(
                [
                    (
                        request_id,
                        start + offset,
                        batch.items[offset][0],
                        _external_id(batch.items[offset][1]),
                        p.code,
                        p.message,
                        f"/records/{start + offset}{p.pointer}",
                        orjson.dumps(batch.items[offset]).decode(),
                    )
                    for offset, p in problems
                ]
            )
        updated = tx.record_batch(
            job,
            worker,
            next_row=start + len(batch.items),
            successful=inserted,
            failed=len(problems),
            skipped=skipped,
        )
        if updated is None:
            raise FencedOut(request_id)
        if updated["status"] == "completed":
            tx.delete_chunks(request_id)
            tx.emit(updated, Transition.COMPLETED)
        else:
            tx.emit(updated, Transition.PROGRESS)
        return updated

    return await store.write(work)


def _insert_reporting_duplicates(
    tx: WriteTx,
    batch: Batch,
    candidates: list[tuple[Any, ...]],
    problems: list[tuple[int, RowProblem]],
) -> tuple[int, int]:
    """on_conflict=error: find each duplicate (stored earlier or earlier in this request)
    so it can be reported on its row; insert the rest. Returns (inserted, skipped=0)."""
    pairs = [
        (rec.data_stream_id, rec.external_id)
        for _o, rec in batch.candidates
        if rec.external_id is not None
    ]
    seen = tx.find_existing_external_ids(pairs) if pairs else set()
    inserts: list[tuple[Any, ...]] = []
    for (offset, rec), row in zip(batch.candidates, candidates, strict=True):
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
    if inserts:
        tx.insert_records(inserts)
    return len(inserts), 0
