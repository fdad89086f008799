"""In-process publish/subscribe of bulk-request changes.

Workers and API operations publish the request row after each commit; event streams
subscribe per request. Nobody polls the database per connected client.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from server.types import JSON

# A subscriber that falls behind only needs the latest state: older ones are dropped.
SUBSCRIBER_QUEUE_SIZE = 16


class ProgressHub:
    def __init__(self) -> None:
        self._subscribers: dict[int, set[asyncio.Queue[JSON]]] = defaultdict(set)

    def publish(self, row: JSON) -> None:
        for queue in self._subscribers.get(row["id"], ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(row)

    @contextmanager
    def subscribe(self, request_id: int) -> Iterator[asyncio.Queue[JSON]]:
        queue: asyncio.Queue[JSON] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self._subscribers[request_id].add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(request_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[request_id]

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
