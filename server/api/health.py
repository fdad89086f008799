"""`GET /healthz`: is the database usable, how many workers, how deep the queue."""

from __future__ import annotations

from aiohttp import web

from server.api.common import POOL, SETTINGS, STORE, json_response
from server.db.port import StorageUnavailable


async def healthz(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    try:
        depth = await request.app[STORE].queue_depth()
    except StorageUnavailable as exc:
        return json_response(
            {
                "status": "unavailable",
                "database": f"error: {exc.reason}",
                "workers": pool.worker_count,
                "queue_depth": None,
            },
            status=503,
        )
    # Degraded: workers were configured and none runs. A process started with
    # --workers 0 serves the API only (other PostgreSQL processes do the work): ok.
    configured = request.app[SETTINGS].workers
    status = "ok" if pool.worker_count or not configured else "degraded"
    return json_response(
        {"status": status, "database": "ok", "workers": pool.worker_count, "queue_depth": depth}
    )
