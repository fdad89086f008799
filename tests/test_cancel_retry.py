"""Cancel and retry (SPEC §7) through the API, with real workers racing them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from server.config import Settings
from tests.conftest import Api, record, wait_until

ApiFactory = Callable[[Settings], Awaitable[Api]]


def slow(settings: Settings, **changes: Any) -> Settings:
    """One worker, tiny batches, no time slicing: long-running requests on purpose."""
    base = {"workers": 1, "batch_size": 2, "time_slice": 1000.0}
    return dataclasses.replace(settings, **{**base, **changes})


async def _processing(api: Api, request_id: int) -> dict[str, Any]:
    return await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{request_id}"),
        lambda r: r["status"] == "processing" and r["processed_items"] > 0,
    )


async def _assert_consistent(api: Api, request: dict[str, Any]) -> None:
    rid = request["id"]
    assert request["processed_items"] == (
        request["successful_items"] + request["failed_items"] + request["skipped_items"]
    )
    assert request["processed_items"] <= request["total_items"]
    stored = await api.all_pages(f"/v1/records?bulk_request_id={rid}")
    assert len(stored) == request["successful_items"]
    errors = await api.all_pages(f"/v1/bulk_requests/{rid}/errors")
    assert len(errors) == request["failed_items"]


async def test_cancel_pending_is_immediate_and_never_picked_up(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(slow(settings))
    await api.create_stream()
    big = await api.submit([record(i) for i in range(1000)])
    await _processing(api, big["id"])
    waiting = await api.submit([record(1)])
    status, body = await api.call("POST", f"/v1/bulk_requests/{waiting['id']}/cancel")
    assert status == 200
    assert body["status"] == "cancelled"
    assert body["cancellation_requested_at"] is not None
    assert body["completed_at"] is not None
    # Idempotent: cancelling again answers 200 and changes nothing.
    status, again = await api.call("POST", f"/v1/bulk_requests/{waiting['id']}/cancel")
    assert (status, again) == (200, body)
    await api.post(f"/v1/bulk_requests/{big['id']}/cancel", expect=202)
    await api.wait_terminal(big["id"])
    await asyncio.sleep(0.1)
    final = await api.get(f"/v1/bulk_requests/{waiting['id']}")
    assert final["status"] == "cancelled"
    assert final["started_at"] is None
    assert final["processed_items"] == 0


async def test_cancel_during_processing_stops_at_the_next_heartbeat(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(slow(settings))
    await api.create_stream()
    rows = [record(i, date="2024-13-01" if i % 7 == 0 else "2024-01-01") for i in range(1000)]
    big = await api.submit(rows)
    await _processing(api, big["id"])
    started = time.monotonic()
    status, body = await api.call("POST", f"/v1/bulk_requests/{big['id']}/cancel")
    assert status == 202
    assert body["status"] == "processing"
    assert body["cancellation_requested_at"] is not None
    done = await api.wait_terminal(big["id"])
    latency = time.monotonic() - started
    assert done["status"] == "cancelled"
    assert done["processed_items"] < done["total_items"]
    assert done["processed_items"] % 2 == 0  # whole batches only: none half-applied
    assert latency < 1.0, latency
    await _assert_consistent(api, done)
    # Terminal states never change again.
    await asyncio.sleep(0.2)
    assert await api.get(f"/v1/bulk_requests/{big['id']}") == {**done, "stuck": False}


async def test_cancel_of_completed_is_409(api: Api) -> None:
    await api.create_stream()
    summary = await api.submit([record(1)])
    await api.wait_terminal(summary["id"])
    status, problem = await api.call("POST", f"/v1/bulk_requests/{summary['id']}/cancel")
    assert status == 409
    assert problem["type"] == "/problems/conflict"
    assert (await api.get(f"/v1/bulk_requests/{summary['id']}"))["status"] == "completed"


async def test_cancel_racing_completion_is_consistent(api: Api, settings: Settings) -> None:
    await api.create_stream()
    outcomes = []
    for n in range(15):
        summary = await api.submit([record(i) for i in range(n * 10 + 1)])
        if n % 3:
            await asyncio.sleep(0.001 * n)
        status, _ = await api.call("POST", f"/v1/bulk_requests/{summary['id']}/cancel")
        done = await api.wait_terminal(summary["id"])
        outcomes.append((status, done["status"]))
        if done["status"] == "completed":
            assert done["processed_items"] == done["total_items"]
        else:  # stopped between batches: whole batches only, and not the last one
            assert done["processed_items"] < done["total_items"], done
            assert done["processed_items"] % settings.batch_size == 0, done
        await _assert_consistent(api, done)
    # What each answer promises: 200 = stopped now; 202 = the worker stops at its next
    # heartbeat, unless its last batch committed first; 409 = it had completed already.
    allowed = {(200, "cancelled"), (202, "cancelled"), (202, "completed"), (409, "completed")}
    assert set(outcomes) <= allowed, outcomes
    # Both sides of the race were run: some cancels won, some completions did.
    assert {final for _, final in outcomes} == {"cancelled", "completed"}, outcomes


async def test_retry_holds_exactly_the_failed_and_unprocessed_rows(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(slow(settings))
    await api.create_stream()
    rows = [
        record(i, external_id=f"e{i}", date="2024-02-30" if i % 10 == 3 else "2024-02-01")
        for i in range(1000)
    ]
    parent = await api.submit(rows)
    await _processing(api, parent["id"])
    await api.post(f"/v1/bulk_requests/{parent['id']}/cancel", expect=202)
    parent_done = await api.wait_terminal(parent["id"])
    assert parent_done["status"] == "cancelled"
    remaining = parent_done["failed_items"] + (
        parent_done["total_items"] - parent_done["processed_items"]
    )

    status, child = await api.call("POST", f"/v1/bulk_requests/{parent['id']}/retry")
    assert status == 201
    assert child["source"] == "retry"
    assert child["parent_bulk_request_id"] == parent["id"]
    assert child["on_conflict"] == "skip"
    assert child["total_items"] == remaining
    # A second child while this one is alive is refused.
    status, problem = await api.call("POST", f"/v1/bulk_requests/{parent['id']}/retry")
    assert status == 409, problem

    child_done = await api.wait_terminal(child["id"])
    assert child_done["status"] == "completed"
    # The failed rows fail again (still a bad date), everything else now succeeded.
    assert child_done["failed_items"] == parent_done["failed_items"] + sum(
        1 for i in range(parent_done["processed_items"], 1000) if i % 10 == 3
    )
    stored = await api.all_pages("/v1/records")
    assert sorted(r["external_id"] for r in stored) == sorted(
        f"e{i}" for i in range(1000) if i % 10 != 3
    )
    # Completed child: the parent cannot be retried again; a completed one never.
    assert (await api.call("POST", f"/v1/bulk_requests/{parent['id']}/retry"))[0] == 409
    assert (await api.call("POST", f"/v1/bulk_requests/{child['id']}/retry"))[0] == 409


async def test_retry_twice_and_retry_of_a_retry(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(slow(settings, batch_size=1))
    await api.create_stream()
    parent = await api.submit([record(i, external_id=f"x{i}") for i in range(1000)])
    await _processing(api, parent["id"])
    await api.post(f"/v1/bulk_requests/{parent['id']}/cancel", expect=202)
    await api.wait_terminal(parent["id"])

    child = await api.post(f"/v1/bulk_requests/{parent['id']}/retry", expect=201)
    await _processing(api, child["id"])
    await api.post(f"/v1/bulk_requests/{child['id']}/cancel", expect=202)
    await api.wait_terminal(child["id"])
    # The chain's latest member ended cancelled, so the parent may be retried again; the
    # new request continues the chain from its latest member (SPEC §7 "Chains")...
    second = await api.post(f"/v1/bulk_requests/{parent['id']}/retry", expect=201)
    assert second["parent_bulk_request_id"] == child["id"]
    status, _ = await api.call("POST", f"/v1/bulk_requests/{second['id']}/cancel")
    assert status in (200, 202)
    second_done = await api.wait_terminal(second["id"])
    assert second_done["status"] == "cancelled"
    # ...and so does a retry of a member in the middle of the chain.
    grandchild = await api.post(f"/v1/bulk_requests/{child['id']}/retry", expect=201)
    assert grandchild["parent_bulk_request_id"] == second["id"]
    assert (await api.wait_terminal(grandchild["id"]))["status"] == "completed"
    stored = await api.all_pages("/v1/records")
    ids = [r["external_id"] for r in stored]
    assert len(ids) == len(set(ids)) == 1000
    # Once a member completed, no member of the chain can be retried.
    for member in (parent, child, second):
        status, problem = await api.call("POST", f"/v1/bulk_requests/{member['id']}/retry")
        assert status == 409, problem
        assert f"bulk request {grandchild['id']} of this chain" in problem["detail"]


async def test_retry_is_idempotent_with_a_key(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(slow(settings))
    await api.create_stream()
    parent = await api.submit([record(i) for i in range(1000)])
    await _processing(api, parent["id"])
    await api.post(f"/v1/bulk_requests/{parent['id']}/cancel", expect=202)
    await api.wait_terminal(parent["id"])
    key = {"Idempotency-Key": "retry-1"}
    results = await asyncio.gather(
        *[
            api.call("POST", f"/v1/bulk_requests/{parent['id']}/retry", headers=key)
            for _ in range(5)
        ]
    )
    assert sorted(s for s, _ in results) == [200, 200, 200, 200, 201]
    assert len({b["id"] for _, b in results}) == 1


async def test_retry_of_pending_processing_or_unknown(api: Api) -> None:
    assert (await api.call("POST", "/v1/bulk_requests/999/retry"))[0] == 404
    await api.create_stream()
    summary = await api.submit([record(1)])
    await api.wait_terminal(summary["id"])
    status, problem = await api.call("POST", f"/v1/bulk_requests/{summary['id']}/retry")
    assert status == 409
    assert "only failed or cancelled" in problem["detail"]


async def test_batch_pause_lets_a_cancel_land_at_a_chosen_row(
    make_api: ApiFactory, settings: Settings
) -> None:
    """--batch-pause holds the worker between heartbeats, so a cancel sent meanwhile
    stops the request exactly at the row it had reached."""
    api = await make_api(slow(settings, batch_size=10, batch_pause=0.5))
    await api.create_stream()
    summary = await api.submit([record(i) for i in range(100)])
    paused = await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{summary['id']}"), lambda r: r["processed_items"] > 0
    )
    assert paused["processed_items"] == 10  # one batch, then the pause
    await api.post(f"/v1/bulk_requests/{summary['id']}/cancel", expect=202)
    done = await api.wait_terminal(summary["id"])
    assert (done["status"], done["processed_items"]) == ("cancelled", 10)
