"""Live progress as Server-Sent Events: one bulk request, or every request of an environment.

    GET /v1/bulk_requests/{id}/events   progress events, then `done`, then the stream closes
    GET /v1/events                      progress/done events of the caller's environment

Each event's `data` is the full bulk-request payload (as `GET /v1/bulk_requests/{id}`).
Event ids are `progress_version` (server/events.py): `status rank.progress.recoveries.
cancel flag`, e.g. `2.1500.0.0`, which only grows, so a reconnecting client's
`Last-Event-ID` tells whether it already has the current state. The environment stream
prefixes the request id (`42:2.1500.0.0`) and ignores `Last-Event-ID`: a client that
reconnects reloads the list, which is cheaper than replaying every request's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import orjson
from aiohttp import web

from server import bulk_requests as domain
from server.api.common import HUB, SETTINGS, STORE, path_id
from server.api.render import render_bulk_request
from server.constants import (
    SSE_DISCONNECT_CHECK_SECONDS,
    SSE_KEEPALIVE_SECONDS,
    SSE_MIN_EVENT_INTERVAL_SECONDS,
    SSE_RETRY_MS,
    SSE_TRACKED_REQUESTS,
)
from server.events import (
    NO_VERSION,
    Subscription,
    Version,
    format_event_id,
    parse_event_id,
    progress_version,
)
from server.http.auth import caller_of
from server.http.errors import not_found
from server.http.metrics import LONG_LIVED
from server.models import BulkRequest
from server.types import JSON, TERMINAL_STATUSES

EVENT_STREAM_CONTENT_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"


class _EventStream:
    """Writes a subscription's rows to one client, coalesced, until it ends."""

    def __init__(self, request: web.Request, sub: Subscription, *, single: bool) -> None:
        self.request = request
        self.sub = sub
        # single: one request's stream, which ends with its `done` event.
        self.single = single
        # Last version sent per request, least recently changed first (pruned).
        self.sent: dict[int, Version] = {}
        self.response = web.StreamResponse(
            headers={
                "Content-Type": EVENT_STREAM_CONTENT_TYPE,
                # Every event is news: nothing may cache or buffer the stream.
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: pass each event through at once
            }
        )

    async def open(self) -> None:
        await self.response.prepare(self.request)
        if self.request.method != "HEAD":
            # Also flushes the headers, so the client knows at once that it is connected.
            await self.response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())

    def _client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        keepalive_at = loop.time() + SSE_KEEPALIVE_SECONDS
        while True:
            wait = min(SSE_DISCONNECT_CHECK_SECONDS, max(0.0, keepalive_at - loop.time()))
            ready = await self.sub.wait(wait)
            if self.sub.closed or self._client_gone():
                return
            if not ready:
                if loop.time() >= keepalive_at:
                    await self.response.write(KEEPALIVE)
                    keepalive_at = loop.time() + SSE_KEEPALIVE_SECONDS
                continue
            finished = await self._send(self.sub.take())
            keepalive_at = loop.time() + SSE_KEEPALIVE_SECONDS
            if finished:
                return
            # Coalescing: rows published meanwhile wait in the mailbox, which keeps only
            # the newest per request, so the next burst carries the latest state.
            await self.sub.pause(SSE_MIN_EVENT_INTERVAL_SECONDS)

    async def _send(self, rows: list[BulkRequest]) -> bool:
        """Write the rows that are news; True when a single-request stream is done."""
        frames: list[bytes] = []
        finished = False
        for row in sorted(rows, key=lambda r: r.id):
            version = progress_version(row)
            terminal = row.status in TERMINAL_STATUSES
            # A terminal request always answers `done`, even to a client that has that
            # state: it is what tells the client to stop reconnecting.
            if version <= self.sent.get(row.id, NO_VERSION) and not (self.single and terminal):
                continue
            self._remember(row.id, version)
            event_id = format_event_id(version)
            if not self.single:
                event_id = f"{row.id}:{event_id}"
            payload = orjson.dumps(await self._render(row))
            kind = b"done" if terminal else b"progress"
            frames.append(b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind, payload))
            finished = finished or (self.single and terminal)
        if frames:
            await self.response.write(b"".join(frames))
        return finished

    def _remember(self, request_id: int, version: Version) -> None:
        self.sent.pop(request_id, None)
        self.sent[request_id] = version
        while len(self.sent) > SSE_TRACKED_REQUESTS:
            del self.sent[next(iter(self.sent))]

    async def _render(self, row: BulkRequest) -> JSON:
        stream_id = row.data_stream_id
        if stream_id is not None and row.data_stream_key is None:
            hub = self.request.app[HUB]
            key = hub.stream_keys.get(stream_id)
            if key is None:
                key = await self.request.app[STORE].get_data_stream_key(stream_id)
                if key is not None:
                    hub.stream_keys[stream_id] = key
            row = dataclasses.replace(row, data_stream_key=key)
        retryable = await domain.retryable_requests(
            self.request.app[STORE], caller_of(self.request).environment_id, [row]
        )
        return render_bulk_request(
            row, self.request.app[SETTINGS].stuck_after, can_retry=row.id in retryable
        )


async def _serve(stream: _EventStream) -> web.StreamResponse:
    # Its duration is watching time, not latency: keep it out of the latency histogram.
    stream.request[LONG_LIVED] = True
    await stream.open()
    if stream.request.method == "HEAD":
        return stream.response  # the headers say it all; a HEAD has no stream to wait on
    # The client went away mid-write: nothing is left to do.
    with contextlib.suppress(ConnectionResetError):
        await stream.run()
    return stream.response


async def bulk_request_events(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    request_id = path_id(request)
    # Subscribe before reading the snapshot: a change committed in between is then in
    # the snapshot or in the mailbox (the newer of the two wins), never lost.
    with request.app[HUB].subscribe(request_id=request_id) as sub:
        row = await request.app[STORE].get_bulk_request(caller.environment_id, request_id)
        if row is None:
            raise not_found(f"bulk request {request_id}")
        stream = _EventStream(request, sub, single=True)
        stream.sent[request_id] = parse_event_id(request.headers.get("Last-Event-ID"))
        sub.offer(row)
        return await _serve(stream)


async def environment_events(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    with request.app[HUB].subscribe(environment_id=caller.environment_id) as sub:
        return await _serve(_EventStream(request, sub, single=False))


async def close_event_streams(app: web.Application) -> None:
    """on_shutdown: end every stream now; aiohttp would otherwise wait for each handler."""
    app[HUB].close_all()
