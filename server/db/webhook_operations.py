"""`Webhooks`: server/db/webhook_port.py's WebhookStorage, once, for both adapters.

Each write operation runs its transaction body (server/db/webhook_transactions.py) through
the adapter's `WebhookBackend`; each read is one named statement. The adapters give only
the backend (server/db/sqlite/webhooks.py, server/db/postgres/webhooks.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson

from server.clock import now_rfc3339
from server.db import webhook_transactions as bodies
from server.db.payload import bulk_request_from_stored
from server.db.webhook_port import NewDelivery, OutboxEvent
from server.db.webhook_transactions import WebhookBackend, WebhookTx, ids_json
from server.models import (
    AttemptOutcome,
    DeliveryStatus,
    DueDelivery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from server.types import JSON


class Webhooks:
    """server/db/webhook_port.py's WebhookStorage on either adapter's WebhookBackend."""

    def __init__(self, backend: WebhookBackend) -> None:
        self.backend = backend

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
        async def body(tx: WebhookTx) -> JSON | None:
            return await tx.one(
                "insert_webhook_endpoint",
                environment_id=environment_id,
                url=url,
                events=orjson.dumps(list(events)).decode(),
                description=description,
                secret=secret,
                now=now_rfc3339(),
            )

        row = await self.backend.transaction(body)
        assert row is not None  # INSERT … RETURNING
        return WebhookEndpoint(**row)

    async def get_endpoint(self, environment_id: int, endpoint_id: int) -> WebhookEndpoint | None:
        row = await self.backend.read_one(
            "get_webhook_endpoint", id=endpoint_id, environment_id=environment_id
        )
        return WebhookEndpoint(**row) if row is not None else None

    async def list_endpoints(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[WebhookEndpoint]:
        rows = await self.backend.read_all(
            "list_webhook_endpoints", environment_id=environment_id, after_id=after_id, limit=limit
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

        async def body(tx: WebhookTx) -> JSON | None:
            return await tx.one(
                "update_webhook_endpoint",
                id=endpoint_id,
                environment_id=environment_id,
                url=url,
                events=orjson.dumps(list(events)).decode() if events is not None else None,
                enabled=None if enabled is None else int(enabled),
                set_description=description is not None,
                description=description[0] if description is not None else None,
            )

        row = await self.backend.transaction(body)
        return WebhookEndpoint(**row) if row is not None else None

    async def delete_endpoint(self, environment_id: int, endpoint_id: int) -> bool:
        return await self.backend.transaction(
            lambda tx: bodies.delete_endpoint(tx, environment_id, endpoint_id)
        )

    # --- the dispatcher: outbox → deliveries --------------------------------------------

    async def cursor(self) -> int:
        row = await self.backend.read_one("get_webhook_cursor")
        assert row is not None  # the migration inserts the one row
        return int(row["outbox_id"])

    async def newest_outbox_id(self) -> int:
        return await self.backend.newest_outbox_id()

    async def terminal_events(self, after_id: int, up_to: int, limit: int) -> list[OutboxEvent]:
        rows = await self.backend.read_all(
            "list_terminal_outbox_events", after_id=after_id, up_to=up_to, limit=limit
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
        rows = await self.backend.read_all("list_environments_with_webhooks")
        return {int(row["environment_id"]) for row in rows}

    async def add_deliveries(
        self, cursor: int, new: Sequence[NewDelivery], advance_to: int
    ) -> bool:
        """In ONE transaction: a delivery per matching endpoint for each new event, and the
        cursor moved from `cursor` to `advance_to`. False (nothing written) if the cursor
        is no longer `cursor`, so no event can become deliveries twice; False too if an
        event left unrendered has a matching endpoint now (one was enabled meanwhile):
        the caller renders every event and tries again."""
        try:
            return await self.backend.transaction(
                lambda tx: bodies.add_deliveries(tx, cursor, new, advance_to)
            )
        except bodies.RenderAll:
            return False

    # --- sending ------------------------------------------------------------------------

    async def due_deliveries(self, in_flight: Iterable[int], limit: int) -> list[DueDelivery]:
        rows = await self.backend.read_all(
            "list_due_webhook_deliveries",
            now=now_rfc3339(),
            in_flight=ids_json(in_flight),
            limit=limit,
        )
        return [DueDelivery(**row) for row in rows]

    async def lease_deliveries(self, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        return await self.backend.transaction(lambda tx: bodies.lease_deliveries(tx, ids))

    async def next_due_at(self, in_flight: Iterable[int]) -> str | None:
        row = await self.backend.read_one("next_webhook_due_at", in_flight=ids_json(in_flight))
        assert row is not None  # an aggregate always returns one row
        value: str | None = next(iter(row.values()))
        return value

    async def record_attempt(
        self, outcome: AttemptOutcome, *, retry_base: float, circuit_cooldown: float
    ) -> None:
        await self.backend.transaction(
            lambda tx: bodies.record_attempt(
                tx, outcome, retry_base=retry_base, circuit_cooldown=circuit_cooldown
            )
        )

    async def redeliver(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        row = await self.backend.transaction(
            lambda tx: bodies.redeliver(tx, endpoint_id, delivery_id), urgent=True
        )
        return WebhookDelivery(**row) if row is not None else None

    # --- the delivery log ---------------------------------------------------------------

    async def list_deliveries(
        self, endpoint_id: int, *, status: DeliveryStatus | None, before_id: int, limit: int
    ) -> list[WebhookDelivery]:
        rows = await self.backend.read_all(
            "list_webhook_deliveries",
            endpoint_id=endpoint_id,
            status=status,
            before_id=before_id,
            limit=limit,
        )
        return [WebhookDelivery(**row) for row in rows]

    async def get_delivery(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        row = await self.backend.read_one(
            "get_webhook_delivery", id=delivery_id, endpoint_id=endpoint_id
        )
        return WebhookDelivery(**row) if row is not None else None

    async def attempts_of(self, delivery_ids: Iterable[int]) -> dict[int, list[WebhookAttempt]]:
        rows = await self.backend.read_all(
            "list_webhook_attempts", delivery_ids=ids_json(delivery_ids)
        )
        found: dict[int, list[WebhookAttempt]] = {}
        for row in rows:
            attempt = WebhookAttempt(**row)
            found.setdefault(attempt.delivery_id, []).append(attempt)
        return found
