"""Test-side access to either backend's database, beside the port (assertions only).

A test that checks what was stored writes its SQL once, in the dialect both backends
share, with `?` placeholders: on PostgreSQL they become `$1, $2, …`.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from server.db.port import Storage
from server.db.postgres.storage import PostgresStorage
from server.db.sqlite.store import Store
from server.types import JSON

_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    count = 0

    def number(_match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql)


async def stored_rows(store: Storage, sql: str, *args: Any) -> list[JSON]:
    if isinstance(store, PostgresStorage):
        return [dict(row.items()) for row in await store.pool.fetch(_numbered(sql), *args)]
    assert isinstance(store, Store)
    return await store.read_all(sql, args)


async def stored_value(store: Storage, sql: str, *args: Any) -> Any:
    if isinstance(store, PostgresStorage):
        return await store.pool.fetchval(_numbered(sql), *args)
    assert isinstance(store, Store)
    return await store.read_value(sql, args)


async def stored_uploads(store: Storage) -> list[str]:
    """The uploads kept: files beside the SQLite database, rows of PostgreSQL's table."""
    if isinstance(store, PostgresStorage):
        return [row["name"] for row in await store.pool.fetch("SELECT name FROM uploads")]
    assert isinstance(store, Store)
    return await asyncio.to_thread(_files_in, store.upload_dir)


def _files_in(directory: Path) -> list[str]:
    return sorted(str(path) for path in directory.iterdir()) if directory.is_dir() else []


async def store_upload(store: Storage, body: bytes, upload_format: str = "csv") -> str:
    """An upload stored as the upload handler stores one: its name for NewUpload."""
    sink = await store.begin_upload()
    await sink.write(body)
    return await sink.finish(upload_format)


async def stored_execute(store: Storage, sql: str, *args: Any) -> None:
    """A statement run behind the port's back (a test arranging the database)."""
    if isinstance(store, PostgresStorage):
        await store.pool.execute(_numbered(sql), *args)
        return
    assert isinstance(store, Store)
    await store.write(lambda tx: tx.run(sql, args))


async def table_columns(store: Storage, table: str) -> list[str]:
    """The table's column names in table order."""
    if isinstance(store, PostgresStorage):
        rows = await store.pool.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = $1 ORDER BY ordinal_position",
            table,
        )
        return [row["column_name"] for row in rows]
    assert isinstance(store, Store)
    return [row["name"] for row in await store.read_all(f"PRAGMA table_info({table})")]


async def stored_request_row(store: Storage, request_id: int) -> JSON:
    """The bulk request's row as stored (every column in table order, then the joined
    data_stream_key), as either database returns it."""
    rows = await stored_rows(
        store,
        "SELECT b.*, s.key AS data_stream_key FROM bulk_requests b"
        " LEFT JOIN data_streams s ON s.id = b.data_stream_id WHERE b.id = ?",
        request_id,
    )
    assert len(rows) == 1
    return rows[0]
