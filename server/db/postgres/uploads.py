"""Uploads on PostgreSQL: their bytes in the database, in chunks (SPEC §16).

Any process can parse a file another one received. The receiving process appends chunks
as they arrive (each insert commits alone: a half-received upload is never referenced
and the start-up sweep deletes it once it is old enough); the request that refers to
the upload marks it complete in its own transaction (operations.create_upload_request).
The parser reads the chunks back a few at a time from its worker thread, through the
event loop that owns the pool.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from server.clock import now_rfc3339
from server.constants import FILE_READ_BYTES, POSTGRES_UPLOAD_READ_AHEAD_CHUNKS
from server.db.postgres.queries import bind

# How long the parser's thread waits for one read of chunks before it gives up.
READ_TIMEOUT_SECONDS = 60.0


class PgUploadSink:
    """Receives an upload into `uploads` + `upload_chunks`, FILE_READ_BYTES per chunk."""

    def __init__(self, pool: asyncpg.Pool, name: str) -> None:
        self._pool = pool
        self.name = name
        self._buffer = bytearray()
        self._seq = 0

    @classmethod
    async def begin(cls, pool: asyncpg.Pool) -> PgUploadSink:
        sink = cls(pool, uuid.uuid4().hex)
        sql, args = bind("insert_upload", {"name": sink.name, "now": now_rfc3339()})
        await pool.execute(sql, *args)
        return sink

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= FILE_READ_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        values = {"name": self.name, "seq": self._seq, "body": bytes(self._buffer)}
        sql, args = bind("insert_upload_chunk", values)
        await self._pool.execute(sql, *args)
        self._seq += 1
        self._buffer.clear()

    async def finish(self, upload_format: str) -> str:
        # The format is the request's (upload_format); the stored name needs no suffix.
        del upload_format
        await self._flush()
        return self.name

    async def discard(self) -> None:
        await delete_upload(self._pool, self.name)


class PgUploadSource:
    """An upload's chunks in order; `read` is called from a worker thread, and waits for
    the event loop to fetch the next few chunks when it has returned the ones it had."""

    def __init__(self, pool: asyncpg.Pool, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._name = name
        self._loop = loop
        self._next_seq = 0
        self._ahead: list[bytes] = []
        self._pending = b""  # the rest of the chunk being read
        self._done = False

    def read(self, size: int) -> bytes:
        while not self._pending and not self._done:
            if not self._ahead:
                future = asyncio.run_coroutine_threadsafe(self._fetch(), self._loop)
                self._ahead = future.result(READ_TIMEOUT_SECONDS)
                self._done = not self._ahead
                continue
            self._pending = self._ahead.pop(0)
        piece, self._pending = self._pending[:size], self._pending[size:]
        return piece

    async def _fetch(self) -> list[bytes]:
        values = {
            "name": self._name,
            "from_seq": self._next_seq,
            "limit": POSTGRES_UPLOAD_READ_AHEAD_CHUNKS,
        }
        sql, args = bind("list_upload_chunks", values)
        rows = await self._pool.fetch(sql, *args)
        if rows:
            self._next_seq = rows[-1]["seq"] + 1
        return [bytes(row["body"]) for row in rows]

    def close(self) -> None:
        self._ahead, self._pending = [], b""
        self._done = True


async def open_upload(pool: asyncpg.Pool, name: str) -> PgUploadSource:
    sql, args = bind("get_upload", {"name": name})
    found = await pool.fetchrow(sql, *args)
    if found is None or found["completed_at"] is None:
        raise FileNotFoundError(f"upload {name!r} is not stored")
    return PgUploadSource(pool, name, asyncio.get_running_loop())


async def delete_upload(pool: asyncpg.Pool, name: str) -> None:
    sql, args = bind("delete_upload", {"name": name})
    await pool.execute(sql, *args)
