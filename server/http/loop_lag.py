"""How late the event loop runs: the `bulk_event_loop_lag_seconds` histogram of /metrics.

Every handler, worker batch and event stream of the process shares one event loop. A
step that keeps it busy between two awaits (Python work, a synchronous call that belongs
in a thread) delays everything else that is due meanwhile: that is what an accept's tail
latency is made of. A probe task sleeps LOOP_LAG_PROBE_SECONDS again and again and
records how much later than asked it woke up, the lag any callback due at that moment
suffered.

What the histogram says, read as a sample: a probe is due at moments unrelated to the
work, so the share of probes later than X estimates the share of time the loop was
more than X behind. A stall longer than the interval is always seen; a shorter one
only when a probe falls due inside it. So the counts are samples, not stalls: the
histogram says how often and how long the loop lagged, not how many times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry, Histogram

from server.constants import LOOP_LAG_BUCKETS, LOOP_LAG_PROBE_SECONDS


class LoopLagMonitor:
    """One app's probe task and its histogram, registered in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "bulk_event_loop_lag_seconds",
            f"How late the event loop woke a timer, sampled every {LOOP_LAG_PROBE_SECONDS} s "
            "(the share of samples above a bucket: the share of time the loop was that far "
            "behind)",
            registry=registry,
            buckets=LOOP_LAG_BUCKETS,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._probe(), name="event loop lag probe"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock advances once per loop iteration
        # in whole milliseconds, which would hide the short lags this is for.
        while True:
            asked_at = time.perf_counter()
            await asyncio.sleep(LOOP_LAG_PROBE_SECONDS)
            late = time.perf_counter() - asked_at - LOOP_LAG_PROBE_SECONDS
            self.histogram.observe(max(0.0, late))
