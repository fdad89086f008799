"""`AsyncWriteTx`: a `WriteTx` seen as the port's `Tx` (server/db/tx_port.py).

The shared transaction bodies (server/db/transactions.py) are coroutines of a `Tx`. On
SQLite they run on the writer thread, which has no event loop: each method here is an
`async def` that calls the synchronous WriteTx method and returns, never suspending, so
server/db/drive.py's `run_to_completion` takes the body's value on its first step
(`Store.transaction`). WriteTx itself stays synchronous: the webhook tables, the API-key and stream
writes in store.py and the tests call it directly.

The steps only PostgreSQL needs (locks, the second look for reserved external_ids,
completing a stored upload, rescue by heartbeat age) do nothing here: this process's one
writer already runs every transaction after the other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from server.chains import RowRun
from server.db.sqlite.tx import WriteTx
from server.models import BulkRequest, DataStream
from server.outcomes import RequestChanged, Transition
from server.types import JSON, Status


class AsyncWriteTx:
    __slots__ = ("_tx",)

    def __init__(self, tx: WriteTx) -> None:
        self._tx = tx

    # --- what only PostgreSQL needs: nothing to do behind one writer ------------------

    async def lock_idempotency_key(self, environment_id: int, key: str) -> None:
        """No other transaction runs until this one ends."""

    async def lock_request(self, request_id: int) -> None:
        """No other transaction runs until this one ends."""

    async def complete_upload(self, name: str) -> bool:
        """An upload is a file beside the database, complete once FileUploadSink renamed it
        into place; nothing is stored to mark."""
        return True

    async def find_reserved_external_ids_again(
        self, request_id: int, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        """Nothing else wrote since `find_reserved_external_ids` looked."""
        return set()

    async def requeue_orphaned_claims(
        self, live_workers: Sequence[str], reason: str, stale_before: str | None
    ) -> list[int]:
        # This process holds the database's flock: a claim no live worker holds is an
        # orphan whatever its heartbeat, so `stale_before` adds nothing.
        return self._tx.requeue_orphans(live_workers, reason)

    # --- the named statements of WriteTx -----------------------------------------------

    async def emit(
        self,
        row: BulkRequest,
        transition: Transition,
        *,
        log_level: int = logging.INFO,
        **log_fields: Any,
    ) -> RequestChanged:
        return self._tx.emit(row, transition, log_level=log_level, **log_fields)

    async def delete_old_outbox_events(self) -> int:
        return self._tx.delete_old_outbox_events()

    async def ensure_environment(self, name: str) -> int:
        return self._tx.ensure_environment(name)

    async def delete_expired_idempotency_keys(self) -> int:
        return self._tx.delete_expired_idempotency_keys()

    async def get_data_stream(self, environment_id: int, key: str) -> DataStream | None:
        return self._tx.get_data_stream(environment_id, key)

    async def get_idempotency_key(self, environment_id: int, key: str) -> JSON | None:
        return self._tx.get_idempotency_key(environment_id, key)

    async def save_idempotency_key(
        self, environment_id: int, key: str, fingerprint: str, request_id: int
    ) -> None:
        self._tx.save_idempotency_key(environment_id, key, fingerprint, request_id)

    async def insert_bulk_request(self, **fields: Any) -> BulkRequest:
        return self._tx.insert_bulk_request(**fields)

    async def get_bulk_request(self, environment_id: int, request_id: int) -> BulkRequest | None:
        return self._tx.get_bulk_request(environment_id, request_id)

    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None:
        return self._tx.get_bulk_request_any_environment(request_id)

    async def insert_chunk(
        self, request_id: int, first_row: int, row_count: int, body: bytes
    ) -> None:
        self._tx.insert_chunk(request_id, first_row, row_count, body)

    async def next_chunk_from(self, request_id: int, row: int) -> JSON | None:
        return self._tx.next_chunk_from(request_id, row)

    async def set_total_items(self, request_id: int, total_items: int) -> None:
        self._tx.set_total_items(request_id, total_items)

    async def delete_chunks(self, request_id: int) -> None:
        self._tx.delete_chunks(request_id)

    async def list_chain(self, environment_id: int, request_id: int) -> list[BulkRequest]:
        return self._tx.list_chain(environment_id, request_id)

    async def row_error_rows(self, request_id: int) -> list[int]:
        return self._tx.row_error_rows(request_id)

    async def retry_row_runs(self, request_id: int) -> list[RowRun]:
        return self._tx.retry_row_runs(request_id)

    async def insert_retry_row_runs(self, request_id: int, runs: Sequence[RowRun]) -> None:
        self._tx.insert_retry_row_runs(request_id, runs)

    async def hand_over_upload(self, parent_id: int) -> None:
        self._tx.hand_over_upload(parent_id)

    async def cancel_pending(self, environment_id: int, request_id: int) -> bool:
        return self._tx.cancel_pending(environment_id, request_id)

    async def cancel_unclaimed_processing(self, environment_id: int, request_id: int) -> bool:
        return self._tx.cancel_unclaimed_processing(environment_id, request_id)

    async def request_cancellation(self, environment_id: int, request_id: int) -> bool:
        return self._tx.request_cancellation(environment_id, request_id)

    async def claim_next_request(self, worker: str) -> BulkRequest | None:
        return self._tx.claim_next_request(worker)

    async def release_request(self, job: BulkRequest, worker: str) -> BulkRequest | None:
        return self._tx.release_request(job, worker)

    async def others_unpublished(self, request_id: int) -> bool:
        return self._tx.others_unpublished(request_id)

    async def find_reserved_external_ids(
        self, request_id: int, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        return self._tx.find_reserved_external_ids(request_id, pairs)

    async def find_existing_external_ids(
        self, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        return self._tx.find_existing_external_ids(pairs)

    async def insert_records(self, rows: Sequence[Sequence[Any]]) -> None:
        self._tx.insert_records(rows)

    async def insert_records_skipping_duplicates(self, rows: Sequence[Sequence[Any]]) -> int:
        return self._tx.insert_records_skipping_duplicates(rows)

    async def insert_row_errors(self, rows: Sequence[Sequence[Any]]) -> None:
        self._tx.insert_row_errors(rows)

    async def record_batch(
        self,
        job: BulkRequest,
        worker: str,
        *,
        next_row: int,
        successful: int,
        failed: int,
        skipped: int,
    ) -> BulkRequest | None:
        return self._tx.record_batch(
            job, worker, next_row=next_row, successful=successful, failed=failed, skipped=skipped
        )

    async def fail_atomic_request(self, request_id: int, error_message: str) -> BulkRequest | None:
        return self._tx.fail_atomic_request(request_id, error_message)

    async def record_parse_progress(
        self, job: BulkRequest, worker: str, total_items: int
    ) -> BulkRequest | None:
        return self._tx.record_parse_progress(job, worker, total_items)

    async def finish_parsing(
        self,
        job: BulkRequest,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequest | None:
        return self._tx.finish_parsing(
            job,
            worker,
            total_items=total_items,
            data_stream_id=data_stream_id,
            error_details=error_details,
        )

    async def finish_request(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None,
        error_details: JSON | None,
        keep_upload: bool,
    ) -> BulkRequest | None:
        return self._tx.finish_request(
            job,
            worker,
            status,
            error_message=error_message,
            error_details=error_details,
            keep_upload=keep_upload,
        )

    async def next_request_to_purge(self) -> int | None:
        return self._tx.next_request_to_purge()

    async def purge_request_records(self, request_id: int, limit: int) -> int:
        return self._tx.purge_request_records(request_id, limit)

    async def mark_purged(self, request_id: int) -> BulkRequest | None:
        return self._tx.mark_purged(request_id)
