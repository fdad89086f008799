"""The webhook operations' transaction bodies (server/db/webhook_port.py), written once
for both adapters.

Each write is an `async def` transaction body over `WebhookTx`, a transaction that runs
named statements (the twin queries.sql files give each name its dialect). PostgreSQL
awaits a body inside one asyncpg transaction; SQLite runs it on its writer thread through
server/db/drive.py's `run_to_completion`, over a transaction whose coroutines never
suspend. `Webhooks` (server/db/webhook_operations.py) implements the port with these
over an adapter's `WebhookBackend`: how it runs a transaction and a read, and how it
finds the newest outbox id that is safe to dispatch up to (the one thing the backends do
differently: see their `newest_outbox_id`).

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
from server.db.webhook_port import NewDelivery
from server.models import AttemptOutcome, DeliveryStatus
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


def ids_json(ids: Iterable[int]) -> str:
    return orjson.dumps(sorted(ids)).decode()


class RenderAll(Exception):
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
    (another round or process dispatched these). Raises RenderAll (rolling back) if an
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
            raise RenderAll
    await tx.run("set_webhook_cursor", outbox_id=advance_to)
    return True


async def lease_deliveries(tx: WebhookTx, ids: Sequence[int]) -> set[int]:
    """Of `ids`, the deliveries still due and unleased, leased to this sender now."""
    now = utc_now()
    lease_until = to_rfc3339(now + timedelta(seconds=WEBHOOK_SEND_LEASE_SECONDS))
    rows = await tx.all(
        "lease_webhook_deliveries",
        ids=ids_json(ids),
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
