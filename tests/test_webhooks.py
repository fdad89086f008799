"""Signed webhooks (SPEC §13, README "Webhooks") against a real local receiver.

The app is the real one on either backend (a SQLite file, a PostgreSQL database); the
receiver is a real aiohttp server on a free port that checks every request with the
Standard Webhooks published verifier (tests/webhook_receiver.py). Retry bases are tiny so
that backoff runs in test time.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from server.api.common import STORE
from server.clock import now_rfc3339
from server.config import Settings
from server.constants import (
    WEBHOOK_CIRCUIT_FAILURES,
    WEBHOOK_MAX_ATTEMPTS,
    WEBHOOK_MAX_SENDS_PER_ENDPOINT,
    WEBHOOK_MIN_ROUND_INTERVAL_SECONDS,
)
from server.db.port import Storage
from server.db.postgres.storage import PostgresStorage
from server.db.postgres.tx import PgTx
from server.db.sqlite.store import Store
from server.db.sqlite.tx import WriteTx
from server.db.webhook_port import NewDelivery, WebhookStorage
from server.http.auth import generate_api_key
from server.models import AttemptOutcome, BulkRequest, WebhookEndpoint
from server.outcomes import Transition
from server.types import JSON, Source
from server.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import Api, make_environment, make_stream, record, wait_until
from tests.db_access import stored_execute, stored_rows, stored_value
from tests.test_metrics import scrape, value
from tests.webhook_receiver import Receiver

ApiFactory = Callable[[Settings], Awaitable[Api]]
ALL_TYPES = ["bulk_request.completed", "bulk_request.failed", "bulk_request.cancelled"]


async def finished_request(
    store: Storage, environment_id: int, *transitions: Transition
) -> BulkRequest:
    """A completed request whose transaction emitted `transitions` (default: completed),
    written as either adapter's own transaction."""
    emitted = transitions or (Transition.COMPLETED,)
    fields: dict[str, Any] = {
        "environment_id": environment_id,
        "status": "completed",
        "source": Source.BULK_API,
        "on_conflict": "skip",
    }
    if isinstance(store, PostgresStorage):

        async def pg_work(tx: PgTx) -> BulkRequest:
            row = await tx.insert_bulk_request(**fields)
            for transition in emitted:
                await tx.emit(row, transition)
            return row

        return await store.write(pg_work)
    assert isinstance(store, Store)

    def work(tx: WriteTx) -> BulkRequest:
        row = tx.insert_bulk_request(**fields)
        for transition in emitted:
            tx.emit(row, transition)
        return row

    return await store.write(work)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, webhook_retry_base=0.05)


async def finished_one_row_requests(api: Api, count: int) -> list[int]:
    """The ids of `count` one-row requests submitted one after another, each waited for."""
    ids = []
    for n in range(count):
        summary = await api.submit([record(n)])
        await api.wait_terminal(summary["id"])
        ids.append(summary["id"])
    return ids


async def add_endpoint(api: Api, receiver: Receiver, **fields: Any) -> Any:
    created = await api.post("/v1/webhook_endpoints", {"url": receiver.url, **fields}, expect=201)
    receiver.secret = created["secret"]
    return created


async def deliveries(api: Api, endpoint_id: int, query: str = "") -> list[Any]:
    page = await api.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries{query}")
    return list(page["data"])


async def settled(api: Api, endpoint_id: int, count: int = 1, within: float = 20.0) -> list[Any]:
    """The endpoint's deliveries once `count` exist and none is pending any more."""
    found: list[Any] = await wait_until(
        lambda: deliveries(api, endpoint_id),
        lambda found: len(found) >= count and all(d["status"] != "pending" for d in found),
        within,
    )
    return found


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
    newest = await stored_value(store, "SELECT MAX(id) FROM outbox")
    return bool(await stored_value(store, "SELECT outbox_id FROM webhook_cursor") >= newest)


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
        ids = await finished_one_row_requests(api, 3)
        await settled(api, alive["id"], count=3)
        assert sorted(r.body["data"]["id"] for r in healthy.received) == ids
        await wait_until(lambda: _hits(receiver), lambda n: n >= WEBHOOK_CIRCUIT_FAILURES)
        # The receiver has answered the last attempt; its outcome is recorded just after.
        await wait_until(
            lambda: api.get(f"/v1/webhook_endpoints/{dead['id']}"),
            lambda shown: shown["circuit_open_until"] is not None,
        )
        # A send already in flight when the circuit opened still lands (sends to one
        # endpoint overlap, up to WEBHOOK_MAX_SENDS_PER_ENDPOINT), then none: with a 0.05 s
        # retry base every delivery would be due again many times over in 1.5 s, and the
        # open circuit (60 s) lets none of them through.
        await asyncio.sleep(0.3)
        opened_at = receiver.hits
        assert opened_at <= WEBHOOK_CIRCUIT_FAILURES + WEBHOOK_MAX_SENDS_PER_ENDPOINT - 1
        await asyncio.sleep(1.5)
        assert receiver.hits == opened_at
        pending = await deliveries(api, dead["id"])
        assert len(pending) == 3
        assert all(d["status"] == "pending" for d in pending)
    finally:
        await healthy.close()


async def _hits(receiver: Receiver) -> int:
    return receiver.hits


# --- durability: the outbox cursor ------------------------------------------------------


async def _old_terminal_events(store: Storage, request: BulkRequest, count: int) -> None:
    for _ in range(count):
        await stored_execute(
            store,
            "INSERT INTO outbox (bulk_request_id, environment_id, event_type, payload,"
            " created_at) VALUES (?, ?, 'completed', '{}', '2000-01-01T00:00:00Z')",
            request.id,
            request.environment_id,
        )


async def _outbox_ids(store: Storage) -> list[int]:
    return [r["id"] for r in await stored_rows(store, "SELECT id FROM outbox ORDER BY id")]


async def test_pruning_never_deletes_an_event_the_dispatcher_has_not_passed(
    store: Storage,
) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    request = await finished_request(store, env, Transition.CREATED)
    await stored_execute(store, "UPDATE webhook_cursor SET outbox_id = ?", 0)
    await _old_terminal_events(store, request, 3)
    ids = (await _outbox_ids(store))[1:]
    # The cursor is still before them (a dispatcher that has not run since, or was
    # killed): past their retention, but not passed, so they stay.
    assert await store.prune_outbox() == 0
    assert (await _outbox_ids(store))[1:] == ids
    await stored_execute(store, "UPDATE webhook_cursor SET outbox_id = ?", ids[1])
    assert await store.prune_outbox() == 2
    assert (await _outbox_ids(store))[1:] == ids[2:]


async def _just_the_id(request: BulkRequest) -> JSON:
    return {"id": request.id}


async def test_events_become_deliveries_once_with_the_cursor_in_one_transaction(
    store: Storage, tmp_path: Any
) -> None:
    env = await make_environment(store)
    webhooks = store.webhooks
    endpoint = await webhooks.create_endpoint(
        env, url="http://127.0.0.1:9/hook", events=ALL_TYPES, description=None, secret="whsec_x"
    )
    dispatcher = WebhookDispatcher(
        store.webhooks, Settings(db_path=tmp_path / "unused.db"), _just_the_id
    )

    request = await finished_request(store, env, Transition.CREATED, Transition.COMPLETED)
    before = await webhooks.cursor()
    assert await dispatcher.dispatch_once() is False
    assert await webhooks.cursor() > before
    assert await dispatcher.dispatch_once() is False  # nothing new: nothing twice
    (delivery,) = await webhooks.list_deliveries(
        endpoint.id, status=None, before_id=2**62, limit=10
    )
    assert delivery.bulk_request_id == request.id
    assert delivery.event_type == "bulk_request.completed"
    assert delivery.status == "pending"
    body = orjson.loads(delivery.body)
    assert body["id"] == delivery.event_id
    assert body["data"]["id"] == request.id

    # A dispatch that read an older cursor (which only a second dispatcher could cause)
    # writes nothing, so no event can become a delivery twice.
    late = await finished_request(store, env, Transition.CREATED, Transition.COMPLETED)
    stale = NewDelivery(
        outbox_id=2**40,
        environment_id=env,
        bulk_request_id=late.id,
        event_id="evt_stale",
        event_type="bulk_request.completed",
        event_created_at="2000-01-01T00:00:00Z",
        body="{}",
    )
    assert await webhooks.add_deliveries(before, [stale], 2**40) is False
    assert await webhooks.cursor() < 2**40
    # An endpoint created after an event is not sent it.
    newer = await webhooks.create_endpoint(
        env, url="http://127.0.0.1:9/new", events=ALL_TYPES, description=None, secret="whsec_x"
    )
    await dispatcher.dispatch_once()
    assert await webhooks.list_deliveries(newer.id, status=None, before_id=2**62, limit=10) == []
    found = await webhooks.list_deliveries(endpoint.id, status=None, before_id=2**62, limit=10)
    assert [d.bulk_request_id for d in found] == [late.id, request.id]


# --- addresses, timeouts, redirects -----------------------------------------------------


async def test_deny_private_refuses_loopback_at_create_and_again_at_send(
    make_api: ApiFactory, settings: Settings, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    by_name = f"http://localhost:{port}/hook"
    # Allowed by default (SPEC §13: receivers often run beside the service).
    api = await make_api(settings)
    await api.create_stream()
    literal = await add_endpoint(api, receiver)
    named = await api.post("/v1/webhook_endpoints", {"url": by_name}, expect=201)
    await api.client.close()

    strict = dataclasses.replace(settings, webhook_deny_private=True)
    api = await make_api(strict)
    for url in (
        receiver.url,
        by_name,
        "http://[::1]/x",
        "http://10.1.2.3/x",
        "http://169.254.1.1/",
    ):
        status, problem = await api.call("POST", "/v1/webhook_endpoints", json={"url": url})
        assert status == 422, (url, problem)
        assert problem["errors"][0]["code"] == "private_address"
        assert problem["errors"][0]["pointer"] == "/url"
    status, _ = await api.call(
        "PATCH", f"/v1/webhook_endpoints/{literal['id']}", json={"url": "http://127.0.0.2/"}
    )
    assert status == 422
    assert len((await api.get("/v1/webhook_endpoints"))["data"]) == 2  # nothing changed

    # The endpoints made before the flag was set are refused when sending: a literal
    # address by the sender, a name by the resolver, on the address it resolves to now.
    summary = await api.submit([record(1)])
    await api.wait_terminal(summary["id"])
    for endpoint_id in (literal["id"], named["id"]):

        async def attempted(endpoint_id: int = endpoint_id) -> list[Any]:
            return await deliveries(api, endpoint_id)

        await wait_until(attempted, lambda found: bool(found and found[0]["attempts"]))
        (delivery,) = await deliveries(api, endpoint_id)
        assert "not a public address" in delivery["attempts"][0]["error"], delivery
        assert delivery["attempts"][0]["http_status"] is None
    assert receiver.hits == 0


async def test_a_hanging_receiver_does_not_delay_processing_and_times_out(
    api: Api, receiver: Receiver
) -> None:
    await api.create_stream()
    receiver.hang = True
    endpoint = await add_endpoint(api, receiver)
    started = time.monotonic()
    for n in range(4):
        summary = await api.submit([record(n * 10 + i) for i in range(100)])
        assert (await api.wait_terminal(summary["id"]))["status"] == "completed"
    # Every request finished while the receiver held its webhooks unanswered.
    assert time.monotonic() - started < 5
    await wait_until(lambda: _hits(receiver), lambda n: n >= 1)
    found = await wait_until(
        lambda: deliveries(api, endpoint["id"]),
        lambda found: any(d["attempts"] for d in found),
        within=20,
    )
    attempt = next(d for d in found if d["attempts"])["attempts"][0]
    assert attempt["error"] == "no answer within 10 s"
    assert attempt["http_status"] is None
    assert 10_000 <= attempt["duration_ms"] < 15_000


async def test_a_redirect_is_not_followed(api: Api, receiver: Receiver) -> None:
    await api.create_stream()
    receiver.redirect_to = receiver.url.replace("/hook", "/elsewhere")
    endpoint = await add_endpoint(api, receiver)
    summary = await api.submit([record(1)])
    await api.wait_terminal(summary["id"])
    await wait_until(lambda: _hits(receiver), lambda n: n >= 1)
    found = await wait_until(
        lambda: deliveries(api, endpoint["id"]), lambda found: bool(found[0]["attempts"])
    )
    attempt = found[0]["attempts"][0]
    assert attempt["http_status"] == 302
    assert attempt["error"] == "HTTP 302: redirects are not followed"
    assert receiver.received == []  # /elsewhere was never asked


# --- the routes: bad input, scoping -----------------------------------------------------

BAD_BODIES = [
    ({}, "/url", "required"),
    ({"url": "ftp://example.com/x"}, "/url", "invalid_url"),
    ({"url": "example.com/hook"}, "/url", "invalid_url"),
    ({"url": "http:///nohost"}, "/url", "invalid_url"),
    ({"url": "https://user:pw@example.com/"}, "/url", "invalid_url"),
    ({"url": "http://example.com:99999/"}, "/url", "invalid_url"),
    ({"url": "http://exa mple.com/"}, "/url", "invalid_url"),
    ({"url": 5}, "/url", "invalid_type"),
    ({"url": "https://example.com/" + "a" * 2048}, "/url", "invalid_url"),
    ({"url": "https://example.com/", "events": []}, "/events", "invalid_type"),
    ({"url": "https://example.com/", "events": "bulk_request.failed"}, "/events", "invalid_type"),
    (
        {"url": "https://example.com/", "events": ["bulk_request.failed", "bulk_request.done"]},
        "/events/1",
        "unknown_event_type",
    ),
    (
        {"url": "https://example.com/", "events": ["bulk_request.failed"] * 2},
        "/events/1",
        "duplicate",
    ),
    ({"url": "https://example.com/", "description": 7}, "/description", "invalid"),
    (
        {"url": "https://example.com/", "description": "a\x00b"},
        "/description",
        "invalid_characters",
    ),
    ({"url": "https://example.com/", "secret": "mine"}, "/secret", "unknown_field"),
]


@pytest.mark.parametrize(("body", "pointer", "code"), BAD_BODIES)
async def test_a_bad_endpoint_is_a_422_naming_the_field_and_changes_nothing(
    api: Api, body: Any, pointer: str, code: str
) -> None:
    status, problem = await api.call("POST", "/v1/webhook_endpoints", json=body)
    assert status == 422, problem
    assert [(e["pointer"], e["code"]) for e in problem["errors"]] == [(pointer, code)]
    assert (await api.get("/v1/webhook_endpoints"))["data"] == []


async def test_changes_are_checked_like_creation_and_unknown_ids_are_404(api: Api) -> None:
    created = await api.post("/v1/webhook_endpoints", {"url": "https://example.com/a"}, expect=201)
    path = f"/v1/webhook_endpoints/{created['id']}"
    for body, pointer in (
        ({"enabled": "yes"}, "/enabled"),
        ({"events": ["nope"]}, "/events/0"),
        ({"url": "mailto:x@example.com"}, "/url"),
        ({"id": 3}, "/id"),
    ):
        status, problem = await api.call("PATCH", path, json=body)
        assert status == 422, problem
        assert problem["errors"][0]["pointer"] == pointer
    assert await api.get(path) == {k: v for k, v in created.items() if k != "secret"}
    status, changed = await api.call(
        "PATCH", path, json={"url": "https://example.com/b", "description": "new"}
    )
    assert status == 200
    assert changed["url"] == "https://example.com/b"
    assert changed["description"] == "new"
    assert changed["events"] == ALL_TYPES
    status, cleared = await api.call("PATCH", path, json={"description": None})
    assert cleared["description"] is None
    for method, missing in (
        ("GET", "/v1/webhook_endpoints/999"),
        ("PATCH", "/v1/webhook_endpoints/999"),
        ("DELETE", "/v1/webhook_endpoints/999"),
        ("GET", "/v1/webhook_endpoints/abc/deliveries"),
        ("GET", "/v1/webhook_endpoints/999/deliveries"),
        ("POST", "/v1/webhook_endpoints/999/deliveries/1/retry"),
    ):
        status, problem = await api.call(method, missing, json={} if method == "PATCH" else None)
        assert status == 404, (method, missing, problem)
    status, _ = await api.call("DELETE", path)
    assert status == 204
    assert (await api.call("GET", path))[0] == 404
    assert (await api.call("DELETE", path))[0] == 404


async def test_endpoints_are_scoped_to_their_environment(api: Api) -> None:
    created = await api.post("/v1/webhook_endpoints", {"url": "https://example.com/a"}, expect=201)
    new = generate_api_key()
    await api.app[STORE].create_api_key("sandbox", new.key_hash, new.public_id)
    sandbox = Api(api.client, key=new.key)
    assert (await sandbox.get("/v1/webhook_endpoints"))["data"] == []
    for method in ("GET", "PATCH", "DELETE"):
        status, _ = await sandbox.call(
            method, f"/v1/webhook_endpoints/{created['id']}", json={} if method == "PATCH" else None
        )
        assert status == 404
    assert (await api.get(f"/v1/webhook_endpoints/{created['id']}"))["id"] == created["id"]


async def test_lists_page_with_a_cursor(api: Api, receiver: Receiver) -> None:
    made = [
        (await api.post("/v1/webhook_endpoints", {"url": f"https://example.com/{n}"}, expect=201))[
            "id"
        ]
        for n in range(5)
    ]
    assert [e["id"] for e in await api.all_pages("/v1/webhook_endpoints", limit=2)] == made
    await api.create_stream()
    endpoint = await add_endpoint(api, receiver)
    ids = await finished_one_row_requests(api, 3)
    await settled(api, endpoint["id"], count=3)
    listed = await api.all_pages(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", limit=2)
    assert [d["bulk_request_id"] for d in listed] == ids[::-1]  # newest first
    status, problem = await api.call(
        "GET", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries?status=done"
    )
    assert status == 400
    assert problem["errors"][0]["parameter"] == "status"


async def test_events_of_environments_without_endpoints_are_not_rendered_but_not_missed(
    store: Storage, tmp_path: Any
) -> None:
    env = await make_environment(store)
    webhooks = store.webhooks
    rendered: list[int] = []

    async def render(request: BulkRequest) -> JSON:
        rendered.append(request.id)
        return {"id": request.id}

    dispatcher = WebhookDispatcher(webhooks, Settings(db_path=tmp_path / "unused.db"), render)

    await finished_request(store, env)
    await dispatcher.dispatch_once()
    assert rendered == []  # no endpoint anywhere: nothing to render
    assert await webhooks.cursor() == await webhooks.newest_outbox_id()

    # An endpoint enabled between the round's look and its transaction: the unrendered
    # event would be missed, so the transaction refuses and writes nothing.
    late = await finished_request(store, env)
    cursor = await webhooks.cursor()
    (event,) = await webhooks.terminal_events(cursor, 2**62, 10)
    endpoint = await webhooks.create_endpoint(
        env, url="http://127.0.0.1:9/hook", events=ALL_TYPES, description=None, secret="whsec_x"
    )
    # (created before the event, as an endpoint enabled again would be)
    await stored_execute(store, "UPDATE webhook_endpoints SET created_at = '2000-01-01T00:00:00Z'")
    unrendered = NewDelivery(
        outbox_id=event.id,
        environment_id=env,
        bulk_request_id=late.id,
        event_id="evt_x",
        event_type="bulk_request.completed",
        event_created_at=event.created_at,
        body=None,
    )
    assert await webhooks.add_deliveries(cursor, [unrendered], event.id) is False
    assert await webhooks.cursor() == cursor
    # The dispatcher's own round then renders it and delivers.
    await dispatcher.dispatch_once()
    assert rendered == [late.id]
    (delivery,) = await webhooks.list_deliveries(
        endpoint.id, status=None, before_id=2**62, limit=10
    )
    assert delivery.bulk_request_id == late.id


async def endpoint_and_dispatcher(
    store: Storage, tmp_path: Any
) -> tuple[int, WebhookEndpoint, WebhookDispatcher]:
    """An environment with one endpoint for every event type, and a dispatcher (never
    started: the test runs its rounds) rendering a request as its id."""
    env = await make_environment(store)
    endpoint = await store.webhooks.create_endpoint(
        env, url="http://127.0.0.1:9/hook", events=ALL_TYPES, description=None, secret="whsec_x"
    )
    settings = Settings(db_path=tmp_path / "unused.db")
    return env, endpoint, WebhookDispatcher(store.webhooks, settings, _just_the_id)


async def record_failure(webhooks: WebhookStorage, delivery_id: int) -> None:
    """A send of the delivery that the receiver answered with a 500."""
    await webhooks.record_attempt(
        AttemptOutcome(delivery_id, now_rfc3339(), 500, "HTTP 500", 3),
        retry_base=0.0,
        circuit_cooldown=60,
    )


async def test_a_leased_delivery_is_sent_by_no_one_else_until_its_lease_runs_out(
    store: Storage, tmp_path: Any
) -> None:
    env, endpoint, dispatcher = await endpoint_and_dispatcher(store, tmp_path)
    webhooks = store.webhooks
    await finished_request(store, env)
    await dispatcher.dispatch_once()
    (due,) = await webhooks.due_deliveries([], 10)
    assert await webhooks.lease_deliveries([due.id]) == {due.id}
    # Another dispatcher (another process on PostgreSQL) neither sees it due nor leases it.
    assert await webhooks.due_deliveries([], 10) == []
    assert await webhooks.lease_deliveries([due.id]) == set()
    assert await webhooks.next_due_at([]) is not None  # when the lease runs out
    # Its sender died: once the lease has run out, it is due again for anyone.
    await stored_execute(
        store, "UPDATE webhook_deliveries SET leased_until = '2000-01-01T00:00:00Z'"
    )
    assert [d.id for d in await webhooks.due_deliveries([], 10)] == [due.id]
    assert await webhooks.lease_deliveries([due.id]) == {due.id}
    # Its outcome ends the lease.
    await record_failure(webhooks, due.id)
    (delivery,) = await webhooks.list_deliveries(
        endpoint.id, status=None, before_id=2**62, limit=10
    )
    assert delivery.leased_until is None
    assert delivery.attempt_count == 1
    assert [d.id for d in await webhooks.due_deliveries([], 10)] == [due.id]


async def test_concurrent_failures_of_one_endpoint_all_count_towards_its_circuit(
    store: Storage, tmp_path: Any
) -> None:
    # Two sends to one endpoint overlap (WEBHOOK_MAX_SENDS_PER_ENDPOINT), and so may
    # their outcomes' transactions: each must count, or a dead receiver gets more than
    # WEBHOOK_CIRCUIT_FAILURES attempts before its circuit opens.
    env, endpoint, dispatcher = await endpoint_and_dispatcher(store, tmp_path)
    webhooks = store.webhooks
    for _ in range(WEBHOOK_CIRCUIT_FAILURES):
        await finished_request(store, env)
    await dispatcher.dispatch_once()
    due = await webhooks.due_deliveries([], 10)
    assert len(due) == WEBHOOK_CIRCUIT_FAILURES
    await asyncio.gather(*(record_failure(webhooks, d.id) for d in due))
    shown = await webhooks.get_endpoint(env, endpoint.id)
    assert shown is not None
    assert shown.consecutive_failures == WEBHOOK_CIRCUIT_FAILURES
    assert shown.circuit_open_until is not None


@pytest.mark.sqlite_only("one process owns a SQLite file: its leases are released at open")
async def test_a_sqlite_store_opened_again_releases_a_dead_processs_leases(
    tmp_path: Any,
) -> None:
    path = tmp_path / "bulk.db"
    store = Store(path, exclusive=True)
    await store.open()
    try:
        env = await make_environment(store)
        await store.webhooks.create_endpoint(
            env, url="http://127.0.0.1:9/hook", events=ALL_TYPES, description=None, secret="w"
        )
        dispatcher = WebhookDispatcher(store.webhooks, Settings(db_path=path), _just_the_id)
        await finished_request(store, env)
        await dispatcher.dispatch_once()
        (due,) = await store.webhooks.due_deliveries([], 10)
        assert await store.webhooks.lease_deliveries([due.id]) == {due.id}
    finally:
        await store.close()  # as a kill leaves it: the lease is still in the file
    again = Store(path, exclusive=True)
    await again.open()
    try:
        assert [d.id for d in await again.webhooks.due_deliveries([], 10)] == [due.id]
    finally:
        await again.close()


async def test_a_burst_of_finished_requests_is_dispatched_in_a_few_rounds(api: Api) -> None:
    # Each of these requests' completion nudges the dispatcher; with a round per nudge
    # (four reads and a write transaction each) a bulk ingest spent 5 % of its event
    # loop on rounds, even with no endpoint anywhere.
    await api.create_stream()
    store = api.app[STORE]
    started = time.monotonic()
    summaries = await asyncio.gather(*(api.submit([record(n)]) for n in range(40)))
    for summary in summaries:
        await api.wait_terminal(summary["id"])
    newest = await store.webhooks.newest_outbox_id()
    await wait_until(store.webhooks.cursor, lambda cursor: cursor >= newest, within=5)
    elapsed = time.monotonic() - started
    _, samples = await scrape(api)
    rounds = value(samples, "bulk_webhook_dispatch_rounds_total")
    assert rounds <= elapsed / WEBHOOK_MIN_ROUND_INTERVAL_SECONDS + 2, (rounds, elapsed)
    assert rounds < 40 / 2, "about a round per finished request"
