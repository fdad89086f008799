"""A worker prepares batch N+1 while batch N commits (issue 14, fourth wave). A batch
prepared ahead is only ever committed after N's commit has said the request goes on: a
cancel or a lost claim (fence) meanwhile drops it, so no row is stored twice or lost."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from server.api.common import STORE
from server.batches import Batch
from server.config import Settings
from server.jobs.batch_source import ClaimBatches
from server.models import BulkRequest
from tests.conftest import Api, record
from tests.db_access import stored_rows

ApiFactory = Callable[[Settings], Awaitable[Api]]
Prepare = Callable[[ClaimBatches, int], Coroutine[Any, Any, Batch]]
ROWS = 100
BATCH = 10


def _when_preparing_ahead(
    monkeypatch: pytest.MonkeyPatch,
    store: Any,
    at_row: int,
    action: Callable[[], Awaitable[None]],
) -> list[tuple[str, int]]:
    """Run `action` (once) while the worker prepares the batch from `at_row`; returns
    what happened in order: ("prepare", row), ("commit", row) and ("committed", row)."""
    prepare: Prepare = ClaimBatches.at
    commit_batch = store.commit_batch
    seen: list[tuple[str, int]] = []

    async def at(self: ClaimBatches, start: int) -> Batch:
        batch = await prepare(self, start)
        seen.append(("prepare", start))
        if start == at_row and seen.count(("prepare", at_row)) == 1:
            await action()
        return batch

    async def commit(job: BulkRequest, worker: str, batch: Batch) -> BulkRequest:
        seen.append(("commit", batch.start_row))
        done = await commit_batch(job, worker, batch)
        seen.append(("committed", batch.start_row))
        return done

    monkeypatch.setattr(ClaimBatches, "at", at)
    monkeypatch.setattr(store, "commit_batch", commit)
    return seen


def _prepared_while_committing(seen: list[tuple[str, int]], row: int) -> bool:
    """Whether the batch from `row` was prepared while the batch before it committed."""
    previous = row - BATCH
    return (
        seen.index(("commit", previous))
        < seen.index(("prepare", row))
        < seen.index(("committed", previous))
    )


async def _stored_rows(api: Api, request_id: int) -> list[int]:
    rows = await stored_rows(
        api.app[STORE],
        f"SELECT row_index FROM records WHERE bulk_request_id = {request_id} ORDER BY row_index",
    )
    return [row["row_index"] for row in rows]


async def test_a_cancel_while_the_next_batch_is_prepared_drops_it(
    make_api: ApiFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await make_api(dataclasses.replace(settings, batch_size=BATCH, workers=1))
    await api.create_stream()
    request_id: list[int] = []

    async def cancel() -> None:
        await api.post(f"/v1/bulk_requests/{request_id[0]}/cancel", expect=202)

    seen = _when_preparing_ahead(monkeypatch, api.app[STORE], 3 * BATCH, cancel)
    summary = await api.submit([record(i) for i in range(ROWS)])
    request_id.append(summary["id"])
    done = await api.wait_terminal(summary["id"])

    assert _prepared_while_committing(seen, 3 * BATCH)  # row 30 on, while 20..29 committed
    assert ("commit", 3 * BATCH) not in seen[: seen.index(("commit", 0), 1)]  # not sent
    # Rows 20..29 were committing when the cancel came: they are kept; 30.. never sent.
    assert (done["status"], done["processed_items"]) == ("cancelled", 3 * BATCH)
    assert done["successful_items"] == 3 * BATCH
    assert await _stored_rows(api, summary["id"]) == list(range(3 * BATCH))
    child = await api.post(f"/v1/bulk_requests/{summary['id']}/retry", expect=201)
    assert (await api.wait_terminal(child["id"]))["successful_items"] == ROWS - 3 * BATCH


async def test_a_claim_lost_while_the_next_batch_is_prepared_commits_nothing_twice(
    make_api: ApiFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Heartbeat timeout 0: on PostgreSQL a claim is only taken from a worker the sweeper
    # does not know once its heartbeat is that old (SQLite takes it at once).
    api = await make_api(
        dataclasses.replace(settings, batch_size=BATCH, workers=1, heartbeat_timeout=0)
    )
    await api.create_stream()
    store = api.app[STORE]

    async def take_the_claim_away() -> None:
        # As the sweeper does for a worker it believes gone: the claim is requeued, so
        # the next commit under the old claim is fenced out. On PostgreSQL the claim is
        # stale only once its heartbeat is older than now; the commit in flight may
        # write a later one, so ask again (the worker waits in this hook meanwhile).
        deadline = time.monotonic() + 10
        while not await store.requeue_orphans(set(), "test: claim taken away"):
            assert time.monotonic() < deadline, "the claim was never requeued"
            await asyncio.sleep(0.01)

    seen = _when_preparing_ahead(monkeypatch, store, 5 * BATCH, take_the_claim_away)
    summary = await api.submit([record(i) for i in range(ROWS)])
    done = await api.wait_terminal(summary["id"])

    assert _prepared_while_committing(seen, 5 * BATCH)
    assert done["status"] == "completed"
    assert (done["processed_items"], done["successful_items"]) == (ROWS, ROWS)
    assert await _stored_rows(api, summary["id"]) == list(range(ROWS))
    # Claimed again after the fence: the batch prepared under the lost claim was dropped
    # and prepared afresh by the new claim.
    [claim] = await stored_rows(store, f"SELECT attempt FROM bulk_requests WHERE id = {done['id']}")
    assert claim["attempt"] == 2
