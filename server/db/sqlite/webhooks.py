"""Webhook endpoints, deliveries and attempts (SPEC §13): the store's webhook operations.

Kept beside the store rather than in it, as a thin class over its transactions and
readers, so the webhook tables have one home. Every write is one transaction of the
store's writer; the dispatcher's (deliveries for new outbox events + the cursor) is
the one that makes delivery durable: see `add_deliveries`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from server.clock import now_rfc3339, to_rfc3339, utc_now
from server.constants import (
    WEBHOOK_CIRCUIT_FAILURES,
    WEBHOOK_MAX_ATTEMPTS,
    WEBHOOK_RETRY_JITTER,
)
from server.db.payload import bulk_request_from_stored
from server.db.sqlite.queries import Q
from server.db.sqlite.tx import WriteTx
from server.db.webhook_port import NewDelivery, OutboxEvent
from server.models import (
    AttemptOutcome,
    DeliveryStatus,
    DueDelivery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from server.types import JSON

if TYPE_CHECKING:  # the store builds this (Store.webhooks); no import cycle at run time
    from server.db.sqlite.store import Store


class _RenderAll(Exception):
    """An unrendered event needs a body after all: undo the dispatch transaction."""


def retry_delay(failed_attempts: int, base: float) -> float:
    """Seconds before the next attempt after `failed_attempts` failures: base, 2·base, …
    and up to WEBHOOK_RETRY_JITTER of that later, never earlier."""
    step: float = base * 2 ** (failed_attempts - 1)
    return step * (1 + random.random() * WEBHOOK_RETRY_JITTER)  # jitter, not a secret


def _ids_json(ids: Iterable[int]) -> str:
    return orjson.dumps(sorted(ids)).decode()


class WebhookStore:
    """The SQLite adapter of server/db/webhook_port.py's WebhookStorage."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- endpoints ----------------------------------------------------------------------

    async def create_endpoint(
        self,
        environment_id: int,
        *,
        url: str,
        events: Sequence[str],
        description: str | None,
        secret: str,
    ) -> WebhookEndpoint:
        params = {
            "environment_id": environment_id,
            "url": url,
            "events": orjson.dumps(list(events)).decode(),
            "description": description,
            "secret": secret,
            "now": now_rfc3339(),
        }
        row = await self.store.write(lambda tx: tx.one(Q.insert_webhook_endpoint, params))
        assert row is not None  # INSERT … RETURNING
        return WebhookEndpoint(**row)

    async def get_endpoint(self, environment_id: int, endpoint_id: int) -> WebhookEndpoint | None:
        row = await self.store.read_one(
            Q.get_webhook_endpoint, {"id": endpoint_id, "environment_id": environment_id}
        )
        return WebhookEndpoint(**row) if row is not None else None

    async def list_endpoints(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[WebhookEndpoint]:
        rows = await self.store.read_all(
            Q.list_webhook_endpoints,
            {"environment_id": environment_id, "after_id": after_id, "limit": limit},
        )
        return [WebhookEndpoint(**row) for row in rows]

    async def update_endpoint(
        self,
        environment_id: int,
        endpoint_id: int,
        *,
        url: str | None,
        events: Sequence[str] | None,
        enabled: bool | None,
        description: tuple[str | None] | None,
    ) -> WebhookEndpoint | None:
        """Change the given fields (None: unchanged; `description` is a 1-tuple so that
        it can be cleared)."""
        params = {
            "id": endpoint_id,
            "environment_id": environment_id,
            "url": url,
            "events": orjson.dumps(list(events)).decode() if events is not None else None,
            "enabled": None if enabled is None else int(enabled),
            "set_description": description is not None,
            "description": description[0] if description is not None else None,
        }
        row = await self.store.write(lambda tx: tx.one(Q.update_webhook_endpoint, params))
        return WebhookEndpoint(**row) if row is not None else None

    async def delete_endpoint(self, environment_id: int, endpoint_id: int) -> bool:
        """Delete the endpoint with its deliveries and their attempts, in one transaction."""

        def work(tx: WriteTx) -> bool:
            key = {"id": endpoint_id, "environment_id": environment_id}
            if tx.one(Q.get_webhook_endpoint, key) is None:
                return False
            tx.run(Q.delete_webhook_attempts_of_endpoint, {"endpoint_id": endpoint_id})
            tx.run(Q.delete_webhook_deliveries_of_endpoint, {"endpoint_id": endpoint_id})
            return tx.run(Q.delete_webhook_endpoint, key) == 1

        return await self.store.write(work)

    # --- the dispatcher: outbox → deliveries --------------------------------------------

    async def cursor(self) -> int:
        return int(await self.store.read_value(Q.get_webhook_cursor))

    async def newest_outbox_id(self) -> int:
        return int(await self.store.read_value(Q.newest_outbox_id))

    async def terminal_events(self, after_id: int, up_to: int, limit: int) -> list[OutboxEvent]:
        rows = await self.store.read_all(
            Q.list_terminal_outbox_events, {"after_id": after_id, "up_to": up_to, "limit": limit}
        )
        return [
            OutboxEvent(
                id=int(row["id"]),
                environment_id=int(row["environment_id"]),
                bulk_request_id=int(row["bulk_request_id"]),
                event_type=row["event_type"],
                request=bulk_request_from_stored(orjson.loads(row["payload"])),
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def environments_with_endpoints(self) -> set[int]:
        rows = await self.store.read_all(Q.list_environments_with_webhooks)
        return {int(row["environment_id"]) for row in rows}

    async def add_deliveries(
        self, cursor: int, new: Sequence[NewDelivery], advance_to: int
    ) -> bool:
        """In ONE transaction: a delivery per matching endpoint for each new event, and the
        cursor moved from `cursor` to `advance_to`. False (nothing written) if the cursor
        is no longer `cursor`, so no event can become deliveries twice; False too if an
        event left unrendered has a matching endpoint now (one was enabled meanwhile):
        the caller renders every event and tries again."""

        def work(tx: WriteTx) -> bool:
            if tx.one(Q.get_webhook_cursor) != {"outbox_id": cursor}:
                return False
            now = now_rfc3339()
            for event in new:
                params = {
                    "outbox_id": event.outbox_id,
                    "environment_id": event.environment_id,
                    "bulk_request_id": event.bulk_request_id,
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "event_created_at": event.event_created_at,
                    "body": event.body,
                    "now": now,
                }
                if event.body is not None:
                    tx.run(Q.insert_webhook_deliveries_for_event, params)
                elif tx.one(Q.event_has_webhook_endpoint, params) != {"found": 0}:
                    raise _RenderAll  # rolls back the deliveries inserted so far
            tx.run(Q.set_webhook_cursor, {"outbox_id": advance_to})
            return True

        try:
            return await self.store.write(work)
        except _RenderAll:
            return False

    # --- sending ------------------------------------------------------------------------

    async def due_deliveries(self, in_flight: Iterable[int], limit: int) -> list[DueDelivery]:
        rows = await self.store.read_all(
            Q.list_due_webhook_deliveries,
            {"now": now_rfc3339(), "in_flight": _ids_json(in_flight), "limit": limit},
        )
        return [DueDelivery(**row) for row in rows]

    async def next_due_at(self, in_flight: Iterable[int]) -> str | None:
        value: str | None = await self.store.read_value(
            Q.next_webhook_due_at, {"in_flight": _ids_json(in_flight)}
        )
        return value

    async def record_attempt(
        self, outcome: AttemptOutcome, *, retry_base: float, circuit_cooldown: float
    ) -> None:
        """The attempt in the delivery's log, its next state, and its endpoint's circuit,
        in one transaction. A delivery deleted meanwhile (with its endpoint) is left gone."""

        def work(tx: WriteTx) -> None:
            state = tx.one(Q.get_webhook_delivery_state, {"id": outcome.delivery_id})
            if state is None:
                return
            number = int(state["attempt_count"]) + 1
            tx.run(
                Q.insert_webhook_attempt,
                {
                    "delivery_id": outcome.delivery_id,
                    "number": number,
                    "at": outcome.at,
                    "http_status": outcome.http_status,
                    "error": outcome.error,
                    "duration_ms": outcome.duration_ms,
                },
            )
            now = utc_now()
            next_attempt_at: str | None = None
            failures = 0
            circuit_open_until: str | None = None
            if outcome.succeeded:
                status = DeliveryStatus.SUCCEEDED
            elif number >= WEBHOOK_MAX_ATTEMPTS:
                status = DeliveryStatus.FAILED
            else:
                status = DeliveryStatus.PENDING
                delay = retry_delay(number, retry_base)
                next_attempt_at = to_rfc3339(now + timedelta(seconds=delay))
            if not outcome.succeeded:
                failures = int(state["consecutive_failures"]) + 1
                if failures >= WEBHOOK_CIRCUIT_FAILURES:
                    cooldown = timedelta(seconds=circuit_cooldown)
                    circuit_open_until = to_rfc3339(now + cooldown)
            tx.run(
                Q.finish_webhook_attempt,
                {
                    "id": outcome.delivery_id,
                    "status": status,
                    "next_attempt_at": next_attempt_at,
                    "attempt_count": number,
                },
            )
            tx.run(
                Q.set_webhook_circuit,
                {
                    "id": state["endpoint_id"],
                    "consecutive_failures": failures,
                    "circuit_open_until": circuit_open_until,
                },
            )

        await self.store.write(work)

    async def redeliver(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        """Make the delivery due now (and let its endpoint be tried despite the circuit:
        a manual retry says the receiver is back)."""

        def work(tx: WriteTx) -> JSON | None:
            row = tx.one(
                Q.redeliver_webhook,
                {"id": delivery_id, "endpoint_id": endpoint_id, "now": now_rfc3339()},
            )
            if row is not None:
                tx.run(Q.close_webhook_circuit, {"id": endpoint_id})
            return row

        row = await self.store.write(work, urgent=True)
        return WebhookDelivery(**row) if row is not None else None

    # --- the delivery log ---------------------------------------------------------------

    async def list_deliveries(
        self, endpoint_id: int, *, status: DeliveryStatus | None, before_id: int, limit: int
    ) -> list[WebhookDelivery]:
        rows = await self.store.read_all(
            Q.list_webhook_deliveries,
            {"endpoint_id": endpoint_id, "status": status, "before_id": before_id, "limit": limit},
        )
        return [WebhookDelivery(**row) for row in rows]

    async def get_delivery(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        row = await self.store.read_one(
            Q.get_webhook_delivery, {"id": delivery_id, "endpoint_id": endpoint_id}
        )
        return WebhookDelivery(**row) if row is not None else None

    async def attempts_of(self, delivery_ids: Iterable[int]) -> dict[int, list[WebhookAttempt]]:
        rows: list[Any] = await self.store.read_all(
            Q.list_webhook_attempts, {"delivery_ids": _ids_json(delivery_ids)}
        )
        found: dict[int, list[WebhookAttempt]] = {}
        for row in rows:
            attempt = WebhookAttempt(**row)
            found.setdefault(attempt.delivery_id, []).append(attempt)
        return found
