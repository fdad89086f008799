"""Atomic requests on the fast store (SPEC §14), each step driven by the test: the purge
is bounded per transaction, and a retry is not claimed while its parent's hidden
records (holding the very external ids it is about to store) are still there."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.batches import validate_batch
from server.bulk_requests import submit_records
from server.constants import ATOMIC_PURGE_BATCH
from server.db.port import NewUpload
from server.db.port import Storage as Store
from server.db.postgres.storage import PostgresStorage
from server.types import Mode, Status
from tests.conftest import claim_next, make_environment, make_stream
from tests.db_access import store_upload, stored_value

WORKER = "unit-atomic-1"


def rows(count: int, bad_at: int) -> list[dict[str, Any]]:
    return [
        {
            "date": "2024-02-30" if n == bad_at else "2024-01-31",
            "data_stream_key": "bank",
            "amount": f"{n}.00",
            "external_id": f"e{n}",
        }
        for n in range(count)
    ]


async def run_to_end(store: Store, env: int) -> dict[str, Any]:
    """Claim the next request and commit its rows a staged chunk per batch, as a worker
    would, until it ends."""
    job = await claim_next(store, WORKER)
    assert job is not None
    streams = await store.find_data_streams(env, {"bank"})
    while job.status == Status.PROCESSING:
        chunk = await store.get_chunk_at(job.id, job.next_row)
        assert chunk is not None
        batch = validate_batch(chunk.first_row, chunk.items(), streams)
        job = await store.commit_batch(job, WORKER, batch)
    return job


async def physical(store: Store, request_id: int) -> tuple[int, int]:
    """(records of the request in the database, hidden or not; its unpublished flag)."""
    count = await stored_value(
        store, "SELECT count(*) FROM records WHERE bulk_request_id = ?", request_id
    )
    flag = await stored_value(
        store, "SELECT unpublished FROM bulk_requests WHERE id = ?", request_id
    )
    return int(count), int(flag)


async def test_purge_is_bounded_and_a_retry_waits_for_it(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    total = ATOMIC_PURGE_BATCH + 100
    await submit_records(
        store, env, rows(total, bad_at=7), "error", None, body_bytes=10, mode=Mode.ATOMIC
    )
    failed = await run_to_end(store, env)
    assert (failed.status, failed.failed_items) == (Status.FAILED, 1)
    assert "atomic request: 1 of" in failed.error_message
    request_id = failed.id
    listed = await store.list_records(
        env, data_stream_key=None, bulk_request_id=None, after_id=0, limit=10
    )
    assert listed == []
    assert await physical(store, request_id) == (total - 1, 1)

    found = await store.create_retry(env, request_id, None)
    assert found is not None
    child = found[0]
    assert (child.mode, child.total_items) == (Mode.ATOMIC, total)
    # Its rows' external ids are held by the parent's hidden records: not claimable yet.
    assert await store.has_runnable_request() is False
    assert await claim_next(store, WORKER) is None

    # One bounded transaction at a time: the first leaves 99 records, still hidden.
    assert await store.purge_hidden_records() == request_id
    assert await physical(store, request_id) == (99, 1)
    assert await claim_next(store, WORKER) is None
    assert await store.purge_hidden_records() == request_id
    assert await physical(store, request_id) == (0, 0)
    assert await store.purge_hidden_records() is None

    assert await store.has_runnable_request() is True
    again = await run_to_end(store, env)
    assert again.id == child.id
    # Row 7 is still bad (the retry holds the same rows): it fails the same way, and
    # none of its rows collided with the parent's purged records.
    assert (again.status, again.failed_items, again.successful_items) == (
        Status.FAILED,
        1,
        total - 1,
    )


async def test_the_completing_batch_publishes_in_its_own_transaction(store: Store) -> None:
    """No window between the last batch and the flip: the batch that completes the
    request is the transaction that publishes it, so a crash falls before or after both."""
    env = await make_environment(store)
    await make_stream(store, env)
    await submit_records(store, env, rows(30, bad_at=-1), "error", None, 10, mode=Mode.ATOMIC)
    done = await run_to_end(store, env)
    assert (done.status, done.unpublished) == (Status.COMPLETED, False)
    listed = await store.list_records(
        env, data_stream_key="bank", bulk_request_id=done.id, after_id=0, limit=100
    )
    assert len(listed) == 30


async def test_an_atomic_upload_parsed_to_no_rows_completes_with_nothing_hidden(
    store: Store,
) -> None:
    """finish_parsing completes a file of no rows (e.g. NACHA with allow_zero_batches):
    an atomic one must not stay unpublished, or every batch would check it forever."""
    env = await make_environment(store)
    # By keyword: the seventh positional field is csv_options, not mode.
    name = await store_upload(store, b"", "nacha")
    upload = NewUpload("nacha", name, None, "bank", "skip", "[]", mode=Mode.ATOMIC)
    await store.create_upload_request(env, upload, None)
    job = await claim_next(store, WORKER)
    assert job is not None
    assert (job.mode, job.unpublished) == (Mode.ATOMIC, True)
    done = await store.finish_parsing(
        job, WORKER, total_items=0, data_stream_id=None, error_details=None
    )
    assert (done.status, done.unpublished) == (Status.COMPLETED, False)


async def test_a_skip_row_waiting_on_another_process_atomic_row_is_reserved_not_skipped(
    store: Store, backend: str
) -> None:
    """PostgreSQL, several processes: an atomic request's batch holds external_id "x"
    uncommitted when an on_conflict=skip batch of another request looks for reserved
    ids (it finds none), so its insert waits on the unique index and skips the row once
    the atomic batch commits. Skipping would lose the row if the atomic request then
    fails: it must be external_id_reserved, as SQLite's one writer decides."""
    if backend != "postgres":
        pytest.skip("one SQLite writer serializes the two batches")
    assert isinstance(store, PostgresStorage)
    env = await make_environment(store)
    stream = await make_stream(store, env)
    row = {"date": "2024-01-31", "data_stream_key": "bank", "amount": "1.00", "external_id": "x"}
    skipping = (await submit_records(store, env, [row], "skip", None, 10))[0]
    atomic = (await submit_records(store, env, [row], "error", None, 10, mode=Mode.ATOMIC))[0]
    job = await claim_next(store, WORKER)
    assert job is not None
    assert job.id == skipping.id
    chunk = await store.get_chunk_at(job.id, 0)
    assert chunk is not None
    batch = validate_batch(0, chunk.items(), await store.find_data_streams(env, {"bank"}))
    async with store.pool.acquire() as other_process, other_process.transaction():
        # The atomic request's batch, in another process's open transaction.
        await other_process.execute(
            "INSERT INTO records (data_stream_id, date, amount_minor, currency, external_id,"
            " bulk_request_id, row_index, created_at)"
            " VALUES ($1, '2024-01-31', 100, 'USD', 'x', $2, 0, '2024-01-31T00:00:00Z')",
            stream.id,
            atomic.id,
        )
        committing = asyncio.create_task(store.commit_batch(job, WORKER, batch))
        await asyncio.sleep(0.5)
        assert not committing.done()  # waiting on the atomic row's uncommitted insert
    done = await committing
    assert (done.successful_items, done.skipped_items, done.failed_items) == (0, 0, 1)
    errors = await store.list_row_errors(done.id, -1, 10)
    assert [e.code for e in errors] == ["external_id_reserved"]
