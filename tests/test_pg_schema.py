"""The PostgreSQL schema and named queries (server/db/postgres/) against a throwaway cluster:
migrations apply once, idempotently and concurrently; the schema has every table, column and
index of the SQLite one; every query prepares, and the two query files name the same
statements with the same parameters, but for the deliberate exceptions listed here."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from importlib.resources import files

import asyncpg
import orjson
import pytest

from server.constants import POSTGRES_OUTBOX_CHANNEL
from server.db.postgres.migrations import MIGRATIONS, VERSION_TABLE, migrate
from server.db.postgres.queries import bind, load_queries, multi_row
from server.db.sqlite.migrations import migrate as migrate_sqlite

# Statements only PostgreSQL has, and why.
POSTGRES_ONLY = {
    # Several processes: a dead process's claims are rescued by heartbeat age (SPEC §16);
    # one SQLite process requeues every claim of its own dead workers instead.
    "rescue_stale_requests",
    # The LISTEN/NOTIFY listener reads the events its notifications name.
    "list_outbox_events_by_ids",
    # Uploads are stored in the database, in chunks (SPEC §16); SQLite keeps a file.
    "insert_upload",
    "insert_upload_chunk",
    "complete_upload",
    "get_upload",
    "list_upload_chunks",
    "delete_unreferenced_uploads",
    "delete_upload",
    # Outbox ids are not in commit order with several writers: the dispatcher waits for
    # the open outbox writers before reading the newest id (README "Webhooks").
    "lock_outbox_until_committed",
}
# Parameters only PostgreSQL takes, and why.
POSTGRES_ONLY_PARAMS = {
    # Other processes' claims are not this process's to requeue: only its own workers'.
    "requeue_orphans": {"worker_prefix"},
}
# Tables only PostgreSQL has: the uploads' bytes, and the migrations' version (SQLite
# keeps it in PRAGMA user_version).
POSTGRES_ONLY_TABLES = {"uploads", "upload_chunks", VERSION_TABLE}
POSTGRES_ONLY_INDEXES = {"bulk_requests_heartbeat"}  # rescue_stale_requests' scan

# Statements only SQLite has, and why.
SQLITE_ONLY = {
    # One process owns a SQLite file (the flock): at open, every webhook send lease left
    # is a dead process's. On PostgreSQL a lease runs out instead (another process may
    # hold it).
    "release_webhook_leases",
}

NOW = "2026-12-02T00:00:00.000000Z"


def sqlite_queries() -> dict[str, str]:
    text = files("server.db.sqlite").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = re.split(r"^--\s*name:\s*(\w+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def sqlite_params(sql: str) -> tuple[set[str], int]:
    """The named parameters of a SQLite statement, and its count of positional `?`."""
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return set(re.findall(r"(?<!:):(\w+)", code)), code.count("?")


def sqlite_schema() -> tuple[dict[str, list[str]], set[str]]:
    conn = sqlite3.connect(":memory:")
    migrate_sqlite(conn)
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    columns = {
        table: sorted(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        for table in tables
    }
    indexes = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    conn.close()
    return columns, indexes


@pytest.fixture
async def conn(pg_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_database)
    yield connection
    await connection.close()


async def versions(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")
        return [row["version"] for row in rows]
    finally:
        await connection.close()


async def test_migrations_apply_then_apply_again_as_a_no_op(pg_empty_database: str) -> None:
    connection = await asyncpg.connect(pg_empty_database)
    try:
        assert await migrate(connection) == len(MIGRATIONS)
        assert await migrate(connection) == len(MIGRATIONS)
    finally:
        await connection.close()
    assert await versions(pg_empty_database) == list(range(1, len(MIGRATIONS) + 1))


async def test_migrations_applied_by_two_connections_at_once_apply_once(
    pg_empty_database: str,
) -> None:
    first = await asyncpg.connect(pg_empty_database)
    second = await asyncpg.connect(pg_empty_database)
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
    finally:
        await first.close()
        await second.close()
    assert results == [len(MIGRATIONS), len(MIGRATIONS)]
    assert await versions(pg_empty_database) == list(range(1, len(MIGRATIONS) + 1))


async def test_a_database_newer_than_the_server_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES ($1)", len(MIGRATIONS) + 1)
    with pytest.raises(RuntimeError, match="newer than this server"):
        await migrate(conn)
    # The advisory lock was given back: the next migrate does not hang.
    assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


async def test_the_schema_has_every_table_column_and_index_of_the_sqlite_one(
    conn: asyncpg.Connection,
) -> None:
    sqlite_columns, sqlite_indexes = sqlite_schema()
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public'"
    )
    postgres_columns: dict[str, list[str]] = {}
    for row in rows:
        postgres_columns.setdefault(row["table_name"], []).append(row["column_name"])
    postgres_columns = {
        table: sorted(columns)
        for table, columns in postgres_columns.items()
        if table not in POSTGRES_ONLY_TABLES
    }
    assert postgres_columns == sqlite_columns
    postgres_indexes = {
        row["indexname"]
        for row in await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            # Not the indexes behind PRIMARY KEY and UNIQUE constraints: SQLite's are unnamed.
            " AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'"
        )
    }
    assert postgres_indexes == sqlite_indexes | POSTGRES_ONLY_INDEXES


def test_both_query_files_name_the_same_statements_with_the_same_parameters() -> None:
    sqlite = sqlite_queries()
    postgres = load_queries()
    assert set(postgres) - set(sqlite) == POSTGRES_ONLY
    assert set(sqlite) - set(postgres) == SQLITE_ONLY
    for name, sql in sqlite.items():
        if name in SQLITE_ONLY:
            continue
        named, positional = sqlite_params(sql)
        params = set(postgres[name].params) - POSTGRES_ONLY_PARAMS.get(name, set())
        if positional:
            assert len(postgres[name].params) == positional, name
        else:
            assert params == named, name


async def test_every_query_prepares_against_the_migrated_schema(
    conn: asyncpg.Connection,
) -> None:
    for name, query in load_queries().items():
        try:
            statement = await conn.prepare(query.sql)
        except asyncpg.PostgresError as error:
            pytest.fail(f"{name}: {error}")
        assert len(statement.get_parameters()) == len(query.params), name
    await conn.prepare(multi_row("insert_record", 1000))


async def run(conn: asyncpg.Connection, query: str, **values: object) -> list[asyncpg.Record]:
    sql, args = bind(query, values)
    return await conn.fetch(sql, *args)


async def seed_request(conn: asyncpg.Connection, **overrides: object) -> int:
    await run(conn, "ensure_environment", name="default", now=NOW)
    environment_id = (await run(conn, "get_environment_by_name", name="default"))[0]["id"]
    values: dict[str, object] = {
        "environment_id": environment_id,
        "source": "api",
        "on_conflict": "error",
        "total_items": 10,
        "parsing": 0,
        "upload_format": None,
        "upload_path": None,
        "filename": None,
        "default_data_stream_key": None,
        "nacha_options": None,
        "csv_options": None,
        "run_at": None,
        "mode": "partial",
        "data_stream_id": None,
        "parent_bulk_request_id": None,
        "now": NOW,
    } | overrides
    return int((await run(conn, "insert_bulk_request", **values))[0]["id"])


async def test_claims_from_two_connections_skip_each_others_locked_request(
    pg_database: str,
) -> None:
    first = await asyncpg.connect(pg_database)
    second = await asyncpg.connect(pg_database)
    try:
        older = await seed_request(first)
        newer = await seed_request(first)
        async with first.transaction():
            claimed_first = await run(first, "claim_next_request", now=NOW, worker="a:1")
            # The first claim's row is locked until it commits: the second claim must not
            # wait for it, nor take it, but take the next request.
            claimed_second = await asyncio.wait_for(
                run(second, "claim_next_request", now=NOW, worker="b:1"), timeout=5
            )
        assert [row["id"] for row in claimed_first] == [older]
        assert [row["id"] for row in claimed_second] == [newer]
        assert claimed_second[0]["attempt"] == 1
        assert await run(second, "claim_next_request", now=NOW, worker="b:2") == []
    finally:
        await first.close()
        await second.close()


async def test_stale_claims_of_any_process_are_rescued_fresh_ones_are_not(
    conn: asyncpg.Connection,
) -> None:
    stale, fresh = await seed_request(conn), await seed_request(conn)
    await run(conn, "claim_next_request", now="2026-12-01T23:00:00.000000Z", worker="dead:1")
    await run(conn, "claim_next_request", now=NOW, worker="alive:1")
    rescued = await run(
        conn,
        "rescue_stale_requests",
        now=NOW,
        reason="heartbeat_timeout",
        stale_before="2026-12-01T23:55:00.000000Z",
    )
    assert [row["id"] for row in rescued] == [stale]
    row = (await run(conn, "get_bulk_request_any_environment", id=stale))[0]
    assert row["claimed_by"] is None
    assert row["recoveries"] == 1
    assert orjson.loads(row["error_details"])["recoveries"] == [
        {
            "at": NOW,
            "worker": "dead:1",
            "reason": "heartbeat_timeout",
            "resumed_from_row": 0,
        }
    ]
    still = (await run(conn, "get_bulk_request_any_environment", id=fresh))[0]
    assert still["claimed_by"] == "alive:1"


async def test_requeue_orphans_touches_only_this_processs_workers(
    conn: asyncpg.Connection,
) -> None:
    mine, theirs = await seed_request(conn), await seed_request(conn)
    await run(conn, "claim_next_request", now=NOW, worker="p1:worker-0")
    await run(conn, "claim_next_request", now=NOW, worker="p2:worker-0")
    requeued = await run(
        conn,
        "requeue_orphans",
        now=NOW,
        reason="worker_died",
        live_workers=orjson.dumps(["p1:worker-1"]).decode(),
        worker_prefix="p1:%",
    )
    assert [row["id"] for row in requeued] == [mine]
    assert (await run(conn, "get_bulk_request_any_environment", id=theirs))[0][
        "claimed_by"
    ] == "p2:worker-0"


@pytest.mark.parametrize(
    ("target", "patch"),
    [
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": [1]}, "f": "x"}),
        ({}, {"file": {"errors": [{"line": 3}]}}),
        ({"a": {"b": 1}}, {"a": 5}),
        ({"a": 5}, {"a": {"b": None, "c": 1}}),
        ({"keep": None}, {"other": 1}),
    ],
)
async def test_json_merge_patch_matches_sqlites_json_patch(
    conn: asyncpg.Connection, target: dict[str, object], patch: dict[str, object]
) -> None:
    sqlite = sqlite3.connect(":memory:")
    (expected,) = sqlite.execute(
        "SELECT json_patch(?, ?)", (orjson.dumps(target).decode(), orjson.dumps(patch).decode())
    ).fetchone()
    sqlite.close()
    merged = await conn.fetchval(
        "SELECT json_merge_patch($1::jsonb, $2::jsonb)::text",
        orjson.dumps(target).decode(),
        orjson.dumps(patch).decode(),
    )
    assert orjson.loads(merged) == orjson.loads(expected)


async def test_each_committed_outbox_insert_notifies_and_a_rolled_back_one_does_not(
    pg_database: str,
) -> None:
    listener = await asyncpg.connect(pg_database)
    writer = await asyncpg.connect(pg_database)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(
            POSTGRES_OUTBOX_CHANNEL, lambda *args: received.put_nowait(args[3])
        )
        request = await seed_request(writer)
        row = (await run(writer, "get_bulk_request_any_environment", id=request))[0]
        event = {
            "bulk_request_id": request,
            "environment_id": row["environment_id"],
            "payload": "{}",
            "now": NOW,
        }
        with pytest.raises(RuntimeError):  # noqa: PT012 - the insert, then the rollback
            async with writer.transaction():
                await run(writer, "insert_outbox_event", event_type="rolled_back", **event)
                raise RuntimeError("roll back")
        async with writer.transaction():
            await run(writer, "insert_outbox_event", event_type="created", **event)
            await asyncio.sleep(0.2)
            assert received.empty(), "NOTIFY is delivered at commit, not before"
        notice = orjson.loads(await asyncio.wait_for(received.get(), timeout=5))
        assert notice["event_type"] == "created"
        assert notice["bulk_request_id"] == request
        events = await run(writer, "list_outbox_events_by_ids", ids=[notice["id"]])
        assert [event["event_type"] for event in events] == ["created"]
        assert received.empty()
    finally:
        await listener.close()
        await writer.close()


async def test_an_upload_is_stored_in_chunks_and_read_back_in_order(
    conn: asyncpg.Connection,
) -> None:
    parts = [b"date,amount\n", b"2026-01-01,1.00\n" * 1000, b"2026-01-02,2.00\n"]
    await run(conn, "insert_upload", name="u1", now=NOW)
    for seq, body in enumerate(parts):
        await run(conn, "insert_upload_chunk", name="u1", seq=seq, body=body)
    completed = await run(conn, "complete_upload", name="u1", now=NOW)
    assert completed[0]["byte_count"] == sum(len(part) for part in parts)
    read: list[bytes] = []
    while chunks := await run(conn, "list_upload_chunks", name="u1", from_seq=len(read), limit=2):
        read.extend(chunk["body"] for chunk in chunks)
    assert b"".join(read) == b"".join(parts)
    # Referenced by a request: kept. Once no request refers to it: deleted, chunks too.
    request = await seed_request(conn, upload_path="u1", source="upload", parsing=1)
    assert await run(conn, "delete_unreferenced_uploads", not_before=NOW) == []
    await run(conn, "clear_upload_path", id=request)
    deleted = await run(conn, "delete_unreferenced_uploads", not_before=NOW)
    assert [row["name"] for row in deleted] == ["u1"]
    assert await conn.fetchval("SELECT count(*) FROM upload_chunks") == 0


async def test_existing_external_ids_are_found_by_stream_and_id(
    conn: asyncpg.Connection,
) -> None:
    request = await seed_request(conn)
    environment_id = (await run(conn, "get_environment_by_name", name="default"))[0]["id"]
    streams = []
    for key in ("a", "b"):
        created = await run(
            conn,
            "insert_data_stream",
            environment_id=environment_id,
            key=key,
            name=None,
            currency="USD",
            now=NOW,
        )
        streams.append(created[0]["id"])
    rows = [
        (streams[0], "2026-01-01", 100, "USD", None, "x-1", None, request, 0, NOW),
        (streams[1], "2026-01-01", 100, "USD", None, "x-2", None, request, 1, NOW),
        (streams[0], "2026-01-01", 100, "USD", None, None, None, request, 2, NOW),
    ]
    await conn.execute(multi_row("insert_record", len(rows)), *[v for row in rows for v in row])
    pairs = [[streams[0], "x-1"], [streams[0], "x-2"], [streams[1], "x-2"], [streams[1], "x-3"]]
    found = await run(conn, "find_existing_external_ids", pairs=orjson.dumps(pairs).decode())
    assert sorted((row["data_stream_id"], row["external_id"]) for row in found) == [
        (streams[0], "x-1"),
        (streams[1], "x-2"),
    ]
