"""The SQLite adapter of the storage port (server/db/port.py): `Store` implements `Storage`.

The statements live in `queries.sql`. The port's write operations are server/db/writes.py's
and their transaction bodies server/db/transactions.py's, shared with PostgreSQL: they run
here through `transaction`.

Writes go through a single writer connection on its own thread (server/db/sqlite/writer.py),
each transaction a plain function run there in one hop as `BEGIN IMMEDIATE` (a deferred
transaction that reads then writes can fail with "database is locked" whatever the busy
timeout). Reads use a small pool of separate read-only aiosqlite connections, so API
reads never queue behind a long write (WAL). `open` first takes an flock on
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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from server.clock import now_rfc3339, parse_rfc3339
from server.constants import CHECKPOINT_INTERVAL_SECONDS, READER_CONNECTIONS
from server.db.drive import run_to_completion
from server.db.listing import records_query
from server.db.named_rows import chains_of, status_source_totals
from server.db.port import (
    AfterCommitHook,
    HeartbeatSummary,
    StatusSourceTotals,
    StorageUnavailable,
    UploadSink,
    UploadSource,
)
from server.db.sqlite.async_tx import AsyncWriteTx
from server.db.sqlite.connection import (
    open_connection,
    open_lookup_connection,
    open_writer_connection,
    prepare_database,
)
from server.db.sqlite.queries import Q, load_queries
from server.db.sqlite.rows import bulk_request_from_row
from server.db.sqlite.tx import WriteTx, row_dict
from server.db.sqlite.uploads import FileUploadSink, remove, remove_files_except
from server.db.sqlite.webhooks import SqliteWebhooks
from server.db.sqlite.writer import Writer
from server.db.tx_port import Tx
from server.db.webhook_operations import Webhooks
from server.db.webhook_port import WebhookStorage
from server.db.writes import Writes
from server.ingest.validation import StreamRef
from server.models import (
    ActiveApiKey,
    ApiKeyListing,
    BulkRequest,
    ChainMember,
    DataStream,
    Record,
    RowError,
)
from server.staging import StagedChunk
from server.types import JSON, Source, Status

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


async def _available(read: Awaitable[T]) -> T:
    try:
        return await read
    except _UNAVAILABLE as exc:
        raise StorageUnavailable(type(exc).__name__) from exc


class Store(Writes):
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
        # The API key lookup of every request, run on the event loop (find_api_key).
        self._lookup: sqlite3.Connection | None = None
        # The one place that acts on committed events (server/outcomes.py AfterCommit),
        # set by the app. Without one (a bare store), events are only in the outbox.
        self.after_commit: AfterCommitHook | None = None
        # The webhook tables (server/db/webhook_port.py), on this store's writer and readers.
        self._webhook_backend = SqliteWebhooks(self)
        self.webhooks: WebhookStorage = Webhooks(self._webhook_backend)

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
        if self.exclusive:  # the flock: no other process can be sending
            await self._webhook_backend.release_leases()

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

    async def transaction(
        self, body: Callable[[Tx], Coroutine[Any, Any, T]], *, urgent: bool = False
    ) -> T:
        """Run a shared transaction body (server/db/transactions.py) as one `write`: on the
        writer thread through AsyncWriteTx, whose methods never suspend, so the body runs
        to completion there without a loop (server/db/drive.py)."""
        return await self.write(lambda tx: run_to_completion(body(AsyncWriteTx(tx))), urgent=urgent)

    def stale_claims_before(self) -> None:
        """This process holds the database's flock: every claim not held by one of its
        live workers is an orphan, however recent its heartbeat."""
        return None

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

    async def create_api_key(self, environment: str, key_hash: str, public_id: str) -> int:
        def work(tx: WriteTx) -> int:
            return tx.insert_api_key(tx.ensure_environment(environment), key_hash, public_id)

        return await self.write(work)

    async def ensure_api_key(self, environment: str, key_hash: str) -> bool:
        """Make sure this exact key exists (and is not revoked); True if it was created.

        The key was chosen by the operator (BULK_API_KEY): only its hash is stored, with no
        public id, since nothing else can be derived from it without revealing some of it.
        """

        def work(tx: WriteTx) -> bool:
            if tx.one(Q.find_api_key, {"key_hash": key_hash}) is not None:
                return False
            env_id = tx.ensure_environment(environment)
            # A revoked row with the same hash would violate UNIQUE: revive it instead.
            if not tx.run(Q.unrevoke_api_key, {"key_hash": key_hash}):
                tx.insert_api_key(env_id, key_hash, None)
            return True

        return await self.write(work)

    async def find_api_key(self, key_hash: str) -> ActiveApiKey | None:
        # Every request asks this. On the event loop it is one indexed point read
        # (~60 µs); through a pooled reader it was three thread hops, each waiting for
        # the GIL and the loop: 12–40 ms per request while bulk POSTs were being
        # accepted (README, Performance, fourth wave). Exact, so a revoked key is
        # refused at once. A lock held elsewhere (rare in WAL) or any error: the pool.
        params = {"key_hash": key_hash}
        row: JSON | None = None
        try:
            if self._lookup is None:
                raise sqlite3.OperationalError("the store is not open")
            row = row_dict(self._lookup.execute(Q.find_api_key, params).fetchone())
        except sqlite3.Error:
            row = await self.read_one(Q.find_api_key, params)
        return ActiveApiKey(**row) if row is not None else None

    async def touch_api_key(self, key_id: int) -> None:
        now = now_rfc3339()
        await self.write(lambda tx: tx.run(Q.touch_api_key, {"id": key_id, "now": now}))

    async def list_api_keys(self) -> list[ApiKeyListing]:
        return [ApiKeyListing(**row) for row in await self.read_all(Q.list_api_keys)]

    async def revoke_api_key(self, key_id: int) -> bool:
        now = now_rfc3339()
        changed = await self.write(lambda tx: tx.run(Q.revoke_api_key, {"id": key_id, "now": now}))
        return changed == 1

    async def count_api_keys(self) -> int:
        return int(await self.read_value(Q.count_api_keys))

    # --- data streams and records ------------------------------------------------------

    async def create_data_stream(
        self, environment_id: int, key: str, name: str | None, currency: str
    ) -> DataStream | None:
        """The new stream, or None when the key is taken in this environment."""
        params = {
            "environment_id": environment_id,
            "key": key,
            "name": name,
            "currency": currency,
            "now": now_rfc3339(),
        }
        row = await self.write(lambda tx: tx.one(Q.insert_data_stream, params), urgent=True)
        return DataStream(**row) if row is not None else None

    async def get_data_stream(self, environment_id: int, key: str) -> DataStream | None:
        row = await self.read_one(Q.get_data_stream, {"environment_id": environment_id, "key": key})
        return DataStream(**row) if row is not None else None

    async def list_data_streams(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[DataStream]:
        rows = await self.read_all(
            Q.list_data_streams,
            {"environment_id": environment_id, "after_id": after_id, "limit": limit},
        )
        return [DataStream(**row) for row in rows]

    async def find_data_streams(
        self, environment_id: int, keys: Iterable[str]
    ) -> dict[str, StreamRef]:
        """The streams among `keys` that exist, by key: what validation needs of each."""
        rows = await self.read_all(
            Q.find_data_streams_by_keys,
            {"environment_id": environment_id, "keys": orjson.dumps(list(keys)).decode()},
        )
        return {row["key"]: StreamRef(row["id"], row["currency"]) for row in rows}

    async def list_records(
        self,
        environment_id: int,
        *,
        data_stream_key: str | None,
        bulk_request_id: int | None,
        after_id: int,
        limit: int,
    ) -> list[Record]:
        query = records_query(
            environment_id,
            data_stream_key=data_stream_key,
            bulk_request_id=bulk_request_id,
            after_id=after_id,
            limit=limit,
        )
        rows = await self.read_all(load_queries()[query.name], query.params)
        return [Record(**row) for row in rows]

    # --- bulk requests: reads ----------------------------------------------------------

    async def _read_requests(self, sql: str, params: Any) -> list[BulkRequest]:
        async with self.reader() as conn:
            return [bulk_request_from_row(r) for r in await conn.execute_fetchall(sql, params)]

    async def get_bulk_request(self, environment_id: int, request_id: int) -> BulkRequest | None:
        params = {"id": request_id, "environment_id": environment_id}
        found = await self._read_requests(Q.get_bulk_request, params)
        return found[0] if found else None

    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None:
        found = await self._read_requests(Q.get_bulk_request_any_environment, {"id": request_id})
        return found[0] if found else None

    async def list_bulk_requests(
        self,
        environment_id: int,
        *,
        status: Status | None,
        source: Source | None,
        data_stream_key: str | None,
        before_id: int,
        limit: int,
        scheduled: bool | None = None,
    ) -> list[BulkRequest]:
        return await self._read_requests(
            Q.list_bulk_requests,
            {
                "environment_id": environment_id,
                "status": status,
                "source": source,
                "data_stream_key": data_stream_key,
                "scheduled": scheduled,
                "now": now_rfc3339(),
                "before_id": before_id,
                "limit": limit,
            },
        )

    async def list_chains(
        self, environment_id: int, request_ids: Iterable[int]
    ) -> list[list[ChainMember]]:
        """The chains of retries the requests belong to, each oldest first (SPEC §7),
        with the columns the retry rule reads (list_chains_of)."""
        ids = orjson.dumps(sorted(set(request_ids))).decode()
        params = {"ids": ids, "environment_id": environment_id}
        async with self.reader() as conn:
            rows = await conn.execute_fetchall(Q.list_chains_of, params)
        return chains_of(rows)

    async def list_row_errors(self, request_id: int, after_row: int, limit: int) -> list[RowError]:
        rows = await self.read_all(
            Q.list_row_errors,
            {"bulk_request_id": request_id, "after_row": after_row, "limit": limit},
        )
        return [RowError(**row) for row in rows]

    async def get_chunk_at(self, request_id: int, row: int) -> StagedChunk | None:
        found = await self.read_one(Q.get_chunk_at, {"bulk_request_id": request_id, "row": row})
        return StagedChunk(**found) if found is not None else None

    async def has_runnable_request(self) -> bool:
        return bool(await self.read_value(Q.has_runnable_request, {"now": now_rfc3339()}))

    async def queue_depth(self) -> int:
        count = self.read_value(Q.count_runnable_requests, {"now": now_rfc3339()})
        return int(await _available(count))

    async def next_run_at(self) -> datetime | None:
        due: str | None = await self.read_value(Q.next_run_at, {"now": now_rfc3339()})
        return None if due is None else parse_rfc3339(due)

    async def referenced_upload_paths(self) -> set[str]:
        return {r["upload_path"] for r in await self.read_all(Q.list_upload_paths)}

    # --- uploads: files beside the database (uploads.py) --------------------------------

    @property
    def upload_dir(self) -> Path:
        return self.path.parent / "uploads"

    async def begin_upload(self) -> UploadSink:
        return FileUploadSink(self.upload_dir)

    async def open_upload(self, name: str) -> UploadSource:
        handle: UploadSource = await asyncio.to_thread(Path(name).open, "rb")
        return handle

    async def delete_upload(self, name: str) -> None:
        remove(Path(name))

    async def delete_unreferenced_uploads(self) -> int:
        keep = await self.referenced_upload_paths()
        return await remove_files_except(self.upload_dir, keep)

    # --- live events and metrics -------------------------------------------------------

    async def get_data_stream_key(self, stream_id: int) -> str | None:
        key: str | None = await self.read_value(Q.get_data_stream_key, {"id": stream_id})
        return key

    async def metrics_bulk_requests(self) -> list[StatusSourceTotals]:
        """Per (status, source): request count and row counters, for /metrics."""
        return status_source_totals(await _available(self.read_all(Q.metrics_bulk_requests)))

    async def metrics_heartbeats(self, stuck_before: str) -> HeartbeatSummary:
        """Oldest heartbeat of a processing request, and how many are older than given."""
        read = self.read_one(Q.metrics_heartbeats, {"stuck_before": stuck_before})
        row = await _available(read)
        assert row is not None  # an aggregate always returns one row
        return HeartbeatSummary(oldest=row["oldest"], stuck=row["stuck"])
