"""Prometheus metrics (SPEC §10): `GET /metrics`, public, text exposition format.

Each app has its own CollectorRegistry (tests build many apps in one process; the
global registry would refuse the second one's metrics). Two kinds of values:

- computed at scrape time: requests by status and source, queue depth, rows processed
  by outcome, heartbeat age, stuck requests (from the database, through the store's
  readers), and workers, recoveries, event-stream subscribers and webhook dispatch
  rounds (from memory);
- recorded as they happen: the HTTP request duration histogram, by canonical route,
  and the event loop's lag (server/http/loop_lag.py).

Rows by outcome come from the requests' own counters, so they survive restarts and
always agree with what the API reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from server.clock import parse_rfc3339, to_rfc3339, utc_now
from server.config import Settings
from server.db.port import StatusSourceTotals, Storage, StorageUnavailable
from server.events import ProgressHub
from server.http.logs import log_access
from server.http.loop_lag import LoopLagMonitor
from server.jobs.worker import WorkerPool
from server.types import Source, Status
from server.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger("server.metrics")

# The classic text format: every Prometheus version (and most other scrapers) reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Requests that matched no route share one label: raw paths would let any client
# create unbounded label values (one time series per probed URL).
UNMATCHED_ROUTE = "unmatched"
# The status recorded when the client went away before a response was sent (as nginx).
CLIENT_CLOSED_STATUS = 499
# Long-lived responses (event streams) mark themselves with this key. Their duration is
# how long someone watched, not latency: in the histogram they would fill the +Inf
# bucket and make every latency quantile of the API meaningless, so they are left out
# (errors they answer before streaming, like 401 or 404, are still recorded). Their
# number is the `bulk_sse_subscribers` gauge instead.
LONG_LIVED = web.RequestKey("long_lived", bool)
# API calls take milliseconds; uploads of large files can take many seconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class _DatabaseSnapshot:
    by_status_source: list[StatusSourceTotals]
    queue_depth: int
    oldest_heartbeat: str | None
    stuck: int


class _Families:
    """The scrape-time metric families, fresh for each scrape."""

    def __init__(self) -> None:
        self.up = GaugeMetricFamily(
            "bulk_database_up", "1 if this scrape could read the database, else 0"
        )
        self.requests = GaugeMetricFamily(
            "bulk_requests", "Bulk requests by status and source", labels=["status", "source"]
        )
        self.queue_depth = GaugeMetricFamily(
            "bulk_queue_depth", "Bulk requests not yet terminal (pending or processing)"
        )
        self.rows = CounterMetricFamily(
            "bulk_rows_processed", "Rows processed, by outcome", labels=["outcome"]
        )
        self.heartbeat_age = GaugeMetricFamily(
            "bulk_heartbeat_age_max_seconds",
            "Age of the oldest heartbeat among processing requests (0 when none runs)",
        )
        self.stuck = GaugeMetricFamily(
            "bulk_requests_stuck",
            "Processing requests whose heartbeat is older than the stuck threshold",
        )
        self.workers = GaugeMetricFamily("bulk_workers", "Worker tasks by state", labels=["state"])
        self.recoveries = CounterMetricFamily(
            "bulk_recoveries",
            "Interrupted requests this process requeued (at start or by the sweeper)",
        )
        self.claim_attempts = CounterMetricFamily(
            "bulk_worker_claim_attempts",
            "Claim transactions the workers ran, whether they found work or not "
            "(idle workers sleep until woken or the next run_at: this stays flat while idle)",
        )
        self.accept_waits = CounterMetricFamily(
            "bulk_accept_priority_waits",
            "Worker batches that waited for bulk POSTs being accepted (server/jobs/accept_gate.py)",
        )
        self.accept_bound_hits = CounterMetricFamily(
            "bulk_accept_priority_bound_hits",
            "Of those, batches let through by the wait bound while POSTs were still being "
            "accepted (a steady rise: a flood of POSTs, drained at the bound's pace)",
        )
        self.webhook_rounds = CounterMetricFamily(
            "bulk_webhook_dispatch_rounds",
            "Rounds the webhook dispatcher ran (outbox events to deliveries, then sends); "
            "at most one per WEBHOOK_MIN_ROUND_INTERVAL_SECONDS however many commits nudge it",
        )
        self.subscribers = GaugeMetricFamily(
            "bulk_sse_subscribers", "Open event streams, by scope", labels=["scope"]
        )

    def all(self) -> list[Metric]:
        return [
            self.up,
            self.requests,
            self.queue_depth,
            self.rows,
            self.heartbeat_age,
            self.stuck,
            self.workers,
            self.recoveries,
            self.claim_attempts,
            self.accept_waits,
            self.accept_bound_hits,
            self.webhook_rounds,
            self.subscribers,
        ]

    def add_database(self, snapshot: _DatabaseSnapshot) -> None:
        # Every status/source pair is present (zero when empty), so an alert on
        # `failed` works before the first failure ever happens.
        counts: dict[tuple[str, str], int] = {(s, src): 0 for s in Status for src in Source}
        totals = {"successful": 0, "failed": 0, "skipped": 0}
        for row in snapshot.by_status_source:
            counts[(row.status, row.source)] = row.requests
            totals["successful"] += row.successful
            totals["failed"] += row.failed
            totals["skipped"] += row.skipped
        for (status, source), n in sorted(counts.items()):
            self.requests.add_metric([status, source], n)
        for outcome, n in totals.items():
            self.rows.add_metric([outcome], n)
        self.queue_depth.add_metric([], snapshot.queue_depth)
        oldest = snapshot.oldest_heartbeat
        seconds = (utc_now() - parse_rfc3339(oldest)).total_seconds() if oldest else 0.0
        self.heartbeat_age.add_metric([], max(0.0, seconds))
        self.stuck.add_metric([], snapshot.stuck)


class _StateCollector:
    """Yields the values of one scrape: the database snapshot read just before, and
    the pool's and the hub's in-memory state."""

    def __init__(self, pool: WorkerPool, hub: ProgressHub, dispatcher: WebhookDispatcher) -> None:
        self.pool = pool
        self.hub = hub
        self.dispatcher = dispatcher
        self.snapshot: _DatabaseSnapshot | None = None

    def describe(self) -> Iterator[Metric]:
        # Names only (no samples), so the registry can detect clashes at registration.
        return iter(_Families().all())

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        # Without a snapshot (the database could not be read) the database families
        # stay empty and bulk_database_up says why.
        if self.snapshot is not None:
            families.add_database(self.snapshot)
        families.up.add_metric([], 1 if self.snapshot is not None else 0)
        busy = self.pool.busy_count
        families.workers.add_metric(["busy"], busy)
        families.workers.add_metric(["idle"], max(0, self.pool.worker_count - busy))
        families.recoveries.add_metric([], self.pool.recovered_total)
        families.claim_attempts.add_metric([], self.pool.claim_attempts_total)
        families.accept_waits.add_metric([], self.pool.accepts.waits_total)
        families.accept_bound_hits.add_metric([], self.pool.accepts.bound_hits_total)
        families.webhook_rounds.add_metric([], self.dispatcher.rounds_total)
        for scope in ("request", "environment"):
            families.subscribers.add_metric([scope], self.hub.subscriber_count(scope))
        return iter(families.all())


class Metrics:
    """One app's registry, its HTTP histogram and its scrape."""

    def __init__(
        self,
        store: Storage,
        pool: WorkerPool,
        hub: ProgressHub,
        dispatcher: WebhookDispatcher,
        settings: Settings,
    ):
        self.store = store
        self.settings = settings
        self.registry = CollectorRegistry()
        self.http_duration = Histogram(
            "bulk_http_request_duration_seconds",
            "HTTP request duration by method, canonical route and status "
            "(event streams excluded: their duration is watching time, not latency)",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=HTTP_BUCKETS,
        )
        self.loop_lag = LoopLagMonitor(self.registry)
        self._state = _StateCollector(pool, hub, dispatcher)
        self.registry.register(self._state)

    async def _read_database(self) -> _DatabaseSnapshot | None:
        stuck_before = to_rfc3339(utc_now() - timedelta(seconds=self.settings.stuck_after))
        try:
            by_status_source = await self.store.metrics_bulk_requests()
            depth = await self.store.queue_depth()
            beats = await self.store.metrics_heartbeats(stuck_before)
        except StorageUnavailable as exc:
            # A scrape must still answer (workers, HTTP latency) when the database is
            # unusable; bulk_database_up = 0 is the signal to alert on.
            log.warning("metrics: database unreadable: %s", exc.reason)
            return None
        return _DatabaseSnapshot(by_status_source, depth, beats.oldest, beats.stuck)

    async def render(self) -> bytes:
        snapshot = await self._read_database()
        # No await between here and generate_latest: concurrent scrapes cannot mix
        # one scrape's snapshot into another's output.
        self._state.snapshot = snapshot
        return generate_latest(self.registry)

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        self.http_duration.labels(request.method, route, str(status)).observe(seconds)


METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def observe_requests_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: times each request once, with its final status (problems
    included), for both the access-log line and the latency histogram."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects and the like, passed through untouched
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_CLOSED_STATUS
        raise
    finally:
        seconds = time.perf_counter() - started
        log_access(request, status, seconds)
        if not request.get(LONG_LIVED):
            request.app[METRICS].observe(request, status, seconds)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
