"""Signed webhooks (SPEC §13, README "Webhooks") against a real local receiver.

The app is the real one on a real SQLite file; the receiver is a real aiohttp server on
a free port that checks every request with the Standard Webhooks published verifier
(tests/webhook_receiver.py). Retry bases are tiny so that backoff runs in test time.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from server.api.common import STORE
from server.config import Settings
from server.constants import WEBHOOK_CIRCUIT_FAILURES, WEBHOOK_MAX_ATTEMPTS
from tests.conftest import Api, record, wait_until
from tests.webhook_receiver import Receiver

ApiFactory = Callable[[Settings], Awaitable[Api]]
ALL_TYPES = ["bulk_request.completed", "bulk_request.failed", "bulk_request.cancelled"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, webhook_retry_base=0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    try:
        yield started
    finally:
        await started.close()


async def add_endpoint(api: Api, receiver: Receiver, **fields: Any) -> Any:
    created = await api.post("/v1/webhook_endpoints", {"url": receiver.url, **fields}, expect=201)
    receiver.secret = created["secret"]
    return created


async def deliveries(api: Api, endpoint_id: int, query: str = "") -> list[Any]:
    page = await api.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries{query}")
    return list(page["data"])


async def settled(api: Api, endpoint_id: int, count: int = 1, within: float = 20.0) -> list[Any]:
    """The endpoint's deliveries once `count` exist and none is pending any more."""
    return await wait_until(
        lambda: deliveries(api, endpoint_id),
        lambda found: len(found) >= count and all(d["status"] != "pending" for d in found),
        within,
    )


async def test_a_completed_request_is_delivered_once_signed_with_its_full_payload(
    api: Api, receiver: Receiver
) -> None:
    await api.create_stream()
    endpoint = await add_endpoint(api, receiver, description="ledger sync")
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert endpoint["events"] == ALL_TYPES
    assert endpoint["enabled"] is True
    summary = await api.submit([record(1), record(2, amount="x")])
    await api.wait_terminal(summary["id"])
    (delivery,) = await settled(api, endpoint["id"])

    assert receiver.unverified == []
    assert receiver.hits == 1
    (got,) = receiver.received
    assert got.body["type"] == "bulk_request.completed"
    assert got.webhook_id == got.body["id"] == delivery["event_id"]
    assert got.body["id"].startswith("evt_")
    assert got.body["data"] == await api.get(f"/v1/bulk_requests/{summary['id']}")
    assert int(got.headers["webhook-timestamp"]) == pytest.approx(time.time(), abs=30)
    assert got.headers["webhook-signature"].startswith("v1,")
    assert delivery["status"] == "succeeded"
    assert delivery["next_attempt_at"] is None
    assert delivery["bulk_request_id"] == summary["id"]
    assert delivery["type"] == "bulk_request.completed"
    (attempt,) = delivery["attempts"]
    assert attempt["http_status"] == 204
    assert attempt["error"] is None
    assert attempt["duration_ms"] >= 0
    # The secret is in the create answer only.
    shown = await api.get(f"/v1/webhook_endpoints/{endpoint['id']}")
    listed = await api.get("/v1/webhook_endpoints")
    assert "secret" not in shown
    assert all("secret" not in e for e in listed["data"])
    assert shown == {k: v for k, v in endpoint.items() if k != "secret"}


async def test_a_failed_request_is_delivered(api: Api, receiver: Receiver) -> None:
    endpoint = await add_endpoint(api, receiver)
    form = aiohttp.FormData()
    form.add_field("format", "csv")
    form.add_field("file", b"date,amount\r\n", filename="empty.csv")
    _, upload = await api.call("POST", "/v1/uploads", data=form, expect=202)
    failed = await api.wait_terminal(upload["id"])
    assert failed["status"] == "failed"
    await settled(api, endpoint["id"])
    assert receiver.types() == ["bulk_request.failed"]
    assert receiver.received[0].body["data"] == await api.get(f"/v1/bulk_requests/{upload['id']}")


async def test_a_cancelled_request_is_delivered(
    make_api: ApiFactory, settings: Settings, receiver: Receiver
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))  # it stays pending
    await api.create_stream()
    endpoint = await add_endpoint(api, receiver)
    summary = await api.submit([record(1)])
    await api.post(f"/v1/bulk_requests/{summary['id']}/cancel", expect=200)
    await settled(api, endpoint["id"])
    assert receiver.types() == ["bulk_request.cancelled"]
    assert receiver.received[0].body["data"]["status"] == "cancelled"
    # Only terminal states are sent: `created` was not.
    assert receiver.hits == 1


async def test_endpoints_get_only_their_events_and_disabled_ones_nothing(
    api: Api, receiver: Receiver
) -> None:
    await api.create_stream()
    other = await Receiver().start()
    try:
        only_failed = await add_endpoint(api, other, events=["bulk_request.failed"])
        everything = await add_endpoint(api, receiver)
        summary = await api.submit([record(1)])
        await api.wait_terminal(summary["id"])
        await settled(api, everything["id"])
        assert receiver.types() == ["bulk_request.completed"]
        assert await deliveries(api, only_failed["id"]) == []
        assert other.hits == 0

        disabled = await api.call(
            "PATCH",
            f"/v1/webhook_endpoints/{everything['id']}",
            json={"enabled": False},
            expect=200,
        )
        assert disabled[1]["enabled"] is False
        second = await api.submit([record(2)])
        await api.wait_terminal(second["id"])
        # The only other endpoint that could be sent anything is sent nothing either,
        # so waiting for a dispatch round shows the disabled one was skipped.
        await wait_until(lambda: dispatched_everything(api), bool)
        assert len(await deliveries(api, everything["id"])) == 1
        assert receiver.hits == 1

        await api.call(
            "PATCH",
            f"/v1/webhook_endpoints/{everything['id']}",
            json={"enabled": True, "events": ["bulk_request.completed"]},
            expect=200,
        )
        third = await api.submit([record(3)])
        await api.wait_terminal(third["id"])
        await settled(api, everything["id"], count=2)
        assert [r.body["data"]["id"] for r in receiver.received] == [summary["id"], third["id"]]
    finally:
        await other.close()


async def dispatched_everything(api: Api) -> bool:
    """The dispatcher's cursor has passed every outbox event committed so far."""
    store = api.app[STORE]
    newest = await store.read_value("SELECT MAX(id) FROM outbox")
    return bool(await store.read_value("SELECT outbox_id FROM webhook_cursor") >= newest)


async def test_failed_attempts_are_retried_with_doubling_backoff(
    make_api: ApiFactory, settings: Settings, receiver: Receiver
) -> None:
    base = 0.2
    api = await make_api(dataclasses.replace(settings, webhook_retry_base=base))
    await api.create_stream()
    receiver.fail_first = 3
    endpoint = await add_endpoint(api, receiver)
    summary = await api.submit([record(1)])
    await api.wait_terminal(summary["id"])
    (delivery,) = await settled(api, endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert [a["http_status"] for a in delivery["attempts"]] == [500, 500, 500, 204]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500"] * 3 + [None]
    gaps = [b - a for a, b in zip(receiver.hit_times, receiver.hit_times[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        step = base * 2 ** (n - 1)
        # Never sooner than its doubling step; jitter adds up to a quarter (and the loop
        # and a loaded machine a little more).
        assert step <= gap <= step * 1.25 + 0.5, (n, gaps)
    # The same event every time: receivers de-duplicate on webhook-id.
    assert len(receiver.received) == 1
    assert receiver.received[0].webhook_id == delivery["event_id"]


async def test_a_delivery_is_failed_after_8_attempts_then_redelivered_by_hand(
    make_api: ApiFactory, settings: Settings, receiver: Receiver
) -> None:
    api = await make_api(
        dataclasses.replace(settings, webhook_retry_base=0.01, webhook_circuit_cooldown=0.01)
    )
    await api.create_stream()
    receiver.always_fail = True
    endpoint = await add_endpoint(api, receiver)
    summary = await api.submit([record(1)])
    await api.wait_terminal(summary["id"])
    (delivery,) = await settled(api, endpoint["id"])
    assert delivery["status"] == "failed"
    assert delivery["next_attempt_at"] is None
    assert len(delivery["attempts"]) == WEBHOOK_MAX_ATTEMPTS == receiver.hits
    assert await deliveries(api, endpoint["id"], "?status=failed") == [delivery]
    assert await deliveries(api, endpoint["id"], "?status=succeeded") == []

    receiver.always_fail = False
    retry = f"/v1/webhook_endpoints/{endpoint['id']}/deliveries/{delivery['id']}/retry"
    again = await api.post(retry, expect=202)
    assert again["status"] == "pending"
    assert again["event_id"] == delivery["event_id"]
    (done,) = await settled(api, endpoint["id"])
    assert done["status"] == "succeeded"
    assert len(done["attempts"]) == WEBHOOK_MAX_ATTEMPTS + 1
    (got,) = receiver.received
    assert got.webhook_id == delivery["event_id"]

    # A succeeded one can be sent again too: the receiver sees the same id twice.
    await api.post(retry, expect=202)
    await wait_until(lambda: _count(receiver), lambda n: n == 2)
    assert receiver.duplicates() == [delivery["event_id"]]
    assert receiver.received[0].body == receiver.received[1].body

    for missing in ("999", "0", "abc", str(10**30)):
        status, problem = await api.call(
            "POST", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries/{missing}/retry"
        )
        assert status == 404, problem
    # A delivery is only found under its own endpoint.
    other = await add_endpoint(api, receiver)
    status, _ = await api.call(
        "POST", f"/v1/webhook_endpoints/{other['id']}/deliveries/{delivery['id']}/retry"
    )
    assert status == 404


async def _count(receiver: Receiver) -> int:
    return len(receiver.received)


async def test_the_circuit_stops_attempts_to_a_dead_endpoint_and_spares_the_others(
    api: Api, receiver: Receiver
) -> None:
    await api.create_stream()
    healthy = await Receiver().start()
    try:
        receiver.always_fail = True
        dead = await add_endpoint(api, receiver)
        alive = await add_endpoint(api, healthy)
        ids = []
        for n in range(3):
            summary = await api.submit([record(n)])
            await api.wait_terminal(summary["id"])
            ids.append(summary["id"])
        await settled(api, alive["id"], count=3)
        assert sorted(r.body["data"]["id"] for r in healthy.received) == ids
        await wait_until(lambda: _hits(receiver), lambda n: n >= WEBHOOK_CIRCUIT_FAILURES)
        shown = await api.get(f"/v1/webhook_endpoints/{dead['id']}")
        assert shown["circuit_open_until"] is not None
        # With a 0.05 s retry base every delivery would be due again many times over by
        # now; the open circuit (60 s) lets none of them through.
        await asyncio.sleep(1.5)
        assert receiver.hits == WEBHOOK_CIRCUIT_FAILURES
        pending = await deliveries(api, dead["id"])
        assert len(pending) == 3
        assert all(d["status"] == "pending" for d in pending)
    finally:
        await healthy.close()


async def _hits(receiver: Receiver) -> int:
    return receiver.hits
