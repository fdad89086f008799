"""A real webhook receiver for tests: an aiohttp server on a free loopback port.

It verifies every request with the Standard Webhooks project's published verifier
(`standardwebhooks.Webhook(secret).verify`), and can answer 500 to the first N attempts,
hang (past the sender's timeout), or redirect. It records every request and counts
repeated `webhook-id`s, so a test can tell at-least-once from exactly-once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    webhook_id: str
    body: Any  # the verified, parsed body
    headers: dict[str, str]
    at: float  # time.monotonic()


@dataclass
class Receiver:
    secret: str = ""  # set once the endpoint is created
    fail_first: int = 0  # answer 500 to this many requests first
    always_fail: bool = False
    hang: bool = False  # never answer (the sender must give up at its timeout)
    redirect_to: str | None = None
    received: list[Received] = field(default_factory=list)  # verified, answered 2xx
    hits: int = 0  # every request, whatever was answered
    hit_times: list[float] = field(default_factory=list)
    hit_ids: list[str] = field(default_factory=list)  # webhook-id of every request
    unverified: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.hit_times.append(time.monotonic())
        self.hit_ids.append(request.headers.get("webhook-id", ""))
        body = await request.read()
        try:
            parsed = Webhook(self.secret).verify(body, dict(request.headers))
        except Exception as exc:  # the published verifier refused it: a test failure
            self.unverified.append(repr(exc))
            return web.Response(status=400)
        if self.hang:
            await asyncio.sleep(3600)
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        if self.always_fail or self.hits <= self.fail_first:
            return web.Response(status=500, text="not now")
        self.received.append(
            Received(request.headers["webhook-id"], parsed, dict(request.headers), time.monotonic())
        )
        return web.Response(status=204)

    async def start(self, path: str = "/hook") -> Receiver:
        app = web.Application()
        app.router.add_post(path, self._handle)
        app.router.add_post("/elsewhere", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{path}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def duplicates(self) -> list[str]:
        return [i for i, n in Counter(r.webhook_id for r in self.received).items() if n > 1]

    def types(self) -> list[str]:
        return [r.body["type"] for r in self.received]


class ThreadedReceiver:
    """The receiver on an event loop of its own thread, for synchronous tests (the sync
    Playwright API, real `run.py` processes driven with blocking calls)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiver: Receiver = asyncio.run_coroutine_threadsafe(
            Receiver().start(), self.loop
        ).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
