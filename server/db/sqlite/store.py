"""The SQLite adapter of the storage port (server/db/port.py): `Store` implements `Storage`.

The statements live in `queries.sql`. The port's write operations are server/db/writes.py's
and their transaction bodies server/db/transactions.py's, shared with PostgreSQL: they run
here through `transaction`, on the writer thread of server/db/sqlite/database.py, which
holds this file's connections (writer, readers, the lookup connection, the flock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from server.clock import now_rfc3339, parse_rfc3339
from server.db.drive import run_to_completion
from server.db.listing import records_query
from server.db.named_rows import chains_of, status_source_totals
from server.db.port import HeartbeatSummary, StatusSourceTotals, UploadSink, UploadSource
from server.db.sqlite.async_tx import AsyncWriteTx
from server.db.sqlite.database import SqliteDatabase, available
from server.db.sqlite.queries import Q, load_queries
from server.db.sqlite.rows import bulk_request_from_row
from server.db.sqlite.tx import WriteTx
from server.db.sqlite.uploads import FileUploadSink, remove, remove_files_except
from server.db.sqlite.webhooks import SqliteWebhooks
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
from server.types import Source, Status

T = TypeVar("T")


class Store(SqliteDatabase, Writes):
    def __init__(self, path: Path, *, synchronous: str = "NORMAL", exclusive: bool = False) -> None:
        """`exclusive`: hold the database's flock while open (the server; not `keys`)."""
        super().__init__(path, synchronous=synchronous, exclusive=exclusive)
        # The webhook tables (server/db/webhook_port.py), on this store's writer and readers.
        self._webhook_backend = SqliteWebhooks(self)
        self.webhooks: WebhookStorage = Webhooks(self._webhook_backend)

    async def _open(self) -> None:
        await super()._open()
        if self.exclusive:  # the flock: no other process can be sending
            await self._webhook_backend.release_leases()

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
        # Every request asks this: on the loop (lookup_one).
        row = await self.lookup_one(Q.find_api_key, {"key_hash": key_hash})
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
        # A worker waits for this at every claim (its next batch comes from the chunk):
        # on the loop (lookup_one), ~30 µs for a usual chunk of 10-20 kB, where the pool
        # costs a thread hop each way.
        found = await self.lookup_one(Q.get_chunk_at, {"bulk_request_id": request_id, "row": row})
        return StagedChunk(**found) if found is not None else None

    async def has_runnable_request(self) -> bool:
        return bool(await self.read_value(Q.has_runnable_request, {"now": now_rfc3339()}))

    async def queue_depth(self) -> int:
        count = self.read_value(Q.count_runnable_requests, {"now": now_rfc3339()})
        return int(await available(count))

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
        return status_source_totals(await available(self.read_all(Q.metrics_bulk_requests)))

    async def metrics_heartbeats(self, stuck_before: str) -> HeartbeatSummary:
        """Oldest heartbeat of a processing request, and how many are older than given."""
        read = self.read_one(Q.metrics_heartbeats, {"stuck_before": stuck_before})
        row = await available(read)
        assert row is not None  # an aggregate always returns one row
        return HeartbeatSummary(oldest=row["oldest"], stuck=row["stuck"])
