"""The storage port's webhook part (SPEC §13): endpoints, deliveries, attempts, and the
dispatcher's cursor into the outbox. `Storage.webhooks` is one of these.

Every write is one transaction. `add_deliveries` is the one that makes delivery durable:
it turns outbox events into deliveries and advances the cursor together, and it refuses
(returns False) a round that would miss an endpoint enabled since the round began. The
outbox pruning of the main port never deletes an event past the cursor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from server.models import (
    AttemptOutcome,
    BulkRequest,
    DeliveryStatus,
    DueDelivery,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A terminal outbox event: the request as the change left it."""

    id: int
    environment_id: int
    bulk_request_id: int
    event_type: str  # the outcome's Transition value: completed | failed | cancelled
    request: BulkRequest
    created_at: str


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One outbox event, rendered, to become a delivery for each endpoint that wants it."""

    outbox_id: int
    environment_id: int
    bulk_request_id: int
    event_id: str
    event_type: str
    event_created_at: str
    # None: not rendered, as its environment had no enabled endpoint when the round began.
    body: str | None


class WebhookStorage(Protocol):
    # --- endpoints (scoped to an environment) ---------------------------------------------
    async def create_endpoint(
        self,
        environment_id: int,
        *,
        url: str,
        events: Sequence[str],
        description: str | None,
        secret: str,
    ) -> WebhookEndpoint: ...
    async def get_endpoint(
        self, environment_id: int, endpoint_id: int
    ) -> WebhookEndpoint | None: ...
    async def list_endpoints(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[WebhookEndpoint]: ...
    async def update_endpoint(
        self,
        environment_id: int,
        endpoint_id: int,
        *,
        url: str | None,
        events: Sequence[str] | None,
        enabled: bool | None,
        description: tuple[str | None] | None,
    ) -> WebhookEndpoint | None: ...
    async def delete_endpoint(self, environment_id: int, endpoint_id: int) -> bool: ...

    # --- the dispatcher -------------------------------------------------------------------
    async def cursor(self) -> int: ...
    async def newest_outbox_id(self) -> int: ...
    async def terminal_events(self, after_id: int, up_to: int, limit: int) -> list[OutboxEvent]: ...
    async def environments_with_endpoints(self) -> set[int]: ...
    async def add_deliveries(
        self, cursor: int, new: Sequence[NewDelivery], advance_to: int
    ) -> bool: ...
    async def due_deliveries(self, in_flight: Iterable[int], limit: int) -> list[DueDelivery]: ...
    async def lease_deliveries(self, ids: Sequence[int]) -> set[int]:
        """Of the due deliveries `ids`, the ones this caller may send now (leased to it:
        no other dispatcher, of this process or another, sends them meanwhile)."""
        ...

    async def next_due_at(self, in_flight: Iterable[int]) -> str | None: ...
    async def record_attempt(
        self, outcome: AttemptOutcome, *, retry_base: float, circuit_cooldown: float
    ) -> None: ...
    async def redeliver(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None: ...

    # --- deliveries (the endpoint was checked against the caller's environment) -----------
    async def list_deliveries(
        self, endpoint_id: int, *, status: DeliveryStatus | None, before_id: int, limit: int
    ) -> list[WebhookDelivery]: ...
    async def get_delivery(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None: ...
    async def attempts_of(self, delivery_ids: Iterable[int]) -> dict[int, list[WebhookAttempt]]: ...
