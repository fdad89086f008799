"""The in-process worker pool: claim, process in batches, heartbeat, cancel, recover.

Scheduling: runnable requests are claimed oldest `queued_at` first. A worker that has
held one request for a time slice, while another request waits, gives it back and it
goes to the back of the line (its status stays `processing`). That is round-robin
between large requests, and a small request never waits for a large one to finish.

Crash safety: the checkpoint (`next_row`) moves in the same transaction as the rows it
covers, and every worker write is fenced by the claim (`attempt`, `claimed_by`), so a
restarted or requeued request resumes exactly where its last committed batch ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from server.batches import (
    Batch,
)
from server.clock import utc_now
from server.config import Settings
from server.constants import (
    CLAIM_RETRY_SECONDS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_REMEMBERED_SLICED_IDS,
    OUTBOX_PRUNE_BATCH,
    SCHEDULE_WAKE_MARGIN_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    WORKER_IDLE_POLL_SECONDS,
)
from server.db.port import FencedOut, Storage
from server.jobs.accept_gate import AcceptGate
from server.jobs.batch_source import ClaimBatches
from server.jobs.parsing import parse_upload, remove_unreferenced_uploads
from server.models import BulkRequest
from server.stream_cache import StreamCache
from server.types import JSON, Status

log = logging.getLogger("server.worker")


class WorkerPool:
    def __init__(
        self, store: Storage, settings: Settings, streams: StreamCache | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        # The data streams the batches name; the app shares its accepts' cache.
        self.streams = streams if streams is not None else StreamCache()
        # A fresh id per process start tells this process's claims from a dead one's.
        self.boot_id = secrets.token_hex(4)
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_event = asyncio.Event()
        # Set to run the sweeper now: an atomic request ended with records to purge, or
        # the pool is stopping.
        self._sweep_now = asyncio.Event()
        self._live: set[str] = set()
        self._busy: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancel_requested: set[int] = set()
        # Given back after a time slice: their next claim is routine, logged at DEBUG.
        self._sliced: set[int] = set()
        self.recovered_total = 0
        # Claim transactions run, found work or not (/metrics): shows that idle workers
        # sleep until the next run_at instead of polling.
        self.claim_attempts_total = 0
        # Bulk POSTs being accepted go before worker batches, within a bound.
        self.accepts = AcceptGate()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # On SQLite only one server process uses a database (the adapter holds it
        # exclusively), so every claim still recorded now belongs to a process that is
        # gone: resume them all. On PostgreSQL the adapter resumes only claims whose
        # heartbeat is past the timeout: the others are live processes' work.
        await remove_unreferenced_uploads(self.store)
        recovered = await self.requeue_orphans("process restarted")
        if recovered:
            log.warning("resuming %d interrupted bulk request(s): %s", len(recovered), recovered)
        for n in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker_loop(n), name=f"worker-{n}"))
        self._tasks.append(asyncio.create_task(self._sweeper_loop(), name="sweeper"))

    async def stop(self) -> None:
        """Let each worker finish its current batch, then return (requests stay resumable)."""
        self._stopping = True
        self._stop_event.set()
        self._sweep_now.set()
        self._wake.set()
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=SHUTDOWN_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def wake(self) -> None:
        """New work was committed: idle workers claim it now instead of polling (or, for
        a new schedule, sleep until its run_at if that is the earliest).
        Called by server/outcomes.py AfterCommit only, after the commit that made it."""
        self._wake.set()

    def notify_cancel_requested(self, request_id: int) -> None:
        """Fast path: the holder stops before its next batch instead of after it."""
        self._cancel_requested.add(request_id)

    @property
    def worker_count(self) -> int:
        return len(self._live)

    @property
    def busy_count(self) -> int:
        return len(self._busy)

    async def requeue_orphans(self, reason: str) -> list[int]:
        ids = await self.store.requeue_orphans(set(self._live), reason)
        self.recovered_total += len(ids)
        return ids

    # --- loops ---------------------------------------------------------------------------

    async def _sweeper_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), self.settings.sweep_interval)
            if self._stopping:
                return
            self._sweep_now.clear()
            try:
                ids = await self.requeue_orphans("worker gone")
                if ids:
                    log.warning("requeued orphaned bulk request(s) %s", ids)
                await self.store.delete_expired_idempotency_keys()
                await self._prune_outbox()
                await self._purge_hidden_records()
            except Exception:
                log.exception("sweeper pass failed; trying again next interval")

    async def _prune_outbox(self) -> None:
        """Delete outbox events past their retention, a bounded batch per transaction
        so a backlog never holds the writer long."""
        while not self._stopping:
            deleted = await self.store.prune_outbox()
            if deleted < OUTBOX_PRUNE_BATCH:
                return

    async def _purge_hidden_records(self) -> None:
        """Delete the hidden records of failed and cancelled atomic requests (SPEC §14),
        ATOMIC_PURGE_BATCH per transaction, so a purge never holds the writer long."""
        while not self._stopping and await self.store.purge_hidden_records() is not None:
            pass

    def purge_soon(self) -> None:
        """An atomic request failed or was cancelled: sweep now, purging its hidden
        records. Called by server/outcomes.py AfterCommit only, after that commit."""
        self._sweep_now.set()

    async def _worker_loop(self, n: int) -> None:
        worker = self._new_worker_id(n)
        try:
            while not self._stopping:
                try:
                    self.claim_attempts_total += 1
                    job = await self.store.claim_next_request(
                        worker, sliced=frozenset(self._sliced)
                    )
                    idle_for = await self._idle_timeout() if job is None else 0.0
                except Exception:
                    log.exception("claiming failed; retrying")
                    await asyncio.sleep(CLAIM_RETRY_SECONDS)
                    continue
                if job is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), idle_for)
                    if not self._stopping:  # once stopping, the event stays set for all
                        self._wake.clear()
                    continue
                self._busy.add(worker)
                try:
                    await self._run(job, worker)
                except FencedOut as exc:
                    log.warning("%s", exc)
                except Exception as exc:
                    if not await self._fail(job, worker, exc):
                        # Could not even record the failure: give up this identity so the
                        # sweeper sees the claim as orphaned and requeues it.
                        self._live.discard(worker)
                        worker = self._new_worker_id(n)
                finally:
                    self._busy.discard(worker)
        finally:
            self._live.discard(worker)

    async def _idle_timeout(self) -> float:
        """How long an idle worker sleeps: until the earliest scheduled request is due
        (SPEC §12), at most WORKER_IDLE_POLL_SECONDS. A new submission, a new schedule
        included, wakes it sooner (`wake`), and it asks again."""
        due = await self.store.next_run_at()
        if due is None:
            return WORKER_IDLE_POLL_SECONDS
        until_due = (due - utc_now()).total_seconds() + SCHEDULE_WAKE_MARGIN_SECONDS
        return min(WORKER_IDLE_POLL_SECONDS, max(0.0, until_due))

    def _new_worker_id(self, n: int) -> str:
        worker = f"{self.boot_id}:{n}:{secrets.token_hex(2)}"
        self._live.add(worker)
        return worker

    # --- one claim -------------------------------------------------------------------------

    async def _run(self, job: BulkRequest, worker: str) -> None:
        self._sliced.discard(job.id)
        loop = asyncio.get_running_loop()
        slice_ends = loop.time() + self.settings.time_slice
        if job.parsing:
            parsed = await parse_upload(self, job, worker)
            if parsed is None:
                return
            job = parsed
        batches = ClaimBatches(self.store, job, self.settings.batch_size, self.streams)
        # Pipelined: while the writer commits batch N, the next batch is decoded and
        # validated here (Python, on the loop; the INSERT runs in C without the GIL).
        # At most one commit is in flight, so the checks below still come between two
        # commits; a prepared batch the commit's outcome makes moot is dropped unsent.
        ahead: Batch | BaseException | None = None
        # Whether another request waits once the time slice is over: asked while the
        # commit before runs (a reader query), so it never holds the writer idle.
        others_wait = False
        while job.status == "processing":
            # Before the cancel check, so a cancel that arrives meanwhile is seen now.
            await self.accepts.turn()
            if self.should_cancel(job):
                await self.finish(job, worker, Status.CANCELLED)
                return
            if self._stopping or others_wait:
                await self._release(job, worker)
                return
            if isinstance(ahead, BaseException):
                raise ahead  # where the batch would have been prepared unpipelined
            if ahead is not None and ahead.start_row == job.next_row:
                batch = ahead
            else:
                batch = await batches.at(job.next_row)
            ahead = None
            commit = asyncio.ensure_future(self.store.commit_batch(job, worker, batch))
            following = batch.start_row + len(batch.items)
            waiting = None
            if following < job.total_items:
                if loop.time() >= slice_ends:
                    # On a reader connection, beside the commit on the writer.
                    waiting = asyncio.ensure_future(self.store.has_runnable_request())
                try:
                    # One turn of the loop first: the commit shapes its rows and hands the
                    # transaction to the writer, which then works while this prepares.
                    await asyncio.sleep(0)
                    ahead = await batches.at(following)
                except Exception as exc:  # raised after the commit, if still relevant
                    ahead = exc
                except BaseException:
                    # Cancelled (a shutdown past its grace): as unpipelined, the commit
                    # completes or not on its own; nobody waits for its outcome.
                    commit.cancel()
                    if waiting is not None:
                        waiting.cancel()
                    raise
            try:
                job = await commit
            except BaseException:
                if waiting is not None:
                    waiting.cancel()
                raise
            others_wait = await waiting if waiting is not None else False
            if self.settings.batch_pause and job.status == "processing":
                await self._pause_between_batches()
        self._cancel_requested.discard(job.id)

    async def _pause_between_batches(self) -> None:
        # Between heartbeats, so a cancel or a shutdown meanwhile is seen right after it;
        # a shutdown cuts it short.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), self.settings.batch_pause)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def should_cancel(self, job: BulkRequest) -> bool:
        return job.id in self._cancel_requested or job.cancellation_requested_at is not None

    async def _release(self, job: BulkRequest, worker: str) -> None:
        if len(self._sliced) > MAX_REMEMBERED_SLICED_IDS:
            self._sliced.clear()
        # Before the release commits: the wake-up it causes may claim the request at once.
        self._sliced.add(job.id)
        await self.store.release_request(job, worker)

    async def finish(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> BulkRequest:
        row = await self.store.finish_request(
            job,
            worker,
            status,
            error_message=error_message,
            error_details=error_details,
            keep_upload=keep_upload,
        )
        self._cancel_requested.discard(job.id)
        return row

    async def _fail(self, job: BulkRequest, worker: str, exc: Exception) -> bool:
        log.error("bulk request %s failed", job.id, exc_info=exc)
        try:
            await self.finish(
                job,
                worker,
                Status.FAILED,
                error_message=f"internal error while processing: {type(exc).__name__}",
                error_details={
                    "exception": type(exc).__name__,
                    "message": str(exc)[:MAX_ERROR_MESSAGE_CHARS],
                },
            )
        except FencedOut:
            return True
        except Exception:
            log.exception("could not mark bulk request %s failed", job.id)
            return False
        return True
