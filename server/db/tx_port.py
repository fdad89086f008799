"""`Tx`: what a transaction body (server/db/transactions.py) may ask of an open transaction.

Each method is one named statement (or a few) of the adapter's queries.sql, inside the
transaction the adapter opened: SQLite's writer-thread `BEGIN IMMEDIATE` seen through
`AsyncWriteTx` (server/db/sqlite/async_tx.py, coroutines that never suspend, run by
server/db/drive.py), PostgreSQL's `PgTx` (server/db/postgres/tx.py, awaited on asyncpg).

A few steps matter only where several processes write at once (PostgreSQL): the locks,
the second look for external_ids another transaction reserved meanwhile, completing a
database-stored upload, rescuing claims by heartbeat age. They are methods of every
transaction all the same, so the body is written once; on SQLite they do nothing or
answer trivially, because one writer (one connection, one thread, one process holding the
database's flock) already serializes every transaction PostgreSQL must lock against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from server.chains import RowRun
from server.models import BulkRequest, DataStream
from server.outcomes import RequestChanged, Transition
from server.types import JSON, Status


class Tx(Protocol):
    # --- the outbox ------------------------------------------------------------------------

    async def emit(
        self,
        row: BulkRequest,
        transition: Transition,
        *,
        log_level: int = logging.INFO,
        **log_fields: Any,
    ) -> RequestChanged:
        """Record a state change of the request `row` (as this transaction left it): its
        outbox row now, the event handed to after-commit once the transaction commits."""
        ...

    async def delete_old_outbox_events(self) -> int: ...

    # --- environments, streams, idempotency --------------------------------------------

    async def ensure_environment(self, name: str) -> int: ...

    async def get_data_stream(self, environment_id: int, key: str) -> DataStream | None: ...

    async def lock_idempotency_key(self, environment_id: int, key: str) -> None:
        """Hold off other transactions sending this key until this one ends (PostgreSQL:
        an advisory lock; SQLite: nothing, its one writer runs them one after another)."""
        ...

    async def get_idempotency_key(self, environment_id: int, key: str) -> JSON | None: ...

    async def save_idempotency_key(
        self, environment_id: int, key: str, fingerprint: str, request_id: int
    ) -> None: ...

    async def delete_expired_idempotency_keys(self) -> int: ...

    # --- bulk requests ---------------------------------------------------------------------

    async def insert_bulk_request(self, **fields: Any) -> BulkRequest: ...

    async def get_bulk_request(
        self, environment_id: int, request_id: int
    ) -> BulkRequest | None: ...

    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None: ...

    async def lock_request(self, request_id: int) -> None:
        """Hold off other transactions locking this request until this one ends
        (PostgreSQL: a row lock; SQLite: nothing, its one writer serializes them)."""
        ...

    async def complete_upload(self, name: str) -> bool:
        """Mark the upload `name` complete, now that a request refers to it; False if no
        such upload is stored (PostgreSQL keeps uploads in the database, and its sweep
        drops incomplete ones; SQLite's are files, complete once written: True)."""
        ...

    async def insert_chunk(
        self, request_id: int, first_row: int, row_count: int, body: bytes
    ) -> None: ...

    async def next_chunk_from(self, request_id: int, row: int) -> JSON | None: ...

    async def set_total_items(self, request_id: int, total_items: int) -> None: ...

    async def delete_chunks(self, request_id: int) -> None: ...

    async def list_chain(self, environment_id: int, request_id: int) -> list[BulkRequest]: ...

    async def row_error_rows(self, request_id: int) -> list[int]: ...

    async def retry_row_runs(self, request_id: int) -> list[RowRun]: ...

    async def insert_retry_row_runs(self, request_id: int, runs: Sequence[RowRun]) -> None: ...

    async def hand_over_upload(self, parent_id: int) -> None: ...

    async def cancel_pending(self, environment_id: int, request_id: int) -> bool: ...

    async def cancel_unclaimed_processing(self, environment_id: int, request_id: int) -> bool: ...

    async def request_cancellation(self, environment_id: int, request_id: int) -> bool: ...

    # --- the worker side: every statement fenced by (attempt, claimed_by) ------------------

    async def claim_next_request(self, worker: str) -> BulkRequest | None: ...

    async def release_request(self, job: BulkRequest, worker: str) -> BulkRequest | None: ...

    async def others_unpublished(self, request_id: int) -> bool: ...

    async def find_reserved_external_ids(
        self, request_id: int, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]: ...

    async def find_reserved_external_ids_again(
        self, request_id: int, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        """After an insert skipped rows: the pairs another request's hidden records
        reserved since `find_reserved_external_ids` looked (PostgreSQL: another process's
        atomic batch, uncommitted then, that the insert waited for; SQLite: none, nothing
        else writes in between)."""
        ...

    async def find_existing_external_ids(
        self, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]: ...

    async def insert_records(self, rows: Sequence[Sequence[Any]]) -> None: ...

    async def insert_records_skipping_duplicates(self, rows: Sequence[Sequence[Any]]) -> int: ...

    async def insert_row_errors(self, rows: Sequence[Sequence[Any]]) -> None: ...

    async def record_batch(
        self,
        job: BulkRequest,
        worker: str,
        *,
        next_row: int,
        successful: int,
        failed: int,
        skipped: int,
    ) -> BulkRequest | None: ...

    async def fail_atomic_request(
        self, request_id: int, error_message: str
    ) -> BulkRequest | None: ...

    async def record_parse_progress(
        self, job: BulkRequest, worker: str, total_items: int
    ) -> BulkRequest | None: ...

    async def finish_parsing(
        self,
        job: BulkRequest,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequest | None: ...

    async def finish_request(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None,
        error_details: JSON | None,
        keep_upload: bool,
    ) -> BulkRequest | None: ...

    async def requeue_orphaned_claims(
        self, live_workers: Sequence[str], reason: str, stale_before: str | None
    ) -> list[int]:
        """Requeue the claims no live worker holds any more; the requests' ids.

        PostgreSQL: this process's claims whose worker is not in `live_workers`, and any
        process's claim whose heartbeat is older than `stale_before` (its process died or
        hangs). SQLite: every claim not held by a live worker, since one process holds the
        database's flock and so owns every claim; `stale_before` adds nothing (None).
        """
        ...

    # --- sweeps --------------------------------------------------------------------------

    async def next_request_to_purge(self) -> int | None: ...

    async def purge_request_records(self, request_id: int, limit: int) -> int: ...

    async def mark_purged(self, request_id: int) -> BulkRequest | None: ...
