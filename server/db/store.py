"""The store: the one layer that runs SQL (the statements live in `queries.sql`).

Writes go through a single writer connection, serialized by an asyncio.Lock and run as
`BEGIN IMMEDIATE` transactions (a deferred transaction that reads then writes can fail
with "database is locked" whatever the busy timeout). Reads use a small pool of
separate read-only connections, so API reads never queue behind a long write (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from server.clock import now_rfc3339
from server.constants import READER_CONNECTIONS
from server.db.connection import open_connection, prepare_database
from server.db.queries import Q
from server.db.tx import WriteTx, row_dict
from server.types import JSON


class Store:
    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(prepare_database, self.path)
        self._writer = await open_connection(self.path, self.synchronous)
        for _ in range(READER_CONNECTIONS):
            reader = await open_connection(self.path, self.synchronous, read_only=True)
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        if self._writer is not None:
            # Fold the WAL back into the main file so a copied .db is complete.
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._writer.close()
            self._writer = None

    # --- transactions ------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[WriteTx]:
        """One write transaction; commits on success, rolls back on any exception."""
        assert self._writer is not None, "store is not open"
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield WriteTx(self._writer)
            except BaseException:
                # Shielded: a cancelled task must still leave the connection clean.
                await asyncio.shield(self._writer.execute("ROLLBACK"))
                raise
            else:
                await self._writer.execute("COMMIT")

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    async def read_one(self, sql: str, params: Any = ()) -> JSON | None:
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            return row_dict(await cur.fetchone())

    async def read_all(self, sql: str, params: Any = ()) -> list[JSON]:
        async with self.reader() as conn:
            return [dict(r) for r in await conn.execute_fetchall(sql, params)]

    async def read_value(self, sql: str, params: Any = ()) -> Any:
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            row = await cur.fetchone()
            return row[0] if row is not None else None

    # --- environments and API keys -----------------------------------------------------

    async def create_api_key(self, environment: str, key_hash: str, prefix: str) -> int:
        async with self.transaction() as tx:
            env_id = await tx.ensure_environment(environment)
            return await tx.insert_api_key(env_id, key_hash, prefix)

    async def ensure_api_key(self, environment: str, key_hash: str, prefix: str) -> bool:
        """Make sure this exact key exists (and is not revoked); True if it was created."""
        async with self.transaction() as tx:
            if await tx.one(Q.find_api_key, {"key_hash": key_hash}) is not None:
                return False
            env_id = await tx.ensure_environment(environment)
            # A revoked row with the same hash would violate UNIQUE: revive it instead.
            if not await tx.run(Q.unrevoke_api_key, {"key_hash": key_hash}):
                await tx.insert_api_key(env_id, key_hash, prefix)
            return True

    async def find_api_key(self, key_hash: str) -> JSON | None:
        return await self.read_one(Q.find_api_key, {"key_hash": key_hash})

    async def touch_api_key(self, key_id: int) -> None:
        async with self.transaction() as tx:
            await tx.run(Q.touch_api_key, {"id": key_id, "now": now_rfc3339()})

    async def list_api_keys(self) -> list[JSON]:
        return await self.read_all(Q.list_api_keys)

    async def revoke_api_key(self, key_id: int) -> bool:
        async with self.transaction() as tx:
            return await tx.run(Q.revoke_api_key, {"id": key_id, "now": now_rfc3339()}) == 1

    async def count_api_keys(self) -> int:
        return int(await self.read_value(Q.count_api_keys))

    # --- data streams and records ------------------------------------------------------

    async def create_data_stream(
        self, environment_id: int, key: str, name: str | None, currency: str
    ) -> JSON | None:
        """The new stream, or None when the key is taken in this environment."""
        async with self.transaction() as tx:
            return await tx.one(
                Q.insert_data_stream,
                {
                    "environment_id": environment_id,
                    "key": key,
                    "name": name,
                    "currency": currency,
                    "now": now_rfc3339(),
                },
            )

    async def get_data_stream(self, environment_id: int, key: str) -> JSON | None:
        return await self.read_one(
            Q.get_data_stream, {"environment_id": environment_id, "key": key}
        )

    async def list_data_streams(self, environment_id: int, after_id: int, limit: int) -> list[JSON]:
        return await self.read_all(
            Q.list_data_streams,
            {"environment_id": environment_id, "after_id": after_id, "limit": limit},
        )

    async def find_data_streams(self, environment_id: int, keys: Iterable[str]) -> list[JSON]:
        return await self.read_all(
            Q.find_data_streams_by_keys,
            {"environment_id": environment_id, "keys": orjson.dumps(list(keys)).decode()},
        )

    async def list_records(
        self,
        environment_id: int,
        *,
        data_stream_key: str | None,
        bulk_request_id: int | None,
        after_id: int,
        limit: int,
    ) -> list[JSON]:
        params = {
            "environment_id": environment_id,
            "data_stream_key": data_stream_key,
            "bulk_request_id": bulk_request_id,
            "after_id": after_id,
            "limit": limit,
        }
        if data_stream_key is not None:
            return await self.read_all(Q.list_records_by_stream, params)
        if bulk_request_id is not None:
            return await self.read_all(Q.list_records_by_request, params)
        return await self.read_all(Q.list_records, params)

    # --- bulk requests: reads ----------------------------------------------------------

    async def get_bulk_request(self, environment_id: int, request_id: int) -> JSON | None:
        return await self.read_one(
            Q.get_bulk_request, {"id": request_id, "environment_id": environment_id}
        )

    async def get_bulk_request_any_environment(self, request_id: int) -> JSON | None:
        return await self.read_one(Q.get_bulk_request_any_environment, {"id": request_id})

    async def list_bulk_requests(
        self,
        environment_id: int,
        *,
        status: str | None,
        source: str | None,
        data_stream_key: str | None,
        before_id: int,
        limit: int,
    ) -> list[JSON]:
        return await self.read_all(
            Q.list_bulk_requests,
            {
                "environment_id": environment_id,
                "status": status,
                "source": source,
                "data_stream_key": data_stream_key,
                "before_id": before_id,
                "limit": limit,
            },
        )

    async def list_row_errors(self, request_id: int, after_row: int, limit: int) -> list[JSON]:
        return await self.read_all(
            Q.list_row_errors,
            {"bulk_request_id": request_id, "after_row": after_row, "limit": limit},
        )

    async def count_records_of_request(self, request_id: int) -> int:
        return int(
            await self.read_value(Q.count_records_of_request, {"bulk_request_id": request_id})
        )

    async def get_chunk_at(self, request_id: int, row: int) -> JSON | None:
        return await self.read_one(Q.get_chunk_at, {"bulk_request_id": request_id, "row": row})

    async def has_runnable_request(self) -> bool:
        return bool(await self.read_value(Q.has_runnable_request))

    async def queue_depth(self) -> int:
        return int(await self.read_value(Q.count_runnable_requests))

    async def count_requests_by_status(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self.read_all(Q.count_requests_by_status)}

    async def referenced_upload_paths(self) -> set[str]:
        return {r["upload_path"] for r in await self.read_all(Q.list_upload_paths)}

    async def ping(self) -> None:
        await self.read_value(Q.ping)
