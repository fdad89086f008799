"""Live progress over Server-Sent Events: format, ids, Last-Event-ID, coalescing, cleanup."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from server.api.common import HUB, POOL, STORE
from server.app import create_app
from server.config import Settings
from server.events import parse_event_id
from server.http.auth import generate_api_key
from tests.conftest import API_KEY, Api, claim_without_event, record, wait_until

ApiFactory = Callable[[Settings], Awaitable[Api]]
COMPLETED = "bulk_request.completed"


@dataclasses.dataclass
class Event:
    id: str
    event: str
    data: Any
    at: float


class SSE:
    """A minimal event-stream reader over an aiohttp client response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.retry: int | None = None
        self.comments: list[str] = []

    async def next(self, within: float = 10.0) -> Event | None:
        """The next event; None at the end of the stream. Fails after `within` seconds."""
        return await asyncio.wait_for(self._next(), within)

    async def _next(self) -> Event | None:
        fields: dict[str, str] = {}
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    return Event(
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        orjson.loads(fields["data"]),
                        time.monotonic(),
                    )
                fields.clear()
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "retry":
                self.retry = int(value)
            else:
                fields[name] = value

    async def quiet(self, seconds: float) -> bool:
        """True when no event arrives within `seconds` (the stream stays open)."""
        try:
            event = await self.next(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected no event, got {event}")

    async def all(self, within: float = 20.0) -> list[Event]:
        events = []
        deadline = time.monotonic() + within
        while (event := await self.next(max(0.1, deadline - time.monotonic()))) is not None:
            events.append(event)
        return events


@asynccontextmanager
async def stream(api: Api, path: str, headers: dict[str, str] | None = None) -> AsyncIterator[SSE]:
    async with api.client.get(path, headers=api.headers(headers)) as resp:
        assert resp.status == 200, await resp.text()
        yield SSE(resp)


async def add_environment(api: Api, name: str = "other") -> Api:
    new = generate_api_key()
    await api.app[STORE].create_api_key(name, new.key_hash, new.public_id)
    return Api(api.client, key=new.key)


def idle(settings: Settings) -> Settings:
    """No workers: requests stay pending, so every event comes from the test itself."""
    return dataclasses.replace(settings, workers=0)


async def test_request_stream_format_then_done_then_close(api: Api) -> None:
    await api.create_stream()
    records = [record(i) for i in range(120)] + [record(999, date="2024-02-30")]
    summary = await api.submit(records)
    async with api.client.get(
        f"/v1/bulk_requests/{summary['id']}/events", headers=api.headers()
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        sse = SSE(resp)
        events = await sse.all()
        assert sse.retry == 3000
    assert events, "a stream always sends at least the current state"
    assert [e.event for e in events[:-1]] == ["progress"] * (len(events) - 1)
    done = events[-1]
    assert done.event == "done"
    versions = [parse_event_id(e.id) for e in events]
    assert all(v[0] >= 0 for v in versions), [e.id for e in events]
    assert versions == sorted(set(versions)), "ids strictly increase"
    final = await api.get(f"/v1/bulk_requests/{summary['id']}")
    # The payload is exactly what GET returns, data_stream_key included (the worker's
    # rows lack the joined key; the stream resolves it).
    assert done.data == final
    assert final["status"] == "completed"
    assert final["data_stream_key"] == "bank"
    assert (final["successful_items"], final["failed_items"]) == (120, 1)


async def test_many_small_batches_are_coalesced(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(dataclasses.replace(settings, workers=1, batch_size=1))
    await api.create_stream()
    summary = await api.submit([record(i) for i in range(800)])
    async with stream(api, f"/v1/bulk_requests/{summary['id']}/events") as sse:
        events = await sse.all(within=60)
    assert events[-1].event == "done"
    assert events[-1].data["processed_items"] == 800
    span = events[-1].at - events[0].at
    # 800 heartbeats; at most ~10 events a second reach the client (+2 for edges).
    assert len(events) <= span * 10 + 2, (len(events), span)
    assert len(events) >= 3, "the request should have been watched while it ran"
    processed = [e.data["processed_items"] for e in events]
    assert processed == sorted(processed)
    versions = [parse_event_id(e.id) for e in events]
    assert versions == sorted(set(versions))


async def test_last_event_id_skips_a_state_the_client_has(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(idle(settings))
    summary = await api.submit([record(1)])
    path = f"/v1/bulk_requests/{summary['id']}/events"
    async with stream(api, path) as sse:
        first = await sse.next()
        assert first is not None
        assert first.event == "progress"
        assert first.data["status"] == "pending"
        assert first.id == "0.0.0.0"
        assert await sse.quiet(0.3), "nothing changes: nothing is sent"
    # Unknown or malformed ids mean "send the current state".
    for stale in ("garbage", "", "1.2.3", "-1.0.0.0"):
        async with stream(api, path, {"Last-Event-ID": stale}) as sse:
            again = await sse.next()
            assert again is not None
            assert again.id == first.id
    async with stream(api, path, {"Last-Event-ID": first.id}) as sse:
        assert await sse.quiet(0.3)
        await api.post(f"/v1/bulk_requests/{summary['id']}/cancel", expect=200)
        done = await sse.next()
        assert done is not None
        assert done.event == "done"
        assert done.data["status"] == "cancelled"
        assert parse_event_id(done.id) > parse_event_id(first.id)
        assert await sse.next() is None, "done, then the stream closes"


async def test_terminal_request_answers_done_only(api: Api) -> None:
    await api.create_stream()
    summary = await api.submit([record(1), record(2)])
    final = await api.wait_terminal(summary["id"])
    path = f"/v1/bulk_requests/{summary['id']}/events"
    async with stream(api, path) as sse:
        events = await sse.all()
    assert [e.event for e in events] == ["done"]
    assert events[0].data == final
    # Even a client that has the final state gets `done`: it is the signal to stop.
    async with stream(api, path, {"Last-Event-ID": events[0].id}) as sse:
        assert [e.event for e in await sse.all()] == ["done"]


async def test_errors_are_problems(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(idle(settings))
    summary = await api.submit([record(1)])
    other = await add_environment(api)
    for path in (f"/v1/bulk_requests/{summary['id']}/events", "/v1/bulk_requests/99/events"):
        status, body = await other.call("GET", path)
        assert status == 404, body
        assert body["type"] == "/problems/not-found"
    status, body = await api.call("GET", "/v1/bulk_requests/abc/events")
    assert status == 404, body
    for path in (f"/v1/bulk_requests/{summary['id']}/events", "/v1/events"):
        async with api.client.get(path) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
        async with api.client.head(path, headers=api.headers()) as resp:
            assert resp.status == 200, "HEAD answers the headers and does not hang"
            assert resp.content_type == "text/event-stream"
    assert api.app[HUB].subscriber_count() == 0


async def test_environment_stream_sees_every_change_of_its_environment_only(
    make_api: ApiFactory, settings: Settings
) -> None:
    # On PostgreSQL a claim is rescued by heartbeat age: at once here.
    api = await make_api(dataclasses.replace(idle(settings), heartbeat_timeout=0.001))
    other = await add_environment(api)
    await api.create_stream()
    async with stream(api, "/v1/events") as sse, stream(other, "/v1/events") as foreign:
        first = await api.submit([record(1)])
        event = await sse.next()
        assert event is not None
        assert event.event == "progress"
        assert event.id == f"{first['id']}:0.0.0.0"
        assert event.data == await api.get(f"/v1/bulk_requests/{first['id']}")

        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(b"date,amount,data_stream_key\n2024-01-02,1.00,bank\n"))
        _, upload = await api.call("POST", "/v1/uploads", data=form, expect=202)
        event = await sse.next()
        assert event is not None
        assert event.data["id"] == upload["id"]
        assert (event.data["source"], event.data["parsing"]) == ("csv", True)

        await api.post(f"/v1/bulk_requests/{first['id']}/cancel", expect=200)
        event = await sse.next()
        assert event is not None
        assert event.event == "done"
        assert event.data["status"] == "cancelled"

        child = await api.post(f"/v1/bulk_requests/{first['id']}/retry", expect=201)
        event = await sse.next()
        assert event is not None, "the stream stays open after a done event"
        assert event.event == "progress"
        assert event.data["id"] == child["id"]
        assert event.data["parent_bulk_request_id"]

        # A claim whose worker is gone: cancel only requests (202), the sweeper requeues.
        claimed = await claim_without_event(api.app[STORE], "gone:0:0000")
        assert claimed is not None
        assert claimed.id == first["id"] + 1
        await api.post(f"/v1/bulk_requests/{claimed.id}/cancel", expect=202)
        event = await sse.next()
        assert event is not None
        assert event.data["cancellation_requested_at"] is not None
        await asyncio.sleep(0.01)
        assert await api.app[POOL].requeue_orphans("worker gone") == [claimed.id]
        event = await sse.next()
        assert event is not None
        assert event.data["recoveries"] == 1

        assert await foreign.quiet(0.2), "another environment's stream sees none of it"


async def test_environment_stream_keeps_alive(
    make_api: ApiFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.api.events.SSE_KEEPALIVE_SECONDS", 0.2)
    api = await make_api(idle(settings))
    async with stream(api, "/v1/events") as sse:
        assert await sse.quiet(0.7)
        assert sse.comments.count("keep-alive") >= 2


async def test_dropped_connections_leave_nothing_behind(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(idle(settings))
    summary = await api.submit([record(1)])
    hub = api.app[HUB]
    baseline = len(asyncio.all_tasks())
    paths = [f"/v1/bulk_requests/{summary['id']}/events", "/v1/events"] * 100
    connector = aiohttp.TCPConnector(limit=0)  # the default pool holds only 100
    async with aiohttp.ClientSession(connector=connector) as session:
        responses = await asyncio.gather(
            *(session.get(api.client.make_url(p), headers=api.headers()) for p in paths)
        )
        assert {r.status for r in responses} == {200}
        await wait_until(lambda: _value(hub.subscriber_count()), lambda n: n == 200)
        for resp in responses:
            resp.close()
    await wait_until(
        lambda: _value((hub.subscriber_count(), len(asyncio.all_tasks()))),
        lambda state: state[0] == 0 and state[1] <= baseline,
        within=10,
    )


async def _value(value: Any) -> Any:
    return value


async def test_disconnect_is_noticed_without_handler_cancellation(settings: Settings) -> None:
    # As `python run.py` serves: aiohttp does not cancel a handler whose client left, so
    # the stream itself must notice (within SSE_DISCONNECT_CHECK_SECONDS).
    app = create_app(idle(settings), bootstrap_api_key=API_KEY)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=3.0, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/v1/events"
        async with aiohttp.ClientSession() as session:
            responses = [await session.get(url, headers={"X-API-KEY": API_KEY}) for _ in range(20)]
            assert app[HUB].subscriber_count() == 20
            for resp in responses:
                resp.close()
        await wait_until(lambda: _value(app[HUB].subscriber_count()), lambda n: n == 0, 5)
    finally:
        await runner.cleanup()


async def test_shutdown_closes_open_streams(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(idle(settings))
    summary = await api.submit([record(1)])
    async with (
        stream(api, f"/v1/bulk_requests/{summary['id']}/events") as one,
        stream(api, "/v1/events") as everything,
    ):
        assert (await one.next()) is not None
        started = time.monotonic()
        await api.app.shutdown()  # what the runner's cleanup calls first
        assert await one.next(2) is None
        assert await everything.next(2) is None
        assert time.monotonic() - started < 2
    assert api.app[HUB].subscriber_count() == 0


async def test_one_log_line_per_transition(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await api.create_stream()
    summary = await api.submit([record(1), record(2, date="nope")])
    await api.wait_terminal(summary["id"])
    await wait_until(
        lambda: _value(
            [r for r in caplog.records if getattr(r, "event", "").endswith("completed")]
        ),
        bool,
    )
    lines = [r for r in caplog.records if getattr(r, "bulk_request_id", None) == summary["id"]]
    assert [r.event for r in lines] == ["bulk_request.claimed", "bulk_request.completed"]
    done = lines[-1]
    assert (done.environment_id, done.processed, done.successful, done.failed) == (1, 2, 1, 1)
    assert all(
        API_KEY not in r.getMessage() and API_KEY not in str(r.__dict__) for r in caplog.records
    )
