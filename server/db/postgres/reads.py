"""The port's reads on PostgreSQL: one pooled query each (a mixin of PostgresStorage).

Reads run outside any transaction on whichever pooled connection is free; READ
COMMITTED shows each one what had committed when it started, in any process.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from server.clock import now_rfc3339, parse_rfc3339
from server.db.listing import records_query
from server.db.named_rows import chains_of
from server.db.postgres.queries import bind
from server.db.postgres.rows import bulk_request_from_record
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


class Reads:
    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # PostgresStorage's

    async def row(self, query: str, /, **values: Any) -> JSON | None:
        sql, args = bind(query, values)
        found = await self.pool.fetchrow(sql, *args)
        return dict(found) if found is not None else None

    async def rows(self, query: str, /, **values: Any) -> list[JSON]:
        sql, args = bind(query, values)
        return [dict(r) for r in await self.pool.fetch(sql, *args)]

    async def value(self, query: str, /, **values: Any) -> Any:
        sql, args = bind(query, values)
        return await self.pool.fetchval(sql, *args)

    async def request(self, query: str, /, **values: Any) -> BulkRequest | None:
        sql, args = bind(query, values)
        found = await self.pool.fetchrow(sql, *args)
        return bulk_request_from_record(found) if found is not None else None

    async def requests(self, query: str, /, **values: Any) -> list[BulkRequest]:
        sql, args = bind(query, values)
        return [bulk_request_from_record(r) for r in await self.pool.fetch(sql, *args)]

    # --- API keys --------------------------------------------------------------------

    async def find_api_key(self, key_hash: str) -> ActiveApiKey | None:
        found = await self.row("find_api_key", key_hash=key_hash)
        return ActiveApiKey(**found) if found is not None else None

    async def list_api_keys(self) -> list[ApiKeyListing]:
        return [ApiKeyListing(**found) for found in await self.rows("list_api_keys")]

    async def count_api_keys(self) -> int:
        return int(await self.value("count_api_keys"))

    # --- data streams and records ----------------------------------------------------

    async def get_data_stream(self, environment_id: int, key: str) -> DataStream | None:
        found = await self.row("get_data_stream", environment_id=environment_id, key=key)
        return DataStream(**found) if found is not None else None

    async def list_data_streams(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[DataStream]:
        found = await self.rows(
            "list_data_streams", environment_id=environment_id, after_id=after_id, limit=limit
        )
        return [DataStream(**stream) for stream in found]

    async def find_data_streams(
        self, environment_id: int, keys: Iterable[str]
    ) -> dict[str, StreamRef]:
        found = await self.rows(
            "find_data_streams_by_keys",
            environment_id=environment_id,
            keys=orjson.dumps(list(keys)).decode(),
        )
        return {stream["key"]: StreamRef(stream["id"], stream["currency"]) for stream in found}

    async def get_data_stream_key(self, stream_id: int) -> str | None:
        key: str | None = await self.value("get_data_stream_key", id=stream_id)
        return key

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
        return [Record(**found) for found in await self.rows(query.name, **query.params)]

    # --- bulk requests -----------------------------------------------------------------

    async def get_bulk_request(self, environment_id: int, request_id: int) -> BulkRequest | None:
        return await self.request("get_bulk_request", id=request_id, environment_id=environment_id)

    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None:
        return await self.request("get_bulk_request_any_environment", id=request_id)

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
        return await self.requests(
            "list_bulk_requests",
            environment_id=environment_id,
            status=None if status is None else str(status),
            source=None if source is None else str(source),
            data_stream_key=data_stream_key,
            before_id=before_id,
            limit=limit,
            scheduled=scheduled,
            now=now_rfc3339(),
        )

    async def list_chains(
        self, environment_id: int, request_ids: Iterable[int]
    ) -> list[list[ChainMember]]:
        """The chains of retries the requests belong to, each oldest first (SPEC §7),
        with the columns the retry rule reads (list_chains_of)."""
        ids = orjson.dumps(sorted(set(request_ids))).decode()
        sql, args = bind("list_chains_of", {"ids": ids, "environment_id": environment_id})
        return chains_of(await self.pool.fetch(sql, *args))

    async def list_row_errors(self, request_id: int, after_row: int, limit: int) -> list[RowError]:
        found = await self.rows(
            "list_row_errors", bulk_request_id=request_id, after_row=after_row, limit=limit
        )
        return [RowError(**error) for error in found]

    async def get_chunk_at(self, request_id: int, row: int) -> StagedChunk | None:
        found = await self.row("get_chunk_at", bulk_request_id=request_id, row=row)
        return StagedChunk(**found) if found is not None else None

    async def has_runnable_request(self) -> bool:
        return bool(await self.value("has_runnable_request", now=now_rfc3339()))

    async def next_run_at(self) -> datetime | None:
        due: str | None = await self.value("next_run_at", now=now_rfc3339())
        return None if due is None else parse_rfc3339(due)

    async def referenced_upload_paths(self) -> set[str]:
        return {found["upload_path"] for found in await self.rows("list_upload_paths")}
