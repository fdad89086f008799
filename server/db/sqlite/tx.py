"""Named write operations inside one open `BEGIN IMMEDIATE` transaction.

The port's operations (server/db/transactions.py, shared with PostgreSQL) decide *what*
to do; this class knows *how* in SQL. A transaction is a plain function of a WriteTx that
`Store.write()` runs on the writer thread (writer.py), so these methods are synchronous;
the shared bodies see them as a `Tx` through async_tx.py. Never keep a WriteTx past
the function it was given to. Nothing outside server/db/sqlite/ sees a WriteTx.

A transaction that changes a bulk request's state calls `emit`: the event is written to
the outbox here, in the same transaction, and handed to server/outcomes.py's AfterCommit
once the transaction has committed (see Store.write). Nothing else follows a commit.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import orjson

from server.chains import RowRun
from server.clock import now_rfc3339, to_rfc3339, utc_now
from server.constants import (
    IDEMPOTENCY_KEY_TTL_SECONDS,
    MAX_ROWS_PER_INSERT,
    OUTBOX_PRUNE_BATCH,
    OUTBOX_RETENTION_SECONDS,
)
from server.db.payload import stored_row
from server.db.sqlite.queries import Q, multi_row
from server.db.sqlite.rows import bulk_request_from_row
from server.models import BulkRequest, DataStream
from server.outcomes import RequestChanged, Transition
from server.types import JSON, Mode, Status


def row_dict(row: sqlite3.Row | None) -> JSON | None:
    return dict(row) if row is not None else None


def idempotency_not_before() -> str:
    return to_rfc3339(utc_now() - timedelta(seconds=IDEMPOTENCY_KEY_TTL_SECONDS))


class WriteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # What this transaction changed, in order; applied only after it commits.
        self.events: list[RequestChanged] = []

    # --- low level (db package only) ---------------------------------------------------

    def one(self, sql: str, params: Any = ()) -> JSON | None:
        return row_dict(self.conn.execute(sql, params).fetchone())

    def all(self, sql: str, params: Any = ()) -> list[JSON]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def request(self, sql: str, params: Any = ()) -> BulkRequest | None:
        """The bulk request a query selects or returns (`bulk_requests.*`), if any."""
        row = self.conn.execute(sql, params).fetchone()
        return bulk_request_from_row(row) if row is not None else None

    def run(self, sql: str, params: Any = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    # --- the outbox ---------------------------------------------------------------------

    def emit(
        self,
        row: BulkRequest,
        transition: Transition,
        *,
        log_level: int = logging.INFO,
        **log_fields: Any,
    ) -> RequestChanged:
        """Record a state change of the request `row` (as this transaction left it)."""
        event = RequestChanged(row, transition, log_level, log_fields)
        self.run(
            Q.insert_outbox_event,
            {
                "bulk_request_id": row.id,
                "environment_id": row.environment_id,
                "event_type": transition.value,
                "payload": orjson.dumps(stored_row(row)).decode(),
                "now": now_rfc3339(),
            },
        )
        self.events.append(event)
        return event

    def delete_old_outbox_events(self) -> int:
        not_before = to_rfc3339(utc_now() - timedelta(seconds=OUTBOX_RETENTION_SECONDS))
        return self.run(
            Q.delete_old_outbox_events, {"not_before": not_before, "limit": OUTBOX_PRUNE_BATCH}
        )

    # --- environments, keys, streams ----------------------------------------------------

    def ensure_environment(self, name: str) -> int:
        self.run(Q.ensure_environment, {"name": name, "now": now_rfc3339()})
        env = self.one(Q.get_environment_by_name, {"name": name})
        assert env is not None
        return int(env["id"])

    def insert_api_key(self, environment_id: int, key_hash: str, public_id: str | None) -> int:
        row = self.one(
            Q.insert_api_key,
            {
                "environment_id": environment_id,
                "key_hash": key_hash,
                "public_id": public_id,
                "now": now_rfc3339(),
            },
        )
        assert row is not None
        return int(row["id"])

    def get_data_stream(self, environment_id: int, key: str) -> DataStream | None:
        row = self.one(Q.get_data_stream, {"environment_id": environment_id, "key": key})
        return DataStream(**row) if row is not None else None

    # --- idempotency --------------------------------------------------------------------

    def get_idempotency_key(self, environment_id: int, key: str) -> JSON | None:
        return self.one(
            Q.get_idempotency_key,
            {"environment_id": environment_id, "key": key, "not_before": idempotency_not_before()},
        )

    def save_idempotency_key(
        self, environment_id: int, key: str, fingerprint: str, request_id: int
    ) -> None:
        self.run(
            Q.upsert_idempotency_key,
            {
                "environment_id": environment_id,
                "key": key,
                "fingerprint": fingerprint,
                "bulk_request_id": request_id,
                "now": now_rfc3339(),
            },
        )

    def delete_expired_idempotency_keys(self) -> int:
        return self.run(Q.delete_expired_idempotency_keys, {"not_before": idempotency_not_before()})

    # --- bulk requests --------------------------------------------------------------------

    def insert_bulk_request(self, **fields: Any) -> BulkRequest:
        params = {
            "total_items": 0,
            "parsing": 0,
            "upload_format": None,
            "upload_path": None,
            "filename": None,
            "default_data_stream_key": None,
            "nacha_options": None,
            "csv_options": None,
            "data_stream_id": None,
            "parent_bulk_request_id": None,
            "run_at": None,
            "mode": Mode.PARTIAL,
            **fields,
            "now": now_rfc3339(),
        }
        row = self.request(Q.insert_bulk_request, params)
        assert row is not None
        return row

    def get_bulk_request(self, environment_id: int, request_id: int) -> BulkRequest | None:
        return self.request(
            Q.get_bulk_request, {"id": request_id, "environment_id": environment_id}
        )

    def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None:
        return self.request(Q.get_bulk_request_any_environment, {"id": request_id})

    def insert_chunk(self, request_id: int, first_row: int, row_count: int, body: bytes) -> None:
        """Stage rows; `body` comes from server/staging.py (JSON or validated rows), made
        before the transaction."""
        self.run(
            Q.insert_chunk,
            {
                "bulk_request_id": request_id,
                "first_row": first_row,
                "row_count": row_count,
                "body": body,
            },
        )

    def next_chunk_from(self, request_id: int, row: int) -> JSON | None:
        return self.one(Q.next_chunk_from, {"bulk_request_id": request_id, "row": row})

    def set_total_items(self, request_id: int, total_items: int) -> None:
        self.run(Q.set_total_items, {"id": request_id, "total_items": total_items})

    def delete_chunks(self, request_id: int) -> None:
        self.run(Q.delete_chunks, {"bulk_request_id": request_id})

    def list_chain(self, environment_id: int, request_id: int) -> list[BulkRequest]:
        """The members of the request's chain of retries, oldest first (SPEC §7)."""
        params = {"id": request_id, "environment_id": environment_id}
        return [bulk_request_from_row(r) for r in self.conn.execute(Q.list_chain, params)]

    def row_error_rows(self, request_id: int) -> list[int]:
        rows = self.conn.execute(Q.list_row_error_rows, {"bulk_request_id": request_id})
        return [r[0] for r in rows]

    def retry_row_runs(self, request_id: int) -> list[RowRun]:
        rows = self.conn.execute(Q.list_retry_row_runs, {"bulk_request_id": request_id})
        return [RowRun(*r) for r in rows]

    def insert_retry_row_runs(self, request_id: int, runs: Sequence[RowRun]) -> None:
        self._insert_rows(
            "insert_retry_row_run",
            [(request_id, run.first_row, run.row_count, run.origin_row) for run in runs],
        )

    def hand_over_upload(self, parent_id: int) -> None:
        """The retry child now owns the parent's staged file."""
        self.run(Q.clear_upload_path, {"id": parent_id})

    def cancel_pending(self, environment_id: int, request_id: int) -> bool:
        params = {"id": request_id, "environment_id": environment_id, "now": now_rfc3339()}
        return self.one(Q.cancel_pending_request, params) is not None

    def cancel_unclaimed_processing(self, environment_id: int, request_id: int) -> bool:
        params = {"id": request_id, "environment_id": environment_id, "now": now_rfc3339()}
        return self.one(Q.cancel_unclaimed_processing_request, params) is not None

    def request_cancellation(self, environment_id: int, request_id: int) -> bool:
        params = {"id": request_id, "environment_id": environment_id, "now": now_rfc3339()}
        return self.one(Q.request_cancellation, params) is not None

    # --- worker side: every statement fenced by (attempt, claimed_by) ------------------------

    def claim_next_request(self, worker: str) -> BulkRequest | None:
        return self.request(Q.claim_next_request, {"worker": worker, "now": now_rfc3339()})

    def release_request(self, job: BulkRequest, worker: str) -> BulkRequest | None:
        """Give the claim back (runnable again); the row, or None if the claim is stale."""
        return self.request(
            Q.release_request,
            {"id": job.id, "attempt": job.attempt, "worker": worker, "now": now_rfc3339()},
        )

    def find_existing_external_ids(self, pairs: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
        payload = orjson.dumps(list(pairs)).decode()
        rows = self.conn.execute(Q.find_existing_external_ids, {"pairs": payload}).fetchall()
        return {(r[0], r[1]) for r in rows}

    def others_unpublished(self, request_id: int) -> bool:
        """Whether another request's records are hidden now (one probe of a tiny index)."""
        return bool(self.conn.execute(Q.any_other_unpublished, {"id": request_id}).fetchone()[0])

    def find_reserved_external_ids(
        self, request_id: int, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        """The pairs held by hidden records of another unpublished request (SPEC §14)."""
        if not pairs:
            return set()
        payload = orjson.dumps(list(pairs)).decode()
        params = {"pairs": payload, "bulk_request_id": request_id}
        rows = self.conn.execute(Q.find_reserved_external_ids, params).fetchall()
        return {(r[0], r[1]) for r in rows}

    def fail_atomic_request(self, request_id: int, error_message: str) -> BulkRequest | None:
        params = {"id": request_id, "error_message": error_message}
        return self.request(Q.fail_atomic_request, params)

    def next_request_to_purge(self) -> int | None:
        found = self.one(Q.next_request_to_purge)
        return None if found is None else int(found["id"])

    def purge_request_records(self, request_id: int, limit: int) -> int:
        return self.run(Q.purge_request_records, {"bulk_request_id": request_id, "limit": limit})

    def mark_purged(self, request_id: int) -> BulkRequest | None:
        self.run(Q.mark_purged, {"id": request_id})
        return self.get_bulk_request_any_environment(request_id)

    def _insert_rows(self, name: str, rows: Sequence[Sequence[Any]]) -> int:
        """Insert rows with multi-row statements (see queries.multi_row); returns changes."""
        changed = 0
        for start in range(0, len(rows), MAX_ROWS_PER_INSERT):
            part = rows[start : start + MAX_ROWS_PER_INSERT]
            params = [value for row in part for value in row]
            cursor = self.conn.execute(multi_row(name, len(part)), params)
            changed += cursor.rowcount
        return changed

    def insert_records(self, rows: Sequence[Sequence[Any]]) -> None:
        self._insert_rows("insert_record", rows)

    def insert_records_skipping_duplicates(self, rows: Sequence[Sequence[Any]]) -> int:
        """Insert, silently skipping external_id duplicates; returns how many were inserted."""
        return self._insert_rows("insert_record_unless_duplicate", rows)

    def insert_row_errors(self, rows: Sequence[Sequence[Any]]) -> None:
        self._insert_rows("insert_row_error", rows)

    def record_batch(
        self,
        job: BulkRequest,
        worker: str,
        *,
        next_row: int,
        successful: int,
        failed: int,
        skipped: int,
    ) -> BulkRequest | None:
        """The heartbeat: advance counters and checkpoint; None if this claim is stale."""
        return self.request(
            Q.record_batch,
            {
                "id": job.id,
                "attempt": job.attempt,
                "worker": worker,
                "processed": successful + failed + skipped,
                "successful": successful,
                "failed": failed,
                "skipped": skipped,
                "next_row": next_row,
                "now": now_rfc3339(),
            },
        )

    def record_parse_progress(
        self, job: BulkRequest, worker: str, total_items: int
    ) -> BulkRequest | None:
        return self.request(
            Q.record_parse_progress,
            {
                "id": job.id,
                "attempt": job.attempt,
                "worker": worker,
                "total_items": total_items,
                "now": now_rfc3339(),
            },
        )

    def finish_parsing(
        self,
        job: BulkRequest,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequest | None:
        return self.request(
            Q.finish_parsing,
            {
                "id": job.id,
                "attempt": job.attempt,
                "worker": worker,
                "total_items": total_items,
                "data_stream_id": data_stream_id,
                "error_details": orjson.dumps(error_details).decode() if error_details else None,
                "now": now_rfc3339(),
            },
        )

    def finish_request(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> BulkRequest | None:
        return self.request(
            Q.finish_request,
            {
                "id": job.id,
                "attempt": job.attempt,
                "worker": worker,
                "status": status,
                "keep_upload": keep_upload,
                "error_message": error_message,
                "error_details": orjson.dumps(error_details).decode() if error_details else None,
                "now": now_rfc3339(),
            },
        )

    def requeue_orphans(self, live_workers: Iterable[str], reason: str) -> list[int]:
        rows = self.conn.execute(
            Q.requeue_orphans,
            {
                "live_workers": orjson.dumps(list(live_workers)).decode(),
                "reason": reason,
                "now": now_rfc3339(),
            },
        ).fetchall()
        return [r[0] for r in rows]
