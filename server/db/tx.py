"""Named write operations inside one open `BEGIN IMMEDIATE` transaction.

Callers (the domain module and the worker) decide *what* to do; this class knows *how*
in SQL. Obtain one from `Store.transaction()`; never keep it past the `async with`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import aiosqlite
import orjson

from server.clock import now_rfc3339, to_rfc3339, utc_now
from server.constants import IDEMPOTENCY_KEY_TTL_SECONDS
from server.db.queries import Q
from server.types import JSON

# A staged input row: [line, fields, problem] where problem is [code, message, pointer].
StagedItem = list[Any]


def row_dict(row: sqlite3.Row | None) -> JSON | None:
    return dict(row) if row is not None else None


def _json_default(value: object) -> object:
    # Numbers parsed as Decimal (to keep amounts exact) are written back as the same
    # JSON number text, so metadata round-trips unchanged.
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode_items(items: Sequence[StagedItem]) -> bytes:
    return orjson.dumps(items, default=_json_default)


def idempotency_not_before() -> str:
    return to_rfc3339(utc_now() - timedelta(seconds=IDEMPOTENCY_KEY_TTL_SECONDS))


class WriteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    # --- low level (db package only) ---------------------------------------------------

    async def one(self, sql: str, params: Any = ()) -> JSON | None:
        async with self.conn.execute(sql, params) as cur:
            return row_dict(await cur.fetchone())

    async def all(self, sql: str, params: Any = ()) -> list[JSON]:
        return [dict(r) for r in await self.conn.execute_fetchall(sql, params)]

    async def run(self, sql: str, params: Any = ()) -> int:
        async with self.conn.execute(sql, params) as cur:
            return cur.rowcount

    # --- environments, keys, streams ----------------------------------------------------

    async def ensure_environment(self, name: str) -> int:
        await self.run(Q.ensure_environment, {"name": name, "now": now_rfc3339()})
        env = await self.one(Q.get_environment_by_name, {"name": name})
        assert env is not None
        return int(env["id"])

    async def insert_api_key(self, environment_id: int, key_hash: str, prefix: str) -> int:
        row = await self.one(
            Q.insert_api_key,
            {
                "environment_id": environment_id,
                "key_hash": key_hash,
                "prefix": prefix,
                "now": now_rfc3339(),
            },
        )
        assert row is not None
        return int(row["id"])

    async def get_data_stream(self, environment_id: int, key: str) -> JSON | None:
        return await self.one(Q.get_data_stream, {"environment_id": environment_id, "key": key})

    # --- idempotency --------------------------------------------------------------------

    async def get_idempotency_key(self, environment_id: int, key: str) -> JSON | None:
        return await self.one(
            Q.get_idempotency_key,
            {"environment_id": environment_id, "key": key, "not_before": idempotency_not_before()},
        )

    async def save_idempotency_key(
        self, environment_id: int, key: str, fingerprint: str, request_id: int
    ) -> None:
        await self.run(
            Q.upsert_idempotency_key,
            {
                "environment_id": environment_id,
                "key": key,
                "fingerprint": fingerprint,
                "bulk_request_id": request_id,
                "now": now_rfc3339(),
            },
        )

    async def delete_expired_idempotency_keys(self) -> int:
        return await self.run(
            Q.delete_expired_idempotency_keys, {"not_before": idempotency_not_before()}
        )

    # --- bulk requests --------------------------------------------------------------------

    async def insert_bulk_request(self, **fields: Any) -> JSON:
        params = {
            "total_items": 0,
            "parsing": 0,
            "upload_format": None,
            "upload_path": None,
            "filename": None,
            "default_data_stream_key": None,
            "data_stream_id": None,
            "parent_bulk_request_id": None,
            **fields,
            "now": now_rfc3339(),
        }
        row = await self.one(Q.insert_bulk_request, params)
        assert row is not None
        return row

    async def get_bulk_request(self, environment_id: int, request_id: int) -> JSON | None:
        return await self.one(
            Q.get_bulk_request, {"id": request_id, "environment_id": environment_id}
        )

    async def insert_chunk(
        self, request_id: int, first_row: int, items: Sequence[StagedItem]
    ) -> None:
        await self.run(
            Q.insert_chunk,
            {
                "bulk_request_id": request_id,
                "first_row": first_row,
                "row_count": len(items),
                "body": encode_items(items),
            },
        )

    async def next_chunk_from(self, request_id: int, row: int) -> JSON | None:
        return await self.one(Q.next_chunk_from, {"bulk_request_id": request_id, "row": row})

    async def set_total_items(self, request_id: int, total_items: int) -> None:
        await self.run(Q.set_total_items, {"id": request_id, "total_items": total_items})

    async def delete_chunks(self, request_id: int) -> None:
        await self.run(Q.delete_chunks, {"bulk_request_id": request_id})

    async def list_row_errors(self, request_id: int, after_row: int, limit: int) -> list[JSON]:
        return await self.all(
            Q.list_row_errors,
            {"bulk_request_id": request_id, "after_row": after_row, "limit": limit},
        )

    async def latest_child(self, parent_id: int) -> JSON | None:
        return await self.one(Q.latest_child, {"parent_id": parent_id})

    async def hand_over_upload(self, parent_id: int) -> None:
        """The retry child now owns the parent's staged file."""
        await self.run(Q.clear_upload_path, {"id": parent_id})

    async def cancel_pending(self, environment_id: int, request_id: int) -> bool:
        params = {"id": request_id, "environment_id": environment_id, "now": now_rfc3339()}
        return await self.one(Q.cancel_pending_request, params) is not None

    async def cancel_unclaimed_processing(self, environment_id: int, request_id: int) -> bool:
        params = {"id": request_id, "environment_id": environment_id, "now": now_rfc3339()}
        return await self.one(Q.cancel_unclaimed_processing_request, params) is not None

    async def request_cancellation(self, environment_id: int, request_id: int) -> bool:
        params = {"id": request_id, "environment_id": environment_id, "now": now_rfc3339()}
        return await self.one(Q.request_cancellation, params) is not None

    # --- worker side: every statement fenced by (attempt, claimed_by) ------------------------

    async def claim_next_request(self, worker: str) -> JSON | None:
        return await self.one(Q.claim_next_request, {"worker": worker, "now": now_rfc3339()})

    async def release_request(self, job: JSON, worker: str) -> None:
        await self.run(
            Q.release_request,
            {"id": job["id"], "attempt": job["attempt"], "worker": worker, "now": now_rfc3339()},
        )

    async def find_existing_external_ids(
        self, pairs: Iterable[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        payload = orjson.dumps(list(pairs)).decode()
        rows = await self.conn.execute_fetchall(Q.find_existing_external_ids, {"pairs": payload})
        return {(r[0], r[1]) for r in rows}

    async def insert_records(self, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(Q.insert_record, rows)

    async def insert_records_skipping_duplicates(self, rows: Iterable[Sequence[Any]]) -> int:
        """Insert, silently skipping external_id duplicates; returns how many were inserted."""
        cursor = await self.conn.executemany(Q.insert_record_unless_duplicate, rows)
        return cursor.rowcount

    async def insert_row_errors(self, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(Q.insert_row_error, rows)

    async def record_batch(
        self,
        job: JSON,
        worker: str,
        *,
        next_row: int,
        successful: int,
        failed: int,
        skipped: int,
    ) -> JSON | None:
        """The heartbeat: advance counters and checkpoint; None if this claim is stale."""
        return await self.one(
            Q.record_batch,
            {
                "id": job["id"],
                "attempt": job["attempt"],
                "worker": worker,
                "processed": successful + failed + skipped,
                "successful": successful,
                "failed": failed,
                "skipped": skipped,
                "next_row": next_row,
                "now": now_rfc3339(),
            },
        )

    async def record_parse_progress(self, job: JSON, worker: str, total_items: int) -> JSON | None:
        return await self.one(
            Q.record_parse_progress,
            {
                "id": job["id"],
                "attempt": job["attempt"],
                "worker": worker,
                "total_items": total_items,
                "now": now_rfc3339(),
            },
        )

    async def finish_parsing(
        self,
        job: JSON,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> JSON | None:
        return await self.one(
            Q.finish_parsing,
            {
                "id": job["id"],
                "attempt": job["attempt"],
                "worker": worker,
                "total_items": total_items,
                "data_stream_id": data_stream_id,
                "error_details": orjson.dumps(error_details).decode() if error_details else None,
                "now": now_rfc3339(),
            },
        )

    async def finish_request(
        self,
        job: JSON,
        worker: str,
        status: str,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> JSON | None:
        return await self.one(
            Q.finish_request,
            {
                "id": job["id"],
                "attempt": job["attempt"],
                "worker": worker,
                "status": status,
                "keep_upload": keep_upload,
                "error_message": error_message,
                "error_details": orjson.dumps(error_details).decode() if error_details else None,
                "now": now_rfc3339(),
            },
        )

    async def requeue_orphans(self, live_workers: Iterable[str], reason: str) -> list[int]:
        rows = await self.conn.execute_fetchall(
            Q.requeue_orphans,
            {
                "live_workers": orjson.dumps(list(live_workers)).decode(),
                "reason": reason,
                "now": now_rfc3339(),
            },
        )
        return [r[0] for r in rows]

    async def touch_api_key(self, key_id: int) -> None:
        await self.run(Q.touch_api_key, {"id": key_id, "now": now_rfc3339()})
