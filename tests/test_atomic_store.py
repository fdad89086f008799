"""Atomic requests on the fast store (SPEC §14), each step driven by the test: the purge
is bounded per transaction, and a retry is not claimed while its parent's hidden
records (holding the very external ids it is about to store) are still there."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from server.batches import validate_batch
from server.bulk_requests import submit_records
from server.constants import ATOMIC_PURGE_BATCH
from server.db.port import NewUpload
from server.db.sqlite.store import Store
from server.types import Mode, Status
from tests.conftest import claim_next, make_environment, make_stream

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


def physical(store: Store, request_id: int) -> tuple[int, int]:
    """(records of the request in the file, hidden or not; its unpublished flag)."""
    uri = f"{store.path.as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        count = conn.execute(
            "SELECT count(*) FROM records WHERE bulk_request_id = ?", (request_id,)
        ).fetchone()[0]
        flag = conn.execute(
            "SELECT unpublished FROM bulk_requests WHERE id = ?", (request_id,)
        ).fetchone()[0]
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
    assert physical(store, request_id) == (total - 1, 1)

    found = await store.create_retry(env, request_id, None)
    assert found is not None
    child = found[0]
    assert (child.mode, child.total_items) == (Mode.ATOMIC, total)
    # Its rows' external ids are held by the parent's hidden records: not claimable yet.
    assert await store.has_runnable_request() is False
    assert await claim_next(store, WORKER) is None

    # One bounded transaction at a time: the first leaves 99 records, still hidden.
    assert await store.purge_hidden_records() == request_id
    assert physical(store, request_id) == (99, 1)
    assert await claim_next(store, WORKER) is None
    assert await store.purge_hidden_records() == request_id
    assert physical(store, request_id) == (0, 0)
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
    upload = NewUpload("nacha", "/nonexistent.ach", None, "bank", "skip", "[]", Mode.ATOMIC)
    await store.create_upload_request(env, upload, None)
    job = await claim_next(store, WORKER)
    assert job is not None
    done = await store.finish_parsing(
        job, WORKER, total_items=0, data_stream_id=None, error_details=None
    )
    assert (done.status, done.unpublished) == (Status.COMPLETED, False)
