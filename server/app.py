"""Builds the aiohttp Application: routes, middlewares, start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from server.api import bulk_requests, dashboard, data_streams, health, uploads, webhooks
from server.api import events as event_streams
from server.api.common import HUB, LARGE_BODIES, POOL, SETTINGS, STORE, STREAMS
from server.api.openapi import openapi_document
from server.config import Settings
from server.constants import LARGE_JSON_BODY_SLOTS, MAX_JSON_BODY_BYTES, postgres_pool_size
from server.db.port import Storage
from server.db.postgres.storage import PostgresStorage
from server.db.sqlite.store import Store
from server.events import ProgressHub
from server.http.auth import generate_api_key, hash_api_key, make_auth_middleware
from server.http.errors import add_request_id_header, problem_middleware
from server.http.metrics import METRICS, Metrics, metrics_endpoint, observe_requests_middleware
from server.http.server import head_limit_middleware
from server.jobs.worker import WorkerPool
from server.outcomes import AfterCommit
from server.stream_cache import StreamCache
from server.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger("server.app")

BOOTSTRAP_ENVIRONMENT = "default"


async def ensure_bootstrap_key(store: Storage, configured_key: str | None) -> str | None:
    """SPEC §3: BULK_API_KEY is ensured to exist; with no keys at all, make one.

    Returns a newly generated key (to print once), else None.
    """
    if configured_key:
        await store.ensure_api_key(BOOTSTRAP_ENVIRONMENT, hash_api_key(configured_key))
        return None
    if await store.count_api_keys() == 0:
        new = generate_api_key()
        await store.create_api_key(BOOTSTRAP_ENVIRONMENT, new.key_hash, new.public_id)
        return new.key
    return None


def _announce_key(key: str) -> None:
    banner = "=" * 72
    print(
        f"\n{banner}\nNo API key existed, so one was created for environment "
        f"'{BOOTSTRAP_ENVIRONMENT}'.\nIt is shown only this once; store it now:\n\n"
        f"    X-API-KEY: {key}\n\n{banner}\n",
        flush=True,
    )


def make_storage(settings: Settings) -> Storage:
    """The composition root's one choice of adapter: PostgreSQL when a database URL is
    set (any number of processes share it), else the SQLite file, held exclusively by
    this process (Store's flock; see WorkerPool.start)."""
    if settings.database_url is not None:
        return PostgresStorage(
            settings.database_url,
            pool_size=postgres_pool_size(settings.workers),
            heartbeat_timeout=settings.heartbeat_timeout,
        )
    return Store(settings.db_path, synchronous=settings.synchronous, exclusive=True)


def create_app(settings: Settings, *, bootstrap_api_key: str | None = None) -> web.Application:
    app = web.Application(
        middlewares=[
            observe_requests_middleware,  # outermost: access log + latency, final status
            problem_middleware,
            head_limit_middleware,  # before auth: a 431 needs no key
            make_auth_middleware(STORE),
        ],
        client_max_size=MAX_JSON_BODY_BYTES,
    )
    store = make_storage(settings)
    hub = ProgressHub()
    app[SETTINGS] = settings
    app[STORE] = store
    app[HUB] = hub
    app[LARGE_BODIES] = asyncio.Semaphore(LARGE_JSON_BODY_SLOTS)
    app[STREAMS] = streams = StreamCache()
    app[POOL] = pool = WorkerPool(store, settings, streams)
    app[webhooks.WEBHOOKS] = dispatcher = WebhookDispatcher(
        store.webhooks,
        settings,
        lambda row: webhooks.render_event_data(store, settings.stuck_after, row),
    )
    store.after_commit = AfterCommit(
        hub, pool.wake, pool.notify_cancel_requested, pool.purge_soon, dispatcher.nudge
    ).apply
    app[METRICS] = Metrics(store, app[POOL], hub, dispatcher, settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        try:
            new_key = await ensure_bootstrap_key(store, bootstrap_api_key)
            if new_key:
                _announce_key(new_key)
            await app[POOL].start()
            await dispatcher.start()
            app[METRICS].loop_lag.start()
            yield
        finally:
            await app[METRICS].loop_lag.stop()
            await dispatcher.stop()
            await app[POOL].stop()
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    # Before the handlers are awaited: open event streams would otherwise hold shutdown.
    app.on_shutdown.append(event_streams.close_event_streams)
    app.on_response_prepare.append(add_request_id_header)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", health.healthz)
    r.add_get("/metrics", metrics_endpoint)
    r.add_get("/v1/openapi.json", openapi_document)
    r.add_get("/", dashboard.index)
    r.add_get("/static/{name}", dashboard.static_file)
    r.add_post("/v1/data_streams", data_streams.create_data_stream)
    r.add_get("/v1/data_streams", data_streams.list_data_streams)
    r.add_get("/v1/data_streams/{key}", data_streams.get_data_stream)
    r.add_get("/v1/records", data_streams.list_records)
    r.add_post("/v1/records/bulk", bulk_requests.submit_records)
    r.add_get("/v1/bulk_requests", bulk_requests.list_bulk_requests)
    r.add_get("/v1/bulk_requests/{id}", bulk_requests.get_bulk_request)
    r.add_get("/v1/bulk_requests/{id}/errors", bulk_requests.list_row_errors)
    r.add_post("/v1/bulk_requests/{id}/cancel", bulk_requests.cancel_bulk_request)
    r.add_post("/v1/bulk_requests/{id}/retry", bulk_requests.retry_bulk_request)
    r.add_get("/v1/bulk_requests/{id}/events", event_streams.bulk_request_events)
    r.add_get("/v1/events", event_streams.environment_events)
    r.add_post("/v1/uploads", uploads.create_upload)
    r.add_post("/v1/webhook_endpoints", webhooks.create_endpoint)
    r.add_get("/v1/webhook_endpoints", webhooks.list_endpoints)
    r.add_get("/v1/webhook_endpoints/{id}", webhooks.get_endpoint)
    r.add_patch("/v1/webhook_endpoints/{id}", webhooks.update_endpoint)
    r.add_delete("/v1/webhook_endpoints/{id}", webhooks.delete_endpoint)
    r.add_get("/v1/webhook_endpoints/{id}/deliveries", webhooks.list_deliveries)
    r.add_post("/v1/webhook_endpoints/{id}/deliveries/{delivery_id}/retry", webhooks.retry_delivery)
