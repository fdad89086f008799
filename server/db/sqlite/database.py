"""The connections of one SQLite database file, beneath the store (server/db/sqlite/store.py).

Writes go through a single writer connection on its own thread (server/db/sqlite/writer.py),
each transaction a plain function run there in one hop as `BEGIN IMMEDIATE` (a deferred
transaction that reads then writes can fail with "database is locked" whatever the busy
timeout). Reads use a small pool of separate read-only aiosqlite connections, so API
reads never queue behind a long write (WAL); one more read-only connection serves the
point reads every request makes, on the event loop. `open` first takes an flock on
`<db>.lock`: one server process per database file, so every claim found at start is an
orphan of a process that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from server.constants import CHECKPOINT_INTERVAL_SECONDS, READER_CONNECTIONS
from server.db.port import AfterCommitHook, StorageUnavailable
from server.db.sqlite.connection import (
    open_connection,
    open_lookup_connection,
    open_writer_connection,
    prepare_database,
)
from server.db.sqlite.tx import WriteTx, row_dict
from server.db.sqlite.writer import Writer
from server.types import JSON

T = TypeVar("T")
log = logging.getLogger("server.db")

# What a read raises when the database is unusable: SQLite's errors, a missing or
# unreadable file, and aiosqlite's ValueError for a connection that is gone.
_UNAVAILABLE = (sqlite3.Error, OSError, ValueError)


class DatabaseInUse(RuntimeError):
    """Another server process holds this database file."""


def _checkpoint(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _lock_database(db_path: Path) -> int:
    """One server process per database: its claims are then known to be its own."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(f"another server process is already using {db_path}") from None
    return fd


async def available(read: Awaitable[T]) -> T:
    """`read`'s result, or StorageUnavailable when the database cannot answer it."""
    try:
        return await read
    except _UNAVAILABLE as exc:
        raise StorageUnavailable(type(exc).__name__) from exc


class SqliteDatabase:
    """One database file's writer, readers, lookup connection, checkpointer and flock;
    the store's operations are built on `write` and the reads."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", exclusive: bool = False) -> None:
        """`exclusive`: hold the database's flock while open (the server; not `keys`)."""
        self.path = path
        self.synchronous = synchronous
        self.exclusive = exclusive
        self._lock_fd: int | None = None
        self._writer: Writer | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        # Point reads on a hot path (every request's API key, a claim's chunk), run on the
        # event loop (lookup_one).
        self._lookup: sqlite3.Connection | None = None
        # The one place that acts on committed events (server/outcomes.py AfterCommit),
        # set by the app. Without one (a bare store), events are only in the outbox.
        self.after_commit: AfterCommitHook | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self.exclusive:
            self._lock_fd = _lock_database(self.path)
        try:
            await self._open()
        except BaseException:
            self._unlock()
            raise

    async def _open(self) -> None:
        await asyncio.to_thread(prepare_database, self.path)
        writer = Writer(lambda: open_writer_connection(self.path, self.synchronous))
        await writer.start()
        self._writer = writer
        for _ in range(READER_CONNECTIONS):
            reader = await open_connection(self.path, self.synchronous, read_only=True)
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)
        self._lookup = open_lookup_connection(self.path)
        checkpoint_conn = await open_connection(self.path, self.synchronous)
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(checkpoint_conn))

    async def _checkpoint_loop(self, conn: aiosqlite.Connection) -> None:
        """Fold the WAL into the database file in the background (see constants).

        PASSIVE never waits for the writer or readers: it copies what it can now, and
        the writer reuses the WAL from its start once everything has been copied.
        """
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
                try:
                    await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("background checkpoint failed; retrying", exc_info=True)
        finally:
            await asyncio.shield(conn.close())

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None
        if self._writer is not None:
            # Fold the WAL back into the main file so a copied .db is complete.
            await self._writer.close(last=_checkpoint)
            self._writer = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- transactions ------------------------------------------------------------------

    async def write(self, work: Callable[[WriteTx], T], *, urgent: bool = False) -> T:
        """Run `work` as one write transaction on the writer thread, in one hop.

        Commits when it returns, rolls back when it raises (the exception propagates).
        `urgent`: a client is waiting for this (see server/db/sqlite/writer.py).
        The events `work` emitted go to `after_commit` once committed, on this loop and
        in commit order, even when the caller stops waiting (a client hung up).
        """
        assert self._writer is not None, "store is not open"
        apply = self.after_commit
        if apply is None:
            return await self._writer.transaction(work, urgent=urgent)
        loop = asyncio.get_running_loop()

        def committed(tx: WriteTx) -> None:
            if tx.events:
                # Scheduled before the caller's result, so it runs first. A closed loop
                # (an abandoned write at exit) has nobody left to tell.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(apply, tuple(tx.events))

        return await self._writer.transaction(work, urgent=urgent, committed=committed)

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

    async def lookup_one(self, sql: str, params: Any = ()) -> JSON | None:
        """A point read on a hot path, on the event loop: one indexed read takes ~60 µs,
        where a pooled reader took three thread hops, each waiting for the GIL and the
        loop (12–40 ms per request while bulk POSTs were being accepted; README,
        Performance, fourth wave). Exact: no cache. When it raises sqlite3.Error (a lock
        held elsewhere, rare in WAL and never waited for, or a store that is not open),
        the pool reads it instead."""
        try:
            if self._lookup is None:
                raise sqlite3.OperationalError("the store is not open")
            return row_dict(self._lookup.execute(sql, params).fetchone())
        except sqlite3.Error:
            return await self.read_one(sql, params)
