"""In-process publish/subscribe of bulk-request changes, and the job-transition log.

Each committed change of a request is published here by the one after-commit step
(server/outcomes.py), in commit order; event streams subscribe to one request or to a
whole environment. Nobody polls the database per connected client: a stream reads one
snapshot when it connects, then only listens.

Every published row is ordered by `progress_version`, a tuple that only grows over a
request's life. It is the SSE event id (so `Last-Event-ID` means "I have this state"),
and it lets a subscriber keep only the newest row when several arrive between two sends:
a slow reader never holds more than one row per request, and the terminal row, which
has the highest version a request can reach, can never be replaced by an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from server.ids import parse_stored_int
from server.models import BulkRequest
from server.types import TERMINAL_STATUSES

# (status rank, progress, recoveries, cancellation requested). Each part only grows while
# the ones before it stay equal, so tuple order is the order of the states a client sees.
Version = tuple[int, int, int, int]
NO_VERSION: Version = (-1, -1, -1, -1)


def progress_version(row: BulkRequest) -> Version:
    status = row.status
    if status in TERMINAL_STATUSES:
        rank = 3
    elif status == "processing":
        rank = 1 if row.parsing else 2
    else:
        rank = 0
    # While an upload parses, its progress is the rows staged so far (total_items grows);
    # afterwards it is processed_items. The rank separates the two scales.
    progress = row.total_items if rank == 1 else row.processed_items
    cancel = 1 if row.cancellation_requested_at else 0
    return rank, progress, row.recoveries, cancel


def format_event_id(version: Version) -> str:
    return ".".join(str(part) for part in version)


def parse_event_id(text: str | None) -> Version:
    """The version a client says it has; NO_VERSION for anything we did not issue."""
    if not text:
        return NO_VERSION
    numbers = [parse_stored_int(part) for part in text.strip().split(".")]
    if len(numbers) != 4:
        return NO_VERSION
    a, b, c, d = numbers
    if a is None or b is None or c is None or d is None:
        return NO_VERSION
    return a, b, c, d


class Subscription:
    """One stream's mailbox: the newest unsent row per request, and a wake-up."""

    def __init__(self, request_id: int | None, environment_id: int | None) -> None:
        self.request_id = request_id
        self.environment_id = environment_id
        self._pending: dict[int, BulkRequest] = {}
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def offer(self, row: BulkRequest) -> None:
        held = self._pending.get(row.id)
        # Publishes follow commit order, but a snapshot read at connect (or after a
        # requeue) may be older than a row already here: keep the newer one.
        if held is None or progress_version(row) >= progress_version(held):
            self._pending[row.id] = row
            self._changed.set()

    def take(self) -> list[BulkRequest]:
        rows = list(self._pending.values())
        self._pending.clear()
        self._changed.clear()
        return rows

    async def wait(self, seconds: float) -> bool:
        """True when rows are waiting (or the subscription closed); False after `seconds`."""
        if self._changed.is_set() or self.closed:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)
        return self._changed.is_set() or self.closed

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the subscription is closed (shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    def close(self) -> None:
        self._closed.set()
        self._changed.set()


class ProgressHub:
    def __init__(self) -> None:
        self._by_request: dict[int, set[Subscription]] = defaultdict(set)
        self._by_environment: dict[int, set[Subscription]] = defaultdict(set)
        self._closed = False
        # data_stream_id → key. Rows published by workers come from `RETURNING *` and
        # lack the joined key; keys never change, so one lookup per stream suffices.
        self.stream_keys: dict[int, str] = {}

    def publish(self, row: BulkRequest) -> None:
        key = row.data_stream_key
        if key is not None and row.data_stream_id is not None:
            self.stream_keys[row.data_stream_id] = key
        for sub in self._by_request.get(row.id, ()):
            sub.offer(row)
        environment_id = row.environment_id
        if environment_id is not None:
            for sub in self._by_environment.get(environment_id, ()):
                sub.offer(row)

    @contextlib.contextmanager
    def subscribe(
        self, *, request_id: int | None = None, environment_id: int | None = None
    ) -> Iterator[Subscription]:
        """Exactly one of request_id (one request) or environment_id (all of its requests)."""
        if (request_id is None) == (environment_id is None):
            raise ValueError("subscribe to a request or to an environment, not both")
        sub = Subscription(request_id, environment_id)
        if request_id is not None:
            registry, scope = self._by_request, request_id
        else:
            assert environment_id is not None
            registry, scope = self._by_environment, environment_id
        registry[scope].add(sub)
        if self._closed:
            sub.close()  # shutting down: the stream ends as soon as it starts
        try:
            yield sub
        finally:
            sub.close()
            members = registry.get(scope)
            if members is not None:
                members.discard(sub)
                if not members:
                    del registry[scope]

    def close_all(self) -> None:
        """Shutdown: every open stream ends, so aiohttp need not wait for its handler."""
        self._closed = True
        for registry in (self._by_request, self._by_environment):
            for members in registry.values():
                for sub in members:
                    sub.close()

    def subscriber_count(self, scope: str | None = None) -> int:
        """Open subscriptions: all, or only "request" or "environment" ones."""
        total = 0
        if scope in (None, "request"):
            total += sum(len(s) for s in self._by_request.values())
        if scope in (None, "environment"):
            total += sum(len(s) for s in self._by_environment.values())
        return total


def log_transition(
    logger: logging.Logger,
    transition: str,
    row: BulkRequest,
    *,
    level: int = logging.INFO,
    **extra: Any,
) -> None:
    """One compact JSON log line per job transition: claimed, resumed, parsed,
    completed, failed, cancelled, requeued. Rows hold no secrets (keys live elsewhere)."""
    logger.log(
        level,
        "bulk request %s %s",
        row.id,
        transition,
        extra={
            "event": f"bulk_request.{transition}",
            "bulk_request_id": row.id,
            "environment_id": row.environment_id,
            "status": row.status,
            "attempt": row.attempt,
            "total": row.total_items,
            "processed": row.processed_items,
            "successful": row.successful_items,
            "failed": row.failed_items,
            "skipped": row.skipped_items,
            "recoveries": row.recoveries,
            **extra,
        },
    )
