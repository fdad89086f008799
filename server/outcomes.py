"""What a write transaction changed, and the one place that acts on it after the commit.

A storage operation that changes a bulk request's state emits a `RequestChanged` (in the
SQLite adapter, `tx.emit(row, Transition…)`, server/db/sqlite/tx.py): that writes the
event into the `outbox` table in the same transaction, so an event exists if and only
if its change was committed. When the transaction has committed, the storage hands the
events it produced, in order, to `AfterCommit.apply`, the only code that publishes to
the in-process hub, wakes the worker pool and logs job transitions. No write path has
to remember those steps, and none can forget one.

Every event goes to the outbox, heartbeats included: one small insert per batch measured
within noise of the benchmark (README, "After a commit: events and the outbox"). Nothing
reads the outbox but the webhook dispatcher (server/webhooks/), nudged from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.events import ProgressHub, log_transition
from server.models import BulkRequest
from server.types import Mode, Status

log = logging.getLogger("server.worker")


class Transition(StrEnum):
    """The event type of a state change, as stored in `outbox.event_type`."""

    # Submitted records, an upload, or a retry: runnable now, or at its run_at (SPEC §12)
    CREATED = "created"
    CLAIMED = "claimed"  # a worker took it (first attempt)
    RESUMED = "resumed"  # a worker took it again (later attempt)
    PARSE_PROGRESS = "parse_progress"  # a block of an upload was staged
    PARSED = "parsed"  # the upload is fully staged; processing follows
    PROGRESS = "progress"  # a batch committed (the heartbeat)
    RELEASED = "released"  # given back after a time slice: runnable again
    REQUEUED = "requeued"  # its worker was gone: runnable again from its checkpoint
    CANCEL_REQUESTED = "cancel_requested"  # the holder stops at its next heartbeat
    # A failed or cancelled atomic request's hidden records are all deleted (SPEC §14):
    # a retry of it, which waited for that, is runnable now.
    RECORDS_PURGED = "records_purged"
    COMPLETED = Status.COMPLETED.value
    FAILED = Status.FAILED.value
    CANCELLED = Status.CANCELLED.value


# After these, a worker can claim something it could not before, or (a new schedule)
# must sleep less long: woken idle workers claim, then ask the storage for the next run_at;
# a purge lets the retry of an atomic request that waited for it run.
MAKES_WORK_RUNNABLE = frozenset(
    {Transition.CREATED, Transition.RELEASED, Transition.REQUEUED, Transition.RECORDS_PURGED}
)
# The transitions webhooks are sent for (SPEC §13: a bulk request reached a final state).
WEBHOOK_EVENTS = frozenset({Transition.COMPLETED, Transition.FAILED, Transition.CANCELLED})
# Scheduling only: the client-visible state (and its progress version) is unchanged, so
# streams are not sent it.
INVISIBLE = frozenset({Transition.RELEASED, Transition.RECORDS_PURGED})
# The job transitions with a log line each (README, "Live progress, metrics and logs").
# Not one per batch: the terminal line has the totals. Creations and cancellation
# requests are API calls, in the access log.
LOGGED = frozenset(
    {
        Transition.CLAIMED,
        Transition.RESUMED,
        Transition.PARSED,
        Transition.REQUEUED,
        Transition.COMPLETED,
        Transition.FAILED,
        Transition.CANCELLED,
    }
)


# An atomic request that ends so has hidden records to purge.
LEAVES_HIDDEN_RECORDS = frozenset({Transition.FAILED, Transition.CANCELLED})


def terminal_transition(status: str) -> Transition:
    return Transition(Status(status).value)


@dataclass(frozen=True, slots=True)
class RequestChanged:
    """One committed change of one bulk request: its row as the transaction left it."""

    row: BulkRequest
    transition: Transition
    log_level: int = logging.INFO
    # Context for the transition's log line only (worker, reason, error…); not stored.
    log_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> int:
        return self.row.id


class AfterCommit:
    """Applies a committed transaction's events: the only caller of hub.publish,
    the pool's wake-up and the transition log. Owned by the app, given to the store."""

    def __init__(
        self,
        hub: ProgressHub,
        wake: Callable[[], None],
        notify_cancel_requested: Callable[[int], None],
        purge_soon: Callable[[], None] = lambda: None,
        deliver_webhooks: Callable[[], None] = lambda: None,
    ) -> None:
        self._hub = hub
        self._wake = wake
        self._notify_cancel_requested = notify_cancel_requested
        self._purge_soon = purge_soon
        # Nudges the webhook dispatcher (server/webhooks/), which reads the outbox itself.
        self._deliver_webhooks = deliver_webhooks

    def apply(self, events: Sequence[RequestChanged]) -> None:
        runnable = False
        notify = False
        for event in events:
            if event.transition in LOGGED:
                log_transition(
                    log, event.transition, event.row, level=event.log_level, **event.log_fields
                )
            if event.transition not in INVISIBLE:
                # In commit order: streams see the states in the order they happened.
                self._hub.publish(event.row)
            if event.transition is Transition.CANCEL_REQUESTED:
                self._notify_cancel_requested(event.request_id)
            runnable = runnable or event.transition in MAKES_WORK_RUNNABLE
            notify = notify or event.transition in WEBHOOK_EVENTS
            if event.transition in LEAVES_HIDDEN_RECORDS and event.row.mode == Mode.ATOMIC:
                # SPEC §14: its records stay hidden until purged; purge them now rather
                # than at the next sweep (a retry of it waits for that).
                self._purge_soon()
        if runnable:
            self._wake()
        if notify:
            self._deliver_webhooks()
