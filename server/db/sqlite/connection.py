"""Opening SQLite connections with the pragmas this service relies on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from server.constants import (
    MIN_SQLITE_VERSION,
    READER_CACHE_KIB,
    SQLITE_BUSY_TIMEOUT_MS,
    WRITER_AUTOCHECKPOINT_PAGES,
    WRITER_CACHE_KIB,
)
from server.db.sqlite.migrations import migrate


def _pragmas(synchronous: str, *, read_only: bool) -> list[str]:
    pragmas = [
        f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
        # NORMAL in WAL mode survives any process crash (kill -9); only an OS crash or
        # power loss can roll back the last commits. FULL closes that too, at a cost.
        f"PRAGMA synchronous = {synchronous}",
        "PRAGMA foreign_keys = ON",
        "PRAGMA temp_store = MEMORY",
        # A negative cache_size is in KiB. Readers get a smaller cache (see constants).
        f"PRAGMA cache_size = -{READER_CACHE_KIB if read_only else WRITER_CACHE_KIB}",
    ]
    if read_only:
        pragmas.append("PRAGMA query_only = ON")
    return pragmas


def prepare_database(path: Path) -> int:
    """Create the file if needed, switch it to WAL and apply migrations (synchronously)."""
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        wanted = ".".join(map(str, MIN_SQLITE_VERSION))
        raise RuntimeError(
            f"SQLite {sqlite3.sqlite_version} is too old: this service needs {wanted} or "
            "newer (Python 3.11+ from python.org or a current Linux distribution has it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"could not switch {path} to WAL mode (got {mode!r})")
        return migrate(conn)
    finally:
        conn.close()


async def open_connection(
    path: Path, synchronous: str, *, read_only: bool = False
) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in _pragmas(synchronous, read_only=read_only):
        await conn.execute(pragma)
    return conn


def open_sync_connection(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A plain connection for the command line (`keys`) and the benchmark's ceiling."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in _pragmas(synchronous, read_only=False):
        conn.execute(pragma)
    return conn


def open_lookup_connection(path: Path) -> sqlite3.Connection:
    """A read-only connection for point lookups run on the event loop itself (see
    Store.find_api_key): it never waits for a lock (busy_timeout 0), the caller falls
    back to a pooled reader when SQLite says busy."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    conn.row_factory = sqlite3.Row
    for pragma in _pragmas("NORMAL", read_only=True):
        conn.execute(pragma)
    conn.execute("PRAGMA busy_timeout = 0")
    return conn


def open_writer_connection(path: Path, synchronous: str) -> sqlite3.Connection:
    """The server's one writer; checkpoints are left to Store's checkpointer (see there)."""
    conn = open_sync_connection(path, synchronous)
    conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
    return conn
