"""The webhook operations (server/db/webhook_port.py), written once for both adapters.

Each write is an `async def` transaction body over `WebhookTx`, a transaction that runs
named statements (the twin queries.sql files give each name its dialect). PostgreSQL
awaits a body inside one asyncpg transaction; SQLite runs it on its writer thread through
server/db/drive.py's `run_to_completion`, over a transaction whose coroutines never
suspend. `Webhooks` implements the port over an adapter's `WebhookBackend`: how it runs a
transaction and a read, and how it finds the newest outbox id that is safe to dispatch
up to (the one thing the backends do differently: see their `newest_outbox_id`).

The decisions inside (the backoff, the circuit) are pure functions, `retry_delay` and
`attempt_decision`, that the bodies call.

Several processes on one database (PostgreSQL): the dispatch body locks the cursor row
(`get_webhook_cursor` is FOR UPDATE there) and writes nothing if the cursor has moved, so
each event becomes deliveries once whichever dispatcher gets there first; a send is
leased first (`lease_deliveries`, FOR UPDATE SKIP LOCKED), so no two dispatchers send
one delivery at once, and a dead sender's lease runs out for another to send it again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import orjson

from server.clock import now_rfc3339, to_rfc3339, utc_now
from server.constants import (
    WEBHOOK_CIRCUIT_FAILURES,
    WEBHOOK_MAX_ATTEMPTS,
    WEBHOOK_RETRY_JITTER,
    WEBHOOK_SEND_LEASE_SECONDS,
)
from server.db.payload import bulk_request_from_stored
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

T = TypeVar("T")


class WebhookTx(Protocol):
    """One open transaction of either adapter: named statements, bound by name."""

    async def one(self, query: str, /, **values: Any) -> JSON | None: ...
    async def all(self, query: str, /, **values: Any) -> list[JSON]: ...
    async def run(self, query: str, /, **values: Any) -> int: ...


Body = Callable[[WebhookTx], Coroutine[Any, Any, T]]


class WebhookBackend(Protocol):
    """What an adapter gives the webhook operations."""

    async def transaction(self, body: Body[T], *, urgent: bool = False) -> T:
        """Run `body` as one write transaction (`urgent`: a client is waiting)."""
        ...

    async def read_one(self, query: str, /, **values: Any) -> JSON | None: ...
    async def read_all(self, query: str, /, **values: Any) -> list[JSON]: ...
    async def newest_outbox_id(self) -> int:
        """The newest outbox id with no uncommitted id below it."""
        ...


# --- pure decisions -------------------------------------------------------------------------


def retry_delay(failed_attempts: int, base: float) -> float:
    """Seconds before the next attempt after `failed_attempts` failures: base, 2·base, …
    and up to WEBHOOK_RETRY_JITTER of that later, never earlier."""
    step: float = base * 2 ** (failed_attempts - 1)
    return step * (1 + random.random() * WEBHOOK_RETRY_JITTER)  # jitter, not a secret


@dataclass(frozen=True, slots=True)
class AttemptDecision:
    """A delivery's next state after an attempt, and its endpoint's circuit."""

    status: DeliveryStatus
    next_attempt_at: str | None
    consecutive_failures: int
    circuit_open_until: str | None


def attempt_decision(
    *,
    number: int,
    succeeded: bool,
    consecutive_failures: int,
    retry_base: float,
    circuit_cooldown: float,
    now: datetime,
) -> AttemptDecision:
    """After attempt `number`: succeeded, failed for good (the last attempt), or pending
    with a backoff; a failure counts towards the endpoint's circuit, a success closes it."""
    next_attempt_at: str | None = None
    if succeeded:
        status = DeliveryStatus.SUCCEEDED
    elif number >= WEBHOOK_MAX_ATTEMPTS:
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
        next_attempt_at = to_rfc3339(now + timedelta(seconds=retry_delay(number, retry_base)))
    failures = 0 if succeeded else consecutive_failures + 1
    circuit_open_until = None
    if failures >= WEBHOOK_CIRCUIT_FAILURES:
        circuit_open_until = to_rfc3339(now + timedelta(seconds=circuit_cooldown))
    return AttemptDecision(status, next_attempt_at, failures, circuit_open_until)


def _ids_json(ids: Iterable[int]) -> str:
    return orjson.dumps(sorted(ids)).decode()


class _RenderAll(Exception):
    """An unrendered event needs a body after all: undo the dispatch transaction."""


# --- the transaction bodies -------------------------------------------------------------------


async def delete_endpoint(tx: WebhookTx, environment_id: int, endpoint_id: int) -> bool:
    """The endpoint with its deliveries and their attempts."""
    if await tx.one("get_webhook_endpoint", id=endpoint_id, environment_id=environment_id) is None:
        return False
    await tx.run("delete_webhook_attempts_of_endpoint", endpoint_id=endpoint_id)
    await tx.run("delete_webhook_deliveries_of_endpoint", endpoint_id=endpoint_id)
    deleted = await tx.run("delete_webhook_endpoint", id=endpoint_id, environment_id=environment_id)
    return deleted == 1


async def add_deliveries(
    tx: WebhookTx, cursor: int, new: Sequence[NewDelivery], advance_to: int
) -> bool:
    """A delivery per matching endpoint for each new event, and the cursor moved from
    `cursor` to `advance_to`; False (nothing written) if the cursor is no longer `cursor`
    (another round or process dispatched these). Raises _RenderAll (rolling back) if an
    event left unrendered has a matching endpoint now."""
    if await tx.one("get_webhook_cursor") != {"outbox_id": cursor}:
        return False
    now = now_rfc3339()
    for event in new:
        params: dict[str, Any] = {
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
            await tx.run("insert_webhook_deliveries_for_event", **params)
        elif await tx.one("event_has_webhook_endpoint", **params) != {"found": 0}:
            raise _RenderAll
    await tx.run("set_webhook_cursor", outbox_id=advance_to)
    return True


async def lease_deliveries(tx: WebhookTx, ids: Sequence[int]) -> set[int]:
    """Of `ids`, the deliveries still due and unleased, leased to this sender now."""
    now = utc_now()
    lease_until = to_rfc3339(now + timedelta(seconds=WEBHOOK_SEND_LEASE_SECONDS))
    rows = await tx.all(
        "lease_webhook_deliveries",
        ids=_ids_json(ids),
        now=to_rfc3339(now),
        lease_until=lease_until,
    )
    return {int(row["id"]) for row in rows}


async def record_attempt(
    tx: WebhookTx, outcome: AttemptOutcome, *, retry_base: float, circuit_cooldown: float
) -> None:
    """The attempt in the delivery's log, its next state (which ends its lease), and its
    endpoint's circuit. A delivery deleted meanwhile (with its endpoint) is left gone."""
    state = await tx.one("get_webhook_delivery_state", id=outcome.delivery_id)
    if state is None:
        return
    number = int(state["attempt_count"]) + 1
    await tx.run(
        "insert_webhook_attempt",
        delivery_id=outcome.delivery_id,
        number=number,
        at=outcome.at,
        http_status=outcome.http_status,
        error=outcome.error,
        duration_ms=outcome.duration_ms,
    )
    decision = attempt_decision(
        number=number,
        succeeded=outcome.succeeded,
        consecutive_failures=int(state["consecutive_failures"]),
        retry_base=retry_base,
        circuit_cooldown=circuit_cooldown,
        now=utc_now(),
    )
    await tx.run(
        "finish_webhook_attempt",
        id=outcome.delivery_id,
        status=decision.status,
        next_attempt_at=decision.next_attempt_at,
        attempt_count=number,
    )
    await tx.run(
        "set_webhook_circuit",
        id=state["endpoint_id"],
        consecutive_failures=decision.consecutive_failures,
        circuit_open_until=decision.circuit_open_until,
    )


async def redeliver(tx: WebhookTx, endpoint_id: int, delivery_id: int) -> JSON | None:
    """Due now (and its endpoint tried despite the circuit: a manual retry says the
    receiver is back)."""
    row = await tx.one(
        "redeliver_webhook", id=delivery_id, endpoint_id=endpoint_id, now=now_rfc3339()
    )
    if row is not None:
        await tx.run("close_webhook_circuit", id=endpoint_id)
    return row


# --- the port over an adapter -----------------------------------------------------------------


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
            lambda tx: delete_endpoint(tx, environment_id, endpoint_id)
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
                lambda tx: add_deliveries(tx, cursor, new, advance_to)
            )
        except _RenderAll:
            return False

    # --- sending ------------------------------------------------------------------------

    async def due_deliveries(self, in_flight: Iterable[int], limit: int) -> list[DueDelivery]:
        rows = await self.backend.read_all(
            "list_due_webhook_deliveries",
            now=now_rfc3339(),
            in_flight=_ids_json(in_flight),
            limit=limit,
        )
        return [DueDelivery(**row) for row in rows]

    async def lease_deliveries(self, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        return await self.backend.transaction(lambda tx: lease_deliveries(tx, ids))

    async def next_due_at(self, in_flight: Iterable[int]) -> str | None:
        row = await self.backend.read_one("next_webhook_due_at", in_flight=_ids_json(in_flight))
        assert row is not None  # an aggregate always returns one row
        value: str | None = next(iter(row.values()))
        return value

    async def record_attempt(
        self, outcome: AttemptOutcome, *, retry_base: float, circuit_cooldown: float
    ) -> None:
        await self.backend.transaction(
            lambda tx: record_attempt(
                tx, outcome, retry_base=retry_base, circuit_cooldown=circuit_cooldown
            )
        )

    async def redeliver(self, endpoint_id: int, delivery_id: int) -> WebhookDelivery | None:
        row = await self.backend.transaction(
            lambda tx: redeliver(tx, endpoint_id, delivery_id), urgent=True
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
            "list_webhook_attempts", delivery_ids=_ids_json(delivery_ids)
        )
        found: dict[int, list[WebhookAttempt]] = {}
        for row in rows:
            attempt = WebhookAttempt(**row)
            found.setdefault(attempt.delivery_id, []).append(attempt)
        return found
