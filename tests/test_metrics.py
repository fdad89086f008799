"""GET /metrics: Prometheus text with values from the database, the pool and the HTTP layer."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.api.common import HUB, POOL, STORE
from server.config import Settings
from tests.conftest import Api, claim_without_event, record, wait_until
from tests.test_events import stream

ApiFactory = Callable[[Settings], Awaitable[Api]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: Api) -> tuple[str, Samples]:
    async with api.client.get("/metrics") as resp:  # public: no API key
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def http_count(samples: Samples, method: str, route: str, status: int) -> float:
    return samples.get(
        (
            "bulk_http_request_duration_seconds_count",
            frozenset({"method": method, "route": route, "status": str(status)}.items()),
        ),
        0,
    )


async def test_metrics_after_processing(api: Api) -> None:
    await api.create_stream()
    records = [record(i, external_id=f"x{i}") for i in range(5)]
    records.append(record(9, external_id="x0"))  # duplicate: skipped
    records.append(record(10, date="2024-13-01"))  # failed
    summary = await api.submit(records)
    final = await api.wait_terminal(summary["id"])
    assert (final["successful_items"], final["skipped_items"], final["failed_items"]) == (5, 1, 1)

    async def idle_scrape() -> Samples:
        return (await scrape(api))[1]

    # The worker marks itself idle just after the commit a client can already see.
    samples = await wait_until(
        idle_scrape, lambda s: value(s, "bulk_workers", state="busy") == 0, within=5
    )
    assert value(samples, "bulk_database_up") == 1
    assert value(samples, "bulk_requests", status="completed", source="bulk_api") == 1
    assert value(samples, "bulk_requests", status="failed", source="csv") == 0
    assert value(samples, "bulk_rows_processed_total", outcome="successful") == 5
    assert value(samples, "bulk_rows_processed_total", outcome="skipped") == 1
    assert value(samples, "bulk_rows_processed_total", outcome="failed") == 1
    assert value(samples, "bulk_queue_depth") == 0
    assert value(samples, "bulk_heartbeat_age_max_seconds") == 0
    assert value(samples, "bulk_requests_stuck") == 0
    assert value(samples, "bulk_workers", state="idle") == 2
    assert value(samples, "bulk_recoveries_total") == 0
    assert value(samples, "bulk_sse_subscribers", scope="request") == 0
    assert http_count(samples, "POST", "/v1/records/bulk", 202) == 1
    assert http_count(samples, "GET", "/v1/bulk_requests/{id}", 200) >= 1
    assert http_count(samples, "POST", "/v1/data_streams", 201) == 1


async def test_route_labels_are_canonical(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream()
    summary = await api.submit([record(1)])
    await api.get("/v1/bulk_requests/424242", expect=404)
    await api.get("/v1/data_streams/bank")
    await api.get("/no/such/path/42", expect=404)
    await api.call("DELETE", "/v1/records/bulk", expect=405)
    async with api.client.get("/v1/events") as resp:
        assert resp.status == 401  # answered before streaming: recorded like any request
    # An open stream is counted as a subscriber, not timed as a request.
    async with stream(api, f"/v1/bulk_requests/{summary['id']}/events") as sse:
        assert await sse.next() is not None
        _, samples = await scrape(api)
        assert value(samples, "bulk_sse_subscribers", scope="request") == 1
        assert value(samples, "bulk_sse_subscribers", scope="environment") == 0
    await wait_until(lambda: asyncio.sleep(0, api.app[HUB].subscriber_count()), lambda n: n == 0, 5)
    text, samples = await scrape(api)
    assert http_count(samples, "GET", "/v1/bulk_requests/{id}", 404) == 1
    assert http_count(samples, "GET", "/v1/data_streams/{key}", 200) == 1
    assert http_count(samples, "GET", "unmatched", 404) == 1
    assert http_count(samples, "DELETE", "unmatched", 405) == 1
    assert http_count(samples, "GET", "/v1/events", 401) == 1
    assert http_count(samples, "GET", "/v1/bulk_requests/{id}/events", 200) == 0
    # Raw paths never become label values.
    for raw in (
        "424242",
        "/no/such",
        "/v1/data_streams/bank",
        f"/v1/bulk_requests/{summary['id']}",
    ):
        assert f'route="{raw}' not in text


async def test_heartbeat_age_stuck_and_recoveries(make_api: ApiFactory, settings: Settings) -> None:
    # On PostgreSQL the claim is another process's: rescued once its heartbeat is old.
    api = await make_api(
        dataclasses.replace(settings, workers=0, stuck_after=0.2, heartbeat_timeout=0.2)
    )
    summary = await api.submit([record(1)])
    # A claim whose worker is gone: processing, with a heartbeat that only ages.
    assert await claim_without_event(api.app[STORE], "gone:0:0000")
    await asyncio.sleep(0.4)
    _, samples = await scrape(api)
    assert value(samples, "bulk_requests", status="processing", source="bulk_api") == 1
    assert value(samples, "bulk_queue_depth") == 1
    assert 0.4 <= value(samples, "bulk_heartbeat_age_max_seconds") < 30
    assert value(samples, "bulk_requests_stuck") == 1
    assert value(samples, "bulk_workers", state="idle") == 0
    assert await api.app[POOL].requeue_orphans("worker gone") == [summary["id"]]
    _, samples = await scrape(api)
    assert value(samples, "bulk_recoveries_total") == 1


async def test_batches_held_back_by_accepts_are_counted(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=1, batch_size=10))
    await api.create_stream("bank", "USD")
    _, samples = await scrape(api)
    assert value(samples, "bulk_accept_priority_waits_total") == 0
    assert value(samples, "bulk_accept_priority_bound_hits_total") == 0
    with api.app[POOL].accepts.accepting():  # an accept in flight for the whole request
        summary = await api.submit([record(n) for n in range(30)])
        assert (await api.wait_terminal(summary["id"], within=5))["status"] == "completed"
    _, samples = await scrape(api)
    # Each of its three batches waited, and was let through by the bound.
    assert value(samples, "bulk_accept_priority_waits_total") >= 3
    assert value(samples, "bulk_accept_priority_bound_hits_total") >= 3


def lags_over(samples: Samples, seconds: str) -> float:
    """Samples of bulk_event_loop_lag_seconds later than the bucket bound `seconds`."""
    total = value(samples, "bulk_event_loop_lag_seconds_count")
    return total - value(samples, "bulk_event_loop_lag_seconds_bucket", le=seconds)


@pytest.mark.sqlite_only("the probe watches the event loop; the storage plays no part")
async def test_a_blocked_event_loop_shows_as_lag(api: Api) -> None:
    # The app runs on this test's loop, so blocking the test blocks the server as a
    # synchronous call in a handler would.
    first = await wait_until(
        lambda: scrape(api),
        lambda s: value(s[1], "bulk_event_loop_lag_seconds_count") >= 2,
        within=5,
    )
    before = lags_over(first[1], "0.25")
    time.sleep(0.4)  # noqa: ASYNC251 — the stall under test
    _, samples = await wait_until(
        lambda: scrape(api), lambda s: lags_over(s[1], "0.25") > before, within=5
    )
    # The probe that fell due during the block woke at least 0.25 s late; nothing was
    # 5 s late, so the block was measured, not a made-up huge value.
    assert lags_over(samples, "0.25") >= before + 1
    assert lags_over(samples, "5.0") == 0


async def test_each_app_has_its_own_registry(make_api: ApiFactory, settings: Settings) -> None:
    first = await make_api(settings)
    second = await make_api(
        dataclasses.replace(settings, db_path=settings.db_path.with_name("b.db"))
    )
    await first.get("/healthz")
    _, one = await scrape(first)
    _, two = await scrape(second)
    assert http_count(one, "GET", "/healthz", 200) == 1
    assert http_count(two, "GET", "/healthz", 200) == 0


async def test_unreadable_database_still_answers(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.app[STORE].close()
    _, samples = await scrape(api)
    assert value(samples, "bulk_database_up") == 0
    assert ("bulk_queue_depth", frozenset()) not in samples
    assert value(samples, "bulk_workers", state="idle") == 0


async def test_unreadable_database_makes_health_unavailable(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.app[STORE].close()
    body = await api.get("/healthz", expect=503)
    # The driver's error by name, as before the storage port (StorageUnavailable.reason):
    # aiosqlite's for a closed connection, asyncpg's for a closed pool.
    driver_error = "InterfaceError" if settings.database_url else "ValueError"
    assert body == {
        "status": "unavailable",
        "database": f"error: {driver_error}",
        "workers": 0,
        "queue_depth": None,
    }
