"""The webhook dispatcher: outbox events → deliveries → signed POSTs, retried.

One task per server process. Each round it
1. turns the terminal outbox events past its cursor into deliveries (one per matching
   enabled endpoint) and moves the cursor, in ONE write transaction (add_deliveries,
   server/db/webhook_transactions.py): a kill -9 before that commit leaves the events
   past the cursor, to be dispatched after the restart; after it, the deliveries are
   durable. Either way nothing is lost and nothing becomes a delivery twice;
2. starts sending the deliveries that are due, at most WEBHOOK_MAX_CONCURRENT_SENDS at
   once and WEBHOOK_MAX_SENDS_PER_ENDPOINT per endpoint, skipping endpoints whose
   circuit is open, each leased first (no other dispatcher, of this process or another
   one on the same PostgreSQL database, sends it meanwhile); each attempt's outcome is
   one transaction (log, next state, circuit, the lease's end);
3. sleeps until the next delivery is due, or until `nudge()`: server/outcomes.py's
   AfterCommit calls it after a commit with a terminal transition, and a send finishing
   or a manual retry does too. Rounds start WEBHOOK_MIN_ROUND_INTERVAL_SECONDS apart at
   least, so a burst of commits is dispatched in a few rounds, not one round each.
Workers never wait for any of it: they only commit, and the nudge is a flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from server.clock import parse_rfc3339, utc_now
from server.config import Settings
from server.constants import (
    WEBHOOK_DISPATCH_BATCH,
    WEBHOOK_IDLE_POLL_SECONDS,
    WEBHOOK_MAX_CONCURRENT_SENDS,
    WEBHOOK_MAX_SENDS_PER_ENDPOINT,
    WEBHOOK_MIN_ROUND_INTERVAL_SECONDS,
)
from server.db.webhook_port import NewDelivery, OutboxEvent, WebhookStorage
from server.models import BulkRequest, DueDelivery, WebhookDelivery
from server.types import JSON
from server.webhooks.addresses import PublicOnlyResolver
from server.webhooks.sender import send

log = logging.getLogger("server.webhooks")

# The bulk-request payload as GET /v1/bulk_requests/{id} renders it, from the request's
# row as the event left it (given by the app: rendering belongs to the HTTP layer).
RenderPayload = Callable[[BulkRequest], Awaitable[JSON]]

# A round that fails (the database is briefly unavailable, a bug) is retried after this.
ROUND_FAILURE_PAUSE_SECONDS = 1.0


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def event_type_of(transition: str) -> str:
    return f"bulk_request.{transition}"


class WebhookDispatcher:
    def __init__(self, webhooks: WebhookStorage, settings: Settings, render: RenderPayload) -> None:
        self.webhooks = webhooks
        self.settings = settings
        self._render = render
        self._nudged = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sending: dict[int, asyncio.Task[None]] = {}  # delivery id → its send
        self._per_endpoint: Counter[int] = Counter()
        self.rounds_total = 0  # rounds run since start (/metrics)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        resolver = PublicOnlyResolver() if self.settings.webhook_deny_private else None
        connector = aiohttp.TCPConnector(limit=WEBHOOK_MAX_CONCURRENT_SENDS, resolver=resolver)
        # trust_env=False: a proxy from the environment never sees the receivers' traffic.
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop sending. An interrupted send is not recorded: its delivery is still
        pending and is sent again after the restart (at least once)."""
        self._stopping = True
        self._nudged.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._sending.values()):
            task.cancel()
        await asyncio.gather(*self._sending.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def nudge(self) -> None:
        """Something may be due now (called after commits; cheap, never blocks)."""
        self._nudged.set()

    # --- operations the API calls -------------------------------------------------------

    async def redeliver(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        delivery = await self.webhooks.redeliver(endpoint_id, delivery_id)
        if delivery is not None:
            self.nudge()
        return delivery

    # --- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        # The flag, not only the cancellation, ends the loop: on Python 3.11 a cancel that
        # lands as an awaited result arrives can be swallowed (asyncio.wait_for did so),
        # and a loop that missed it would hold shutdown for ever.
        while not self._stopping:
            self._nudged.clear()
            try:
                while await self.dispatch_once():
                    pass  # a full batch: there may be more
                wait = await self._send_due()
            except Exception:
                log.exception("webhook round failed; retrying")
                wait = ROUND_FAILURE_PAUSE_SECONDS
            self.rounds_total += 1
            # A nudge during this pause is kept (the flag stays set) and served after it.
            await asyncio.sleep(WEBHOOK_MIN_ROUND_INTERVAL_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait - WEBHOOK_MIN_ROUND_INTERVAL_SECONDS)):
                    await self._nudged.wait()

    async def dispatch_once(self) -> bool:
        """Turn the next batch of terminal outbox events into deliveries; True if the
        batch was full (call again)."""
        cursor = await self.webhooks.cursor()
        # Every id up to the newest one is committed (the storage makes sure: on PostgreSQL
        # ids are not taken in commit order), so the events in (cursor, newest] are all
        # there to read.
        newest = await self.webhooks.newest_outbox_id()
        if newest <= cursor:
            return False
        events = await self.webhooks.terminal_events(cursor, newest, WEBHOOK_DISPATCH_BATCH)
        full = len(events) == WEBHOOK_DISPATCH_BATCH
        advance_to = events[-1].id if full else newest
        # Rendering reads the request and its chain: only for environments that have an
        # endpoint (add_deliveries refuses the round if one appeared meanwhile).
        wanted = await self.webhooks.environments_with_endpoints()
        new = [await self._new_delivery(e, e.environment_id in wanted) for e in events]
        if not await self.webhooks.add_deliveries(cursor, new, advance_to):
            if await self.webhooks.cursor() != cursor:
                # Another dispatcher (another process on PostgreSQL) dispatched these
                # first: look again from where it left the cursor.
                return True
            new = [await self._new_delivery(event, True) for event in events]
            await self.webhooks.add_deliveries(cursor, new, advance_to)
        return full

    async def _new_delivery(self, event: OutboxEvent, render: bool) -> NewDelivery:
        event_id = new_event_id()
        event_type = event_type_of(event.event_type)
        body = None
        if render:
            data = await self._render(event.request)
            envelope = {
                "id": event_id,
                "type": event_type,
                "created_at": event.created_at,
                "data": data,
            }
            body = orjson.dumps(envelope).decode()
        return NewDelivery(
            outbox_id=event.id,
            environment_id=event.environment_id,
            bulk_request_id=event.bulk_request_id,
            event_id=event_id,
            event_type=event_type,
            event_created_at=event.created_at,
            body=body,
        )

    async def _send_due(self) -> float:
        """Start the sends that are due and have a slot; seconds until the next is due."""
        if not self.settings.webhook_delivery:
            return WEBHOOK_IDLE_POLL_SECONDS
        free = WEBHOOK_MAX_CONCURRENT_SENDS - len(self._sending)
        if free > 0:
            # Enough candidates to fill the free slots even if some endpoints are at
            # their own limit.
            due = await self.webhooks.due_deliveries(self._sending, free * 4)
            chosen: list[DueDelivery] = []
            per_endpoint = self._per_endpoint.copy()
            for delivery in due:
                if len(chosen) >= free:
                    break
                if per_endpoint[delivery.endpoint_id] >= WEBHOOK_MAX_SENDS_PER_ENDPOINT:
                    continue
                per_endpoint[delivery.endpoint_id] += 1
                chosen.append(delivery)
            # Leased first: another process's dispatcher may have chosen some of the same
            # ones; only the leased ones are this one's to send.
            leased = await self.webhooks.lease_deliveries([d.id for d in chosen])
            for delivery in chosen:
                if delivery.id in leased:
                    self._start_send(delivery)
        next_due = await self.webhooks.next_due_at(self._sending)
        if next_due is None:
            return WEBHOOK_IDLE_POLL_SECONDS
        seconds = (parse_rfc3339(next_due) - utc_now()).total_seconds()
        if seconds <= 0:
            return WEBHOOK_IDLE_POLL_SECONDS  # due but no slot: a finishing send nudges
        return min(seconds, WEBHOOK_IDLE_POLL_SECONDS)

    def _start_send(self, delivery: DueDelivery) -> None:
        self._per_endpoint[delivery.endpoint_id] += 1
        task = asyncio.create_task(self._send(delivery), name=f"webhook-{delivery.id}")
        self._sending[delivery.id] = task

    async def _send(self, delivery: DueDelivery) -> None:
        assert self._session is not None
        try:
            outcome = await send(
                self._session, delivery, deny_private=self.settings.webhook_deny_private
            )
            await self.webhooks.record_attempt(
                outcome,
                retry_base=self.settings.webhook_retry_base,
                circuit_cooldown=self.settings.webhook_circuit_cooldown,
            )
            if outcome.error is not None:
                log.info(
                    "webhook delivery %s to %s failed: %s",
                    delivery.id,
                    delivery.url,
                    outcome.error,
                )
        except Exception:
            log.exception("webhook delivery %s: recording the attempt failed", delivery.id)
        finally:
            del self._sending[delivery.id]
            self._per_endpoint[delivery.endpoint_id] -= 1
            self.nudge()
