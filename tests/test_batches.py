"""Unit tests of server/jobs/batches.py against the fast store (no HTTP, no workers).

Each test stages a request with the real submit path, claims it as a worker would, and
applies batches with `commit_batch` itself, so it sees exactly what one batch commits.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from server.batches import stream_keys_of, validate_batch
from server.bulk_requests import submit_records
from server.db.port import FencedOut
from server.db.sqlite.store import Store
from server.ingest.validation import StreamRef, ValidRecord
from server.models import BulkRequest
from server.staging import StagedItem
from server.types import RowProblem
from tests.conftest import claim_next, make_environment, make_stream

WORKER = "unit-worker-1"
AMOUNT_MESSAGE = "amount must be a decimal number such as 12.34"


def rec(n: int, external_id: str | None = None, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"date": "2024-01-31", "data_stream_key": "bank", "amount": f"{n}.25"}
    if external_id is not None:
        fields["external_id"] = external_id
    fields.update(extra)
    return fields


async def staged_request(
    store: Store, env: int, records: list[Any], on_conflict: str = "error"
) -> tuple[BulkRequest, list[StagedItem]]:
    """Submit `records`, claim the request for WORKER; (the claimed job, its staged rows)."""
    await submit_records(store, env, records, on_conflict, None, body_bytes=100)
    job = await claim_next(store, WORKER)
    assert job is not None
    chunk = await store.get_chunk_at(job.id, 0)
    assert chunk is not None
    return job, chunk.items()


async def streams_of(store: Store, env: int, items: list[StagedItem]) -> dict[str, StreamRef]:
    return await store.find_data_streams(env, stream_keys_of(items))


async def request_row(store: Store, env: int, request_id: int) -> BulkRequest:
    row = await store.get_bulk_request(env, request_id)
    assert row is not None
    return row


async def external_ids(store: Store, env: int, request_id: int) -> list[str | None]:
    records = await store.list_records(
        env, data_stream_key=None, bulk_request_id=request_id, after_id=0, limit=1000
    )
    return [r.external_id for r in records]


async def error_rows(store: Store, request_id: int) -> list[tuple[int, str, str]]:
    return [(e.row, e.code, e.pointer) for e in await store.list_row_errors(request_id, -1, 1000)]


def test_validate_batch_splits_candidates_and_problems_by_offset() -> None:
    streams = {"bank": StreamRef(7, "USD")}
    items: list[StagedItem] = [
        [None, rec(1), None],
        [3, rec(2), ["too_many_columns", "row has 4 cells, header has 3", ""]],
        [None, rec(3, amount="x"), None],
        [None, rec(4, external_id="e4"), None],
    ]
    batch = validate_batch(10, items, streams)
    assert batch.start_row == 10
    assert [offset for offset, _ in batch.candidates] == [0, 3]
    assert batch.candidates[1][1] == ValidRecord(7, "2024-01-31", 425, "USD", None, "e4", None)
    # A problem the parser already found is reported as is, before validation runs.
    assert batch.problems == [
        (1, RowProblem("too_many_columns", "row has 4 cells, header has 3", "")),
        (
            2,
            RowProblem(
                "invalid_amount", "amount must be a decimal number such as 12.34", "/amount"
            ),
        ),
    ]


def test_stream_keys_of_takes_only_text_keys() -> None:
    items: list[StagedItem] = [
        [None, rec(1), None],
        [None, {"data_stream_key": 5}, None],
        [None, [1, 2], None],
        [None, rec(2, data_stream_key="other"), None],
    ]
    assert stream_keys_of(items) == {"bank", "other"}


async def test_on_conflict_error_reports_stored_and_in_batch_duplicates(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    first, items = await staged_request(store, env, [rec(1, "a")])
    await store.commit_batch(first, WORKER, validate_batch(0, items, {"bank": StreamRef(1, "USD")}))

    records = [rec(2, "a"), rec(3, "b"), rec(4, "b"), rec(5), rec(6), rec(7, amount="bad")]
    job, items = await staged_request(store, env, records, on_conflict="error")
    done = await store.commit_batch(
        job, WORKER, validate_batch(0, items, await streams_of(store, env, items))
    )

    assert (done.successful_items, done.failed_items, done.skipped_items) == (3, 3, 0)
    assert done.status == "completed"
    assert await external_ids(store, env, job.id) == ["b", None, None]
    assert await error_rows(store, job.id) == [
        (0, "duplicate_external_id", "/records/0/external_id"),  # stored by the first request
        (2, "duplicate_external_id", "/records/2/external_id"),  # earlier in this batch
        (5, "invalid_amount", "/records/5/amount"),
    ]


async def test_on_conflict_skip_counts_duplicates_as_skipped_without_errors(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    first, items = await staged_request(store, env, [rec(1, "a")])
    await store.commit_batch(first, WORKER, validate_batch(0, items, {"bank": StreamRef(1, "USD")}))

    records = [rec(2, "a"), rec(3, "b"), rec(4, "b"), rec(5), rec(7, amount="bad")]
    job, items = await staged_request(store, env, records, on_conflict="skip")
    done = await store.commit_batch(
        job, WORKER, validate_batch(0, items, await streams_of(store, env, items))
    )

    assert (done.successful_items, done.failed_items, done.skipped_items) == (2, 1, 2)
    assert done.processed_items == 5
    assert await external_ids(store, env, job.id) == ["b", None]
    assert await error_rows(store, job.id) == [(4, "invalid_amount", "/records/4/amount")]


async def test_on_conflict_skip_keeps_the_first_of_a_batchs_duplicates_and_nothing_else(
    store: Store,
) -> None:
    # PostgreSQL inserts a skip batch in one INSERT … SELECT … ON CONFLICT DO NOTHING (from
    # the COPY'd temp table): the row order (row_index) decides which duplicate stays, as
    # SQLite's one-by-one inserts do, and every column reaches the row it belongs to.
    env = await make_environment(store)
    await make_stream(store, env)
    records = [
        rec(1, "x", description="first x"),
        rec(2, "x", description="second x"),
        rec(3, "y", metadata={"n": 3}),
        rec(4, "x"),
        rec(5, description=None),
    ]
    job, items = await staged_request(store, env, records, on_conflict="skip")
    done = await store.commit_batch(
        job, WORKER, validate_batch(0, items, await streams_of(store, env, items))
    )

    assert (done.successful_items, done.failed_items, done.skipped_items) == (3, 0, 2)
    stored = await store.list_records(
        env, data_stream_key=None, bulk_request_id=job.id, after_id=0, limit=1000
    )
    assert [(r.external_id, r.amount_minor, r.description, r.metadata) for r in stored] == [
        ("x", 125, "first x", None),
        ("y", 325, None, '{"n":3}'),
        (None, 525, None, None),
    ]
    assert {(r.date, r.currency, r.data_stream_key, r.bulk_request_id) for r in stored} == {
        ("2024-01-31", "USD", "bank", job.id)
    }


async def test_counters_and_checkpoint_advance_exactly_per_batch(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    records = [rec(1), rec(2, amount="x"), rec(3, "z"), rec(4), rec(5, "z")]
    job, items = await staged_request(store, env, records)
    streams = await streams_of(store, env, items)

    after_first = await store.commit_batch(job, WORKER, validate_batch(0, items[:2], streams))
    assert after_first.next_row == 2
    assert (after_first.processed_items, after_first.successful_items) == (2, 1)
    assert after_first.failed_items == 1
    assert after_first.status == "processing"
    assert after_first.claimed_by == WORKER
    # Not completed yet: the staged rows stay for the rest of the request.
    assert await store.get_chunk_at(job.id, 0) is not None

    done = await store.commit_batch(job, WORKER, validate_batch(2, items[2:], streams))
    assert done.next_row == 5
    counters = (done.processed_items, done.successful_items, done.failed_items)
    assert counters == (5, 3, 2)
    assert done.status == "completed"
    assert done.claimed_by is None
    assert await store.get_chunk_at(job.id, 0) is None  # the staging is dropped
    assert await error_rows(store, job.id) == [
        (1, "invalid_amount", "/records/1/amount"),
        (4, "duplicate_external_id", "/records/4/external_id"),
    ]
    stored = await request_row(store, env, job.id)
    assert (stored.processed_items, stored.next_row, stored.status) == (5, 5, "completed")


async def test_a_stale_claim_raises_fenced_out_and_leaves_nothing(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    job, items = await staged_request(store, env, [rec(1, "a"), rec(2, amount="x")])
    # The claim is taken away (as the sweeper does for a worker it presumes dead) and
    # another worker claims the request again: `job` is now a stale claim.
    await store.requeue_orphans([], "test: presumed dead")
    again = await claim_next(store, "unit-worker-2")
    assert again is not None
    assert again.attempt == job.attempt + 1
    before = await request_row(store, env, job.id)

    batch = validate_batch(0, items, await streams_of(store, env, items))
    with pytest.raises(FencedOut):
        await store.commit_batch(job, WORKER, batch)

    assert await external_ids(store, env, job.id) == []
    assert await error_rows(store, job.id) == []
    assert await request_row(store, env, job.id) == before


async def test_a_batch_applied_twice_is_fenced_out_the_second_time(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    job, items = await staged_request(store, env, [rec(1), rec(2), rec(3)])
    streams = await streams_of(store, env, items)
    await store.commit_batch(job, WORKER, validate_batch(0, items[:2], streams))
    before = await request_row(store, env, job.id)

    # Same claim, but these rows are behind the checkpoint: never applied twice. The
    # unique (request, row) index refuses the records before the fenced heartbeat runs,
    # and either way the whole transaction rolls back.
    with pytest.raises((FencedOut, sqlite3.IntegrityError)):
        await store.commit_batch(job, WORKER, validate_batch(0, items[:2], streams))

    assert len(await external_ids(store, env, job.id)) == 2
    assert await request_row(store, env, job.id) == before
