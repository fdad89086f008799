"""`PostgresStorage.webhooks`: webhooks (SPEC §13) are not on PostgreSQL yet.

The webhook tables and statements exist on SQLite only (tests/test_pg_schema.py lists
them). Every endpoint and delivery operation refuses with WebhooksUnsupported, which the
API answers as a 501 problem; the dispatcher's own reads answer "nothing to do" (no
endpoint can be created, so no event has anyone to deliver to), so it idles quietly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NoReturn

from server.db.webhook_port import NewDelivery, OutboxEvent, WebhooksUnsupported
from server.models import (
    AttemptOutcome,
    DeliveryStatus,
    DueDelivery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

UNSUPPORTED_MESSAGE = (
    "webhooks are not available on PostgreSQL yet; run the service on SQLite to use them"
)


def _refuse() -> NoReturn:
    raise WebhooksUnsupported(UNSUPPORTED_MESSAGE)


class UnsupportedWebhooks:
    # --- endpoints and deliveries: refused ------------------------------------------------
    async def create_endpoint(
        self,
        environment_id: int,
        *,
        url: str,
        events: Sequence[str],
        description: str | None,
        secret: str,
    ) -> WebhookEndpoint:
        _refuse()

    async def get_endpoint(self, environment_id: int, endpoint_id: int) -> WebhookEndpoint | None:
        _refuse()

    async def list_endpoints(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[WebhookEndpoint]:
        _refuse()

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
        _refuse()

    async def delete_endpoint(self, environment_id: int, endpoint_id: int) -> bool:
        _refuse()

    async def redeliver(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        _refuse()

    async def list_deliveries(
        self, endpoint_id: int, *, status: DeliveryStatus | None, before_id: int, limit: int
    ) -> list[WebhookDelivery]:
        _refuse()

    async def get_delivery(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        _refuse()

    async def attempts_of(self, delivery_ids: Iterable[int]) -> dict[int, list[WebhookAttempt]]:
        _refuse()

    # --- the dispatcher: nothing to dispatch, as no endpoint can exist --------------------
    async def cursor(self) -> int:
        return 0

    async def newest_outbox_id(self) -> int:
        return 0

    async def terminal_events(self, after_id: int, up_to: int, limit: int) -> list[OutboxEvent]:
        return []

    async def environments_with_endpoints(self) -> set[int]:
        return set()

    async def add_deliveries(
        self, cursor: int, new: Sequence[NewDelivery], advance_to: int
    ) -> bool:
        _refuse()  # never called: newest_outbox_id never passes the cursor

    async def due_deliveries(self, in_flight: Iterable[int], limit: int) -> list[DueDelivery]:
        return []

    async def next_due_at(self, in_flight: Iterable[int]) -> str | None:
        return None

    async def record_attempt(
        self, outcome: AttemptOutcome, *, retry_base: float, circuit_cooldown: float
    ) -> None:
        _refuse()  # never called: nothing is ever due
