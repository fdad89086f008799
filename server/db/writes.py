"""The port's write operations, once for both adapters: each one transaction body.

A mixin of both adapters (`Store`, `PostgresStorage`): an operation picks its body in
server/db/transactions.py and hands it to the adapter's `transaction`, which runs it as
one transaction of its own kind (SQLite: on the writer thread, in one `BEGIN IMMEDIATE`
hop; PostgreSQL: on one pooled connection). What differs per adapter stays there:
PostgreSQL's `commit_batch` runs again after an external_id another process committed
meanwhile, and only PostgreSQL rescues claims by heartbeat age (`stale_claims_before`).

`urgent`: the operations a client waits on (create, cancel, retry) go before worker and
sweeper transactions on SQLite's one writer (server/db/sqlite/writer.py); PostgreSQL's
pool has no queue to jump.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from server.batches import Batch
from server.clock import now_rfc3339
from server.constants import ATOMIC_PURGE_BATCH
from server.db import transactions
from server.db.port import CancelOutcome, IdempotencyClaim, NewUpload
from server.db.tx_port import Tx
from server.models import BulkRequest
from server.staging import EncodedChunk
from server.types import JSON, Mode, Status

T = TypeVar("T")


class Writes:
    async def transaction(
        self, body: Callable[[Tx], Coroutine[Any, Any, T]], *, urgent: bool = False
    ) -> T:
        """Run a transaction body of transactions.py as one transaction; commit when it
        returns, roll back when it raises; its events go to after-commit once committed."""
        raise NotImplementedError  # the adapter's

    def stale_claims_before(self) -> str | None:
        """The heartbeat time before which any process's claim is an orphan, or None
        when a claim is judged by its worker's liveness alone."""
        raise NotImplementedError  # the adapter's

    async def ensure_environment(self, name: str) -> int:
        return await self.transaction(lambda tx: tx.ensure_environment(name))

    # --- what clients ask for: urgent, the client waits for this commit -----------------

    async def create_records_request(
        self,
        environment_id: int,
        *,
        on_conflict: str,
        mode: Mode = Mode.PARTIAL,
        total_items: int,
        chunks: Sequence[EncodedChunk],
        data_stream_key: str | None,
        claim: IdempotencyClaim | None,
        run_at: datetime | None = None,
    ) -> tuple[BulkRequest, bool]:
        work = partial(
            transactions.create_records_request,
            environment_id=environment_id,
            on_conflict=on_conflict,
            mode=mode,
            total_items=total_items,
            chunks=chunks,
            data_stream_key=data_stream_key,
            claim=claim,
            run_at=run_at,
        )
        # urgent: the client waits for this commit, a worker's next batch can wait 1 ms more.
        return await self.transaction(work, urgent=True)

    async def create_upload_request(
        self, environment_id: int, upload: NewUpload, claim: IdempotencyClaim | None
    ) -> tuple[BulkRequest, bool]:
        work = partial(
            transactions.create_upload_request,
            environment_id=environment_id,
            upload=upload,
            claim=claim,
        )
        return await self.transaction(work, urgent=True)

    async def cancel_request(
        self, environment_id: int, request_id: int
    ) -> tuple[BulkRequest, CancelOutcome] | None:
        work = partial(
            transactions.cancel_request, environment_id=environment_id, request_id=request_id
        )
        return await self.transaction(work, urgent=True)

    async def create_retry(
        self, environment_id: int, request_id: int, claim: IdempotencyClaim | None
    ) -> tuple[BulkRequest, bool] | None:
        work = partial(
            transactions.create_retry,
            environment_id=environment_id,
            request_id=request_id,
            claim=claim,
        )
        return await self.transaction(work, urgent=True)

    # --- the worker side ------------------------------------------------------------------

    async def claim_next_request(
        self, worker: str, *, sliced: frozenset[int] = frozenset()
    ) -> BulkRequest | None:
        return await self.transaction(
            partial(transactions.claim_next_request, worker=worker, sliced=sliced)
        )

    async def commit_batch(self, job: BulkRequest, worker: str, batch: Batch) -> BulkRequest:
        request_id = job.id
        start = batch.start_row
        now = now_rfc3339()
        # Rows are shaped here, before the transaction: SQLite's writer thread then holds
        # the lock only for SQL.
        candidates: list[tuple[Any, ...]] = [
            (*rec, request_id, start + offset, now) for offset, rec in batch.candidates
        ]
        return await self.transaction(
            partial(
                transactions.commit_batch,
                job=job,
                worker=worker,
                batch=batch,
                candidates=candidates,
            )
        )

    async def release_request(self, job: BulkRequest, worker: str) -> None:
        await self.transaction(partial(transactions.release_request, job=job, worker=worker))

    async def finish_request(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> BulkRequest:
        work = partial(
            transactions.finish_request,
            job=job,
            worker=worker,
            status=status,
            error_message=error_message,
            error_details=error_details,
            keep_upload=keep_upload,
        )
        return await self.transaction(work)

    async def record_parse_progress(
        self, job: BulkRequest, worker: str, chunk: EncodedChunk, total_items: int
    ) -> BulkRequest:
        work = partial(
            transactions.record_parse_progress,
            job=job,
            worker=worker,
            chunk=chunk,
            total_items=total_items,
        )
        return await self.transaction(work)

    async def finish_parsing(
        self,
        job: BulkRequest,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequest:
        work = partial(
            transactions.finish_parsing,
            job=job,
            worker=worker,
            total_items=total_items,
            data_stream_id=data_stream_id,
            error_details=error_details,
        )
        return await self.transaction(work)

    async def discard_staged_rows(self, request_id: int) -> None:
        await self.transaction(lambda tx: tx.delete_chunks(request_id))

    async def requeue_orphans(self, live_workers: Iterable[str], reason: str) -> list[int]:
        live = list(live_workers)
        return await self.transaction(
            partial(
                transactions.requeue_orphans,
                live_workers=live,
                reason=reason,
                stale_before=self.stale_claims_before(),
            )
        )

    # --- sweeps -----------------------------------------------------------------------------

    async def delete_expired_idempotency_keys(self) -> int:
        return await self.transaction(lambda tx: tx.delete_expired_idempotency_keys())

    async def prune_outbox(self) -> int:
        return await self.transaction(lambda tx: tx.delete_old_outbox_events())

    async def purge_hidden_records(self) -> int | None:
        return await self.transaction(
            partial(transactions.purge_hidden_records, limit=ATOMIC_PURGE_BATCH)
        )
