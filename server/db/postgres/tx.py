"""Named statements inside one open PostgreSQL transaction (the asyncpg twin of SQLite's WriteTx).

operations.py decides *what* each port operation does; this class knows *how* in SQL, one
method per named statement of queries.sql, bound by name (queries.bind). A PgTx lives
only inside the `async with` of `PostgresStorage.write`; nothing outside
server/db/postgres/ sees one.

`emit` writes the outbox row in the same transaction (its trigger NOTIFYs every process at
commit) and keeps the event to hand to `after_commit` once the transaction has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from server.chains import RowRun
from server.clock import now_rfc3339, to_rfc3339, utc_now
from server.constants import (
    IDEMPOTENCY_KEY_TTL_SECONDS,
    OUTBOX_PRUNE_BATCH,
    OUTBOX_RETENTION_SECONDS,
    POSTGRES_MAX_ROWS_PER_INSERT,
)
from server.db.payload import stored_row
from server.db.postgres.queries import bind, multi_row
from server.db.postgres.rows import bulk_request_from_record
from server.models import BulkRequest, DataStream
from server.outcomes import RequestChanged, Transition
from server.types import JSON, Mode, Status

# A plain connection or the pool's proxy of one.
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

# The records columns in insert_record's order: what ValidRecord + (request, row, now) give.
RECORD_COLUMNS = (
    "data_stream_id",
    "date",
    "amount_minor",
    "currency",
    "description",
    "external_id",
    "metadata",
    "bulk_request_id",
    "row_index",
    "created_at",
)
# Per connection (pool `init`): COPY cannot skip a conflicting row, so on_conflict=skip
# copies the batch here first, then INSERT … SELECT … ON CONFLICT DO NOTHING (measured
# fastest, README "Running on PostgreSQL"). Emptied by each commit.
STAGED_RECORDS_TABLE = "staged_records"
CREATE_STAGED_RECORDS = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGED_RECORDS_TABLE} ON COMMIT DELETE ROWS AS"
    f" SELECT {', '.join(RECORD_COLUMNS)} FROM records WITH NO DATA"
)
_INSERT_STAGED_SKIPPING_DUPLICATES = (
    f"INSERT INTO records ({', '.join(RECORD_COLUMNS)})"
    f" SELECT {', '.join(RECORD_COLUMNS)} FROM {STAGED_RECORDS_TABLE} ORDER BY row_index"
    " ON CONFLICT (data_stream_id, external_id) WHERE external_id IS NOT NULL DO NOTHING"
)


def idempotency_not_before() -> str:
    return to_rfc3339(utc_now() - timedelta(seconds=IDEMPOTENCY_KEY_TTL_SECONDS))


def _json_text(value: JSON | None) -> str | None:
    return orjson.dumps(value).decode() if value else None


def _changed(status: str) -> int:
    """The row count of asyncpg's command tag ("UPDATE 3" → 3)."""
    return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0


class PgTx:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # What this transaction changed, in order; applied only after it commits.
        self.events: list[RequestChanged] = []
        # The outbox ids this transaction wrote: the listener skips them (already applied).
        self.outbox_ids: list[int] = []

    # --- low level (this package only) -------------------------------------------------

    async def one(self, query: str, /, **values: Any) -> JSON | None:
        sql, args = bind(query, values)
        found = await self.conn.fetchrow(sql, *args)
        return dict(found) if found is not None else None

    async def all(self, query: str, /, **values: Any) -> list[JSON]:
        sql, args = bind(query, values)
        return [dict(r) for r in await self.conn.fetch(sql, *args)]

    async def run(self, query: str, /, **values: Any) -> int:
        sql, args = bind(query, values)
        return _changed(await self.conn.execute(sql, *args))

    async def request(self, query: str, /, **values: Any) -> BulkRequest | None:
        sql, args = bind(query, values)
        found = await self.conn.fetchrow(sql, *args)
        return bulk_request_from_record(found) if found is not None else None

    # --- the outbox ----------------------------------------------------------------------

    async def emit(
        self,
        row: BulkRequest,
        transition: Transition,
        *,
        log_level: int = logging.INFO,
        **log_fields: Any,
    ) -> RequestChanged:
        """Record a state change of the request `row` (as this transaction left it)."""
        event = RequestChanged(row, transition, log_level, log_fields)
        outbox_id = await self.conn.fetchval(
            *_bound(
                "insert_outbox_event",
                bulk_request_id=row.id,
                environment_id=row.environment_id,
                event_type=transition.value,
                payload=orjson.dumps(stored_row(row)).decode(),
                now=now_rfc3339(),
            )
        )
        self.outbox_ids.append(int(outbox_id))
        self.events.append(event)
        return event

    async def delete_old_outbox_events(self) -> int:
        not_before = to_rfc3339(utc_now() - timedelta(seconds=OUTBOX_RETENTION_SECONDS))
        return await self.run(
            "delete_old_outbox_events", not_before=not_before, limit=OUTBOX_PRUNE_BATCH
        )

    # --- environments, keys, streams -----------------------------------------------------

    async def ensure_environment(self, name: str) -> int:
        await self.run("ensure_environment", name=name, now=now_rfc3339())
        env = await self.one("get_environment_by_name", name=name)
        assert env is not None
        return int(env["id"])

    async def insert_api_key(
        self, environment_id: int, key_hash: str, public_id: str | None
    ) -> int:
        row = await self.one(
            "insert_api_key",
            environment_id=environment_id,
            key_hash=key_hash,
            public_id=public_id,
            now=now_rfc3339(),
        )
        assert row is not None
        return int(row["id"])

    async def get_data_stream(self, environment_id: int, key: str) -> DataStream | None:
        row = await self.one("get_data_stream", environment_id=environment_id, key=key)
        return DataStream(**row) if row is not None else None

    # --- idempotency ---------------------------------------------------------------------

    async def lock_idempotency_key(self, environment_id: int, key: str) -> None:
        """Serialize the transactions sending one Idempotency-Key, whichever process runs
        them: the second waits for the first's commit, then finds its key (READ COMMITTED
        reads what committed before each statement). Held until this transaction ends."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", key, environment_id
        )

    async def get_idempotency_key(self, environment_id: int, key: str) -> JSON | None:
        return await self.one(
            "get_idempotency_key",
            environment_id=environment_id,
            key=key,
            not_before=idempotency_not_before(),
        )

    async def save_idempotency_key(
        self, environment_id: int, key: str, fingerprint: str, request_id: int
    ) -> None:
        await self.run(
            "upsert_idempotency_key",
            environment_id=environment_id,
            key=key,
            fingerprint=fingerprint,
            bulk_request_id=request_id,
            now=now_rfc3339(),
        )

    async def delete_expired_idempotency_keys(self) -> int:
        return await self.run(
            "delete_expired_idempotency_keys", not_before=idempotency_not_before()
        )

    # --- bulk requests -------------------------------------------------------------------

    async def insert_bulk_request(self, **fields: Any) -> BulkRequest:
        values = {
            "total_items": 0,
            "parsing": 0,
            "upload_format": None,
            "upload_path": None,
            "filename": None,
            "default_data_stream_key": None,
            "nacha_options": None,
            "data_stream_id": None,
            "parent_bulk_request_id": None,
            "csv_options": None,
            "run_at": None,
            "mode": Mode.PARTIAL,
            **fields,
            "now": now_rfc3339(),
        }
        row = await self.request("insert_bulk_request", **values)
        assert row is not None
        return row

    async def get_bulk_request(self, environment_id: int, request_id: int) -> BulkRequest | None:
        return await self.request("get_bulk_request", id=request_id, environment_id=environment_id)

    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None:
        return await self.request("get_bulk_request_any_environment", id=request_id)

    async def lock_request(self, request_id: int) -> None:
        """A row lock on one request until this transaction ends (a chain's origin)."""
        await self.conn.execute("SELECT id FROM bulk_requests WHERE id = $1 FOR UPDATE", request_id)

    async def insert_chunk(
        self, request_id: int, first_row: int, row_count: int, body: bytes
    ) -> None:
        await self.run(
            "insert_chunk",
            bulk_request_id=request_id,
            first_row=first_row,
            row_count=row_count,
            body=body,
        )

    async def next_chunk_from(self, request_id: int, row: int) -> JSON | None:
        return await self.one("next_chunk_from", bulk_request_id=request_id, row=row)

    async def set_total_items(self, request_id: int, total_items: int) -> None:
        await self.run("set_total_items", id=request_id, total_items=total_items)

    async def delete_chunks(self, request_id: int) -> None:
        await self.run("delete_chunks", bulk_request_id=request_id)

    async def list_chain(self, environment_id: int, request_id: int) -> list[BulkRequest]:
        """The members of the request's chain of retries, oldest first (SPEC §7)."""
        sql, args = bind("list_chain", {"id": request_id, "environment_id": environment_id})
        return [bulk_request_from_record(r) for r in await self.conn.fetch(sql, *args)]

    async def row_error_rows(self, request_id: int) -> list[int]:
        rows = await self.all("list_row_error_rows", bulk_request_id=request_id)
        return [int(r["row"]) for r in rows]

    async def retry_row_runs(self, request_id: int) -> list[RowRun]:
        rows = await self.all("list_retry_row_runs", bulk_request_id=request_id)
        return [RowRun(r["first_row"], r["row_count"], r["origin_row"]) for r in rows]

    async def insert_retry_row_runs(self, request_id: int, runs: Sequence[RowRun]) -> None:
        await self._insert_rows(
            "insert_retry_row_run",
            [(request_id, run.first_row, run.row_count, run.origin_row) for run in runs],
        )

    async def hand_over_upload(self, parent_id: int) -> None:
        """The retry child now owns the parent's staged upload."""
        await self.run("clear_upload_path", id=parent_id)

    async def cancel_pending(self, environment_id: int, request_id: int) -> bool:
        found = await self.one(
            "cancel_pending_request",
            id=request_id,
            environment_id=environment_id,
            now=now_rfc3339(),
        )
        return found is not None

    async def cancel_unclaimed_processing(self, environment_id: int, request_id: int) -> bool:
        found = await self.one(
            "cancel_unclaimed_processing_request",
            id=request_id,
            environment_id=environment_id,
            now=now_rfc3339(),
        )
        return found is not None

    async def request_cancellation(self, environment_id: int, request_id: int) -> bool:
        found = await self.one(
            "request_cancellation", id=request_id, environment_id=environment_id, now=now_rfc3339()
        )
        return found is not None

    async def complete_upload(self, name: str) -> bool:
        return await self.one("complete_upload", name=name, now=now_rfc3339()) is not None

    # --- worker side: every statement fenced by (attempt, claimed_by) ------------------------

    async def claim_next_request(self, worker: str) -> BulkRequest | None:
        return await self.request("claim_next_request", worker=worker, now=now_rfc3339())

    async def release_request(self, job: BulkRequest, worker: str) -> BulkRequest | None:
        """Give the claim back (runnable again); the row, or None if the claim is stale."""
        return await self.request(
            "release_request",
            id=job.id,
            attempt=job.attempt,
            worker=worker,
            now=now_rfc3339(),
        )

    async def others_unpublished(self, request_id: int) -> bool:
        """Whether another request's records are hidden now (one probe of a tiny index)."""
        return bool(await self.conn.fetchval(*_bound("any_other_unpublished", id=request_id)))

    async def find_reserved_external_ids(
        self, request_id: int, pairs: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        """The pairs held by hidden records of another unpublished request (SPEC §14)."""
        if not pairs:
            return set()
        payload = orjson.dumps(list(pairs)).decode()
        rows = await self.all(
            "find_reserved_external_ids", pairs=payload, bulk_request_id=request_id
        )
        return {(r["data_stream_id"], r["external_id"]) for r in rows}

    async def fail_atomic_request(self, request_id: int, error_message: str) -> BulkRequest | None:
        return await self.request("fail_atomic_request", id=request_id, error_message=error_message)

    async def next_request_to_purge(self) -> int | None:
        found = await self.one("next_request_to_purge")
        return None if found is None else int(found["id"])

    async def purge_request_records(self, request_id: int, limit: int) -> int:
        return await self.run("purge_request_records", bulk_request_id=request_id, limit=limit)

    async def mark_purged(self, request_id: int) -> BulkRequest | None:
        await self.run("mark_purged", id=request_id)
        return await self.get_bulk_request_any_environment(request_id)

    async def find_existing_external_ids(
        self, pairs: Iterable[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        payload = orjson.dumps(list(pairs)).decode()
        rows = await self.all("find_existing_external_ids", pairs=payload)
        return {(r["data_stream_id"], r["external_id"]) for r in rows}

    async def _insert_rows(self, name: str, rows: Sequence[Sequence[Any]]) -> int:
        """Small multi-row inserts (row errors, retry runs): one statement per part."""
        changed = 0
        for start in range(0, len(rows), POSTGRES_MAX_ROWS_PER_INSERT):
            part = rows[start : start + POSTGRES_MAX_ROWS_PER_INSERT]
            flat = [value for row in part for value in row]
            changed += _changed(await self.conn.execute(multi_row(name, len(part)), *flat))
        return changed

    async def insert_records(self, rows: Sequence[Sequence[Any]]) -> None:
        """Binary COPY: the fastest insert measured (README, "Running on PostgreSQL")."""
        await self.conn.copy_records_to_table("records", records=rows, columns=RECORD_COLUMNS)

    async def insert_records_skipping_duplicates(self, rows: Sequence[Sequence[Any]]) -> int:
        """COPY into the connection's temp table, then keep what the unique external_id
        index allows; returns how many were inserted. Other violations still raise."""
        await self.conn.copy_records_to_table(
            STAGED_RECORDS_TABLE, records=rows, columns=RECORD_COLUMNS
        )
        inserted = _changed(await self.conn.execute(_INSERT_STAGED_SKIPPING_DUPLICATES))
        # ON COMMIT DELETE ROWS empties it at commit; a second batch in one transaction
        # (none today) must not see this one's rows. DELETE, not TRUNCATE: a TRUNCATE per
        # batch gives the table a new file each time.
        await self.conn.execute(f"DELETE FROM {STAGED_RECORDS_TABLE}")
        return inserted

    async def insert_row_errors(self, rows: Sequence[Sequence[Any]]) -> None:
        await self._insert_rows("insert_row_error", [_without_nul(row) for row in rows])

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
        """The heartbeat: advance counters and checkpoint; None if this claim is stale."""
        return await self.request(
            "record_batch",
            id=job.id,
            attempt=job.attempt,
            worker=worker,
            processed=successful + failed + skipped,
            successful=successful,
            failed=failed,
            skipped=skipped,
            next_row=next_row,
            now=now_rfc3339(),
        )

    async def record_parse_progress(
        self, job: BulkRequest, worker: str, total_items: int
    ) -> BulkRequest | None:
        return await self.request(
            "record_parse_progress",
            id=job.id,
            attempt=job.attempt,
            worker=worker,
            total_items=total_items,
            now=now_rfc3339(),
        )

    async def finish_parsing(
        self,
        job: BulkRequest,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequest | None:
        return await self.request(
            "finish_parsing",
            id=job.id,
            attempt=job.attempt,
            worker=worker,
            total_items=total_items,
            data_stream_id=data_stream_id,
            error_details=_json_text(error_details),
            now=now_rfc3339(),
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
        return await self.request(
            "finish_request",
            id=job.id,
            attempt=job.attempt,
            worker=worker,
            status=status.value,
            keep_upload=keep_upload,
            error_message=error_message,
            error_details=_json_text(error_details),
            now=now_rfc3339(),
        )

    async def requeue_orphans(
        self, live_workers: Iterable[str], worker_prefix: str, reason: str
    ) -> list[int]:
        rows = await self.all(
            "requeue_orphans",
            live_workers=orjson.dumps(list(live_workers)).decode(),
            worker_prefix=worker_prefix,
            reason=reason,
            now=now_rfc3339(),
        )
        return [int(r["id"]) for r in rows]

    async def rescue_stale_requests(self, stale_before: str, reason: str) -> list[int]:
        rows = await self.all(
            "rescue_stale_requests", stale_before=stale_before, reason=reason, now=now_rfc3339()
        )
        return [int(r["id"]) for r in rows]


def _without_nul(row: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL text cannot hold NUL, which SQLite's can: a row refused for a NUL
    (invalid_characters) names it in its external_id or pointer. Those become U+FFFD,
    the replacement character (README, "Running on PostgreSQL"); the row's source is
    JSON, where a NUL is already the escape `\\u0000`."""
    return tuple(
        value.replace("\x00", "\ufffd") if isinstance(value, str) else value for value in row
    )


def _bound(query: str, /, **values: Any) -> tuple[Any, ...]:
    sql, args = bind(query, values)
    return (sql, *args)
