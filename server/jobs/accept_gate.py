"""Accepts before worker batches on the event loop, with a starvation bound.

Accepting a bulk POST and processing a worker batch share one event loop and one GIL:
an accept that arrives while a worker runs a batch's Python (decode, bind) waits for all
of it. So a worker about to start a batch first waits while accepts are in flight, but
never longer than ACCEPT_PRIORITY_MAX_WAIT_SECONDS per batch: during a flood of POSTs
every worker still commits a batch at least that often, so draining never stops and a
small request submitted meanwhile still completes promptly (SPEC §9 fairness).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from server.constants import ACCEPT_PRIORITY_MAX_WAIT_SECONDS


class AcceptGate:
    def __init__(self, max_wait: float = ACCEPT_PRIORITY_MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Batches that waited, and how many of those were let through by the bound while
        # accepts were still in flight (in /metrics: bulk_accept_priority_*_total).
        self.waits_total = 0
        self.bound_hits_total = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        """Around one accept (a bulk POST, from reading its body to its response)."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def turn(self) -> None:
        """Before a worker batch: returns once no accept is in flight, or after
        max_wait, whichever comes first."""
        if self._in_flight == 0:
            return
        self.waits_total += 1
        try:
            await asyncio.wait_for(self._idle.wait(), self.max_wait)
        except TimeoutError:
            self.bound_hits_total += 1
