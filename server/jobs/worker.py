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
from collections.abc import Sequence

from server.batches import checked_batch, stream_keys_of, validate_batch, validated_batch
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
from server.ingest.fast_records import decode_fast_body, every_record, stream_keys
from server.ingest.validation import StreamRef
from server.jobs.accept_gate import AcceptGate
from server.jobs.parsing import parse_upload, remove_unreferenced_uploads
from server.models import BulkRequest
from server.staging import CheckedRows, RawBody, StagedItem, ValidatedRows, precise_items
from server.types import JSON, Status

log = logging.getLogger("server.worker")


ChunkRows = list[StagedItem] | ValidatedRows | CheckedRows


def _row_count(rows: ChunkRows) -> int:
    if isinstance(rows, list):
        return len(rows)
    return len(rows.records) if isinstance(rows, ValidatedRows) else len(rows.rows)


class WorkerPool:
    def __init__(self, store: Storage, settings: Settings) -> None:
        self.store = store
        self.settings = settings
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
        streams: dict[str, StreamRef] = {}
        chunk: tuple[int, ChunkRows] | None = None
        while job.status == "processing":
            # Before the cancel check, so a cancel that arrives meanwhile is seen now.
            await self.accepts.turn()
            if self.should_cancel(job):
                await self.finish(job, worker, Status.CANCELLED)
                return
            if self._stopping or (
                loop.time() >= slice_ends and await self.store.has_runnable_request()
            ):
                await self._release(job, worker)
                return
            start = job.next_row
            if chunk is None or not chunk[0] <= start < chunk[0] + _row_count(chunk[1]):
                chunk = await self._load_chunk(job, start, streams)
            first_row, rows = chunk
            end = min(
                start + self.settings.batch_size, first_row + _row_count(rows), job.total_items
            )
            if isinstance(rows, list):
                items = rows[start - first_row : end - first_row]
                await self._resolve_streams(job.environment_id, items, streams)
                batch = validate_batch(start, items, streams)
            elif isinstance(rows, ValidatedRows):
                await self._check_streams(job, rows.streams, streams)
                batch = validated_batch(
                    start, rows.records[start - first_row : end - first_row], rows.streams
                )
            else:
                await self._check_streams(job, rows.streams, streams)
                part = rows.rows[start - first_row : end - first_row]
                await self._resolve_streams(
                    job.environment_id, [row for row in part if isinstance(row, list)], streams
                )
                batch = checked_batch(
                    start,
                    part,
                    rows.lines[start - first_row : end - first_row],
                    rows.streams,
                    streams,
                )
            job = await self.store.commit_batch(job, worker, batch)
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

    async def _load_chunk(
        self, job: BulkRequest, row: int, streams: dict[str, StreamRef]
    ) -> tuple[int, ChunkRows]:
        found = await self.store.get_chunk_at(job.id, row)
        if found is None or row >= found.first_row + found.row_count:
            raise RuntimeError(f"staged rows of bulk request {job.id} are missing at row {row}")
        rows = found.rows()
        if isinstance(rows, RawBody):
            return found.first_row, await self._finish_raw_body(job, rows.text, streams)
        return found.first_row, rows

    async def _finish_raw_body(
        self, job: BulkRequest, text: bytes, streams: dict[str, StreamRef]
    ) -> list[StagedItem] | ValidatedRows:
        """A body the accept staged raw: its records when the fast proof holds for every
        row against the environment's streams now, else its rows staged the precise
        way, which the worker validates as any JSON chunk (so each row error is worded
        as the precise path words it, and an unknown stream is asked again per batch)."""
        decoded = decode_fast_body(text)
        if decoded is not None:
            keys = stream_keys(decoded)
            missing = keys - streams.keys()
            if missing:
                streams.update(await self.store.find_data_streams(job.environment_id, missing))
            records = every_record(decoded, streams)
            if records is not None:
                return ValidatedRows({key: streams[key] for key in keys}, records)
        return precise_items(text)

    async def _check_streams(
        self, job: BulkRequest, proved: dict[str, StreamRef], streams: dict[str, StreamRef]
    ) -> None:
        """Before a batch of rows the accept validated (decoded and bound, not validated
        again): the streams they were proved against must be this environment's as they
        are now. Streams never change, so this guards against a chunk that is not what it
        claims; found streams are cached for the claim, so it costs a dict compare."""
        if job.on_conflict != "skip":
            # Validated rows are staged for on_conflict=skip only (they keep no source
            # for a duplicate_external_id row error), and retries keep on_conflict.
            raise RuntimeError(f"bulk request {job.id} has validated rows but on_conflict=error")
        missing = proved.keys() - streams.keys()
        if missing:
            streams.update(await self.store.find_data_streams(job.environment_id, missing))
        for key, ref in proved.items():
            if streams.get(key) != ref:
                raise RuntimeError(
                    f"bulk request {job.id}: data stream {key!r} is not what its rows were "
                    "validated against"
                )

    async def _resolve_streams(
        self, environment_id: int, items: Sequence[StagedItem], streams: dict[str, StreamRef]
    ) -> None:
        # Streams never disappear, so found ones are cached for the whole claim; unknown
        # keys are asked again each batch in case the stream was created meanwhile.
        missing = stream_keys_of(items) - streams.keys()
        if missing:
            streams.update(await self.store.find_data_streams(environment_id, missing))

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
