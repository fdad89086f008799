"""`python run.py bench --database-url … / --postgres-throwaway`: ingest on PostgreSQL.

The same ingest scenario as the SQLite bench (same rows, same 1000-row POSTs, same
concurrent clients, `measure_ingest`) against 1, 2, 4… `run.py` processes sharing one
PostgreSQL database, beside the SQLite single-process figure of the same run and
PostgreSQL's own ceiling: plain binary `COPY` (`copy_records_to_table`, what the adapter
uses) of the same rows into the same migrated records table (its unique indexes and
foreign keys), in server-batch-sized transactions, from 1 and 2 connections.

Several processes behind one port: the service has no SO_REUSEPORT flag (README "Running on
PostgreSQL"), so each process gets its own port and the client spreads its concurrent
posters over them, as a load balancer would. Every phase runs on a fresh database created
on the target server (`CREATE DATABASE bulk_bench_…`: the URL's role needs CREATEDB) and
dropped afterwards; the database the URL names is never touched.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from server.bench.scenarios import INGEST_PREFIX, measure_ingest
from server.bench.support import (
    STREAM_CURRENCY,
    STREAM_KEY,
    Api,
    BenchError,
    ServerProcess,
    process_cpu_seconds,
    rate,
    record_fields,
)
from server.clock import now_rfc3339
from server.db.postgres.migrations import migrate
from server.db.postgres.tx import PgTx
from server.ingest.validation import StreamRef, ValidRecord, validate_row
from server.types import JSON

DEFAULT_PROCESSES = (1, 2, 4)
COPY_CLIENTS = (1, 2)  # the ceiling from one connection and from one per core
# The targets for PostgreSQL ingest, each against a figure of the same run.
TWO_PROCESSES_OVER_ONE = 1.3
ONE_PROCESS_OVER_SQLITE = 0.6
ADMIN_CONNECT_TIMEOUT_SECONDS = 10


def database_url(server_url: str, database: str) -> str:
    """`server_url` with its database (the path) replaced, credentials and query kept."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + database))


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url, timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError as exc:
        raise BenchError(
            f"the bench creates a fresh database per phase and drops it; the role of "
            f"--database-url needs CREATEDB ({exc})"
        ) from exc
    finally:
        await conn.close()
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def cluster_cpu_seconds(postmaster_pid: int | None) -> float | None:
    """CPU of the postmaster and all its children (backends, WAL writer, checkpointer).

    Only known for a cluster on this machine whose postmaster we know (the throwaway one).
    """
    if postmaster_pid is None:
        return None
    total = process_cpu_seconds(postmaster_pid)
    if total is None:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == postmaster_pid:  # field 4, ppid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def postgres_version(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def count_records(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM records"))
    finally:
        await conn.close()


# --- PostgreSQL's ceiling: plain COPY --------------------------------------------------------


async def _copy_setup(conn: asyncpg.Connection, rows: int, request_rows: int) -> list[Any]:
    """The schema (the server's migrations), a stream, one parent request per POST-sized
    slice (records.bulk_request_id is a foreign key), then the rows the ingest sends."""
    await migrate(conn)
    tx = PgTx(conn)
    async with conn.transaction():
        env_id = await tx.ensure_environment("bench")
        stream = await tx.one(
            "insert_data_stream",
            environment_id=env_id,
            key=STREAM_KEY,
            name=None,
            currency=STREAM_CURRENCY,
            now=now_rfc3339(),
        )
        assert stream is not None
        request_ids = [
            (
                await tx.insert_bulk_request(
                    environment_id=env_id,
                    source="bulk_api",
                    on_conflict="skip",
                    total_items=min(request_rows, rows - start),
                    data_stream_id=stream["id"],
                )
            ).id
            for start in range(0, rows, request_rows)
        ]
    streams = {STREAM_KEY: StreamRef(stream["id"], stream["currency"])}
    now = now_rfc3339()
    values: list[Any] = []
    for n in range(rows):
        # The server's own validation makes the column values, as in the SQLite ceiling.
        record = validate_row(record_fields(n, INGEST_PREFIX), streams)
        assert isinstance(record, ValidRecord), record
        values.append((*record, request_ids[n // request_rows], n % request_rows, now))
    return values


async def measure_copy_ceiling(
    url: str, rows: int, request_rows: int, tx_rows: int, clients: int
) -> JSON:
    """`clients` connections COPY disjoint `tx_rows`-row transactions of the same rows."""
    setup = await asyncpg.connect(url)
    try:
        values = await _copy_setup(setup, rows, request_rows)
    finally:
        await setup.close()
    # Built before the clock starts: only PostgreSQL's work (and the driver's encoding) is
    # timed. Transactions are dealt round-robin so every client has the same share.
    chunks = [values[start : start + tx_rows] for start in range(0, rows, tx_rows)]
    del values
    connections = [await asyncpg.connect(url) for _ in range(clients)]
    try:
        # The adapter's COPY: PgTx.insert_records is copy_records_to_table on these columns.
        async def copy(tx: PgTx, mine: Sequence[list[Any]]) -> None:
            for chunk in mine:
                async with tx.conn.transaction():
                    await tx.insert_records(chunk)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for n, conn in enumerate(connections):
                group.create_task(copy(PgTx(conn), chunks[n::clients]))
        seconds = time.perf_counter() - started
        stored = int(await connections[0].fetchval("SELECT count(*) FROM records"))
    finally:
        for conn in connections:
            await conn.close()
    if stored != rows:
        raise BenchError(f"COPY ceiling: {stored} records stored, expected {rows}")
    return {
        "rows": rows,
        "clients": clients,
        "rows_per_transaction": tx_rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
    }


# --- ingest through N server processes -----------------------------------------------------


async def measure_pg_ingest(
    url: str,
    processes: int,
    work: Path,
    api_key: str,
    settings: JSON,
    postmaster_pid: int | None,
) -> tuple[JSON, list[JSON]]:
    """The ingest scenario on `processes` servers sharing the database at `url`."""
    rows, concurrency = settings["rows"], settings["concurrency"]
    servers = [
        ServerProcess(
            f"postgres-{processes}p-{n}",
            work / f"postgres-{processes}p" / str(n),
            api_key,
            workers=settings["workers"],
            batch_size=settings["batch_size"],
            database_url=url,
        )
        for n in range(processes)
    ]
    async with AsyncExitStack() as stack:
        for server in servers:
            stack.push_async_callback(server.stop)
        # The first applies the migrations; the others find them applied.
        await servers[0].start()
        await asyncio.gather(*(server.start() for server in servers[1:]))
        # Each process takes its share of the posters, plus room for the polling.
        per_process = -(-concurrency // processes) + 4
        apis = [await stack.enter_async_context(Api(s, per_process)) for s in servers]
        await apis[0].create_stream()
        pg_before = cluster_cpu_seconds(postmaster_pid)
        result = await measure_ingest(apis, rows, settings["request_rows"], concurrency)
        pg_after = cluster_cpu_seconds(postmaster_pid)
        for server in servers:
            server.check_alive()
    result["processes"] = processes
    result["database_cpu_us_per_row"] = (
        round((pg_after - pg_before) / rows * 1e6, 2)
        if pg_before is not None and pg_after is not None
        else None
    )
    # Counted in the database itself, not only from the API's summaries.
    result["records_in_database"] = await count_records(url)
    if result["records_in_database"] != rows:
        raise BenchError(
            f"{processes}-process ingest: {result['records_in_database']} records in the "
            f"database, expected {rows}"
        )
    return result, [s.memory() for s in servers]


async def run_postgres_phases(
    result: JSON,
    settings: JSON,
    work: Path,
    api_key: str,
    admin_url: str,
    postmaster_pid: int | None,
    progress: Any,
) -> None:
    """The COPY ceilings and the N-process ingests, each on a database of its own."""
    rows, request_rows = settings["rows"], settings["request_rows"]
    token = secrets.token_hex(4)
    result["postgres_copy"] = []
    for clients in COPY_CLIENTS:
        progress(f"PostgreSQL COPY ceiling: {rows} rows from {clients} connection(s)")
        name = f"bulk_bench_{token}_copy{clients}"
        url = await create_database(admin_url, name)
        try:
            result["postgres_copy"].append(
                await measure_copy_ceiling(url, rows, request_rows, settings["batch_size"], clients)
            )
        finally:
            await drop_database(admin_url, name)
    result["postgres"] = []
    for processes in settings["processes"]:
        progress(f"PostgreSQL ingest: {rows} rows, {processes} server process(es)")
        name = f"bulk_bench_{token}_{processes}p"
        url = await create_database(admin_url, name)
        try:
            measured, memory = await measure_pg_ingest(
                url, processes, work, api_key, settings, postmaster_pid
            )
        finally:
            await drop_database(admin_url, name)
        result["postgres"].append(measured)
        result["servers"][f"postgres-{processes}p"] = memory[0]
    _ratios(result)


def _by_processes(result: JSON, processes: int) -> JSON | None:
    return next((p for p in result.get("postgres", []) if p["processes"] == processes), None)


def _ratios(result: JSON) -> None:
    sqlite = result["ingest"]["rows_per_s"]
    one = _by_processes(result, 1)
    copy = result["postgres_copy"][0]["rows_per_s"]
    for measured in result["postgres"]:
        measured["ratio_to_sqlite"] = round(measured["rows_per_s"] / sqlite, 3)
        measured["ratio_to_copy"] = round(measured["rows_per_s"] / copy, 3)
        if one is not None:
            measured["ratio_to_one_process"] = round(measured["rows_per_s"] / one["rows_per_s"], 3)


def postgres_targets(result: JSON) -> list[JSON]:
    one, two = _by_processes(result, 1), _by_processes(result, 2)

    def target(name: str, value: float | None, limit: float) -> JSON:
        return {
            "name": name,
            "value": value,
            "limit": limit,
            "ok": None if value is None else value >= limit,
        }

    return [
        target(
            "postgres_1p_ratio_to_sqlite",
            one["ratio_to_sqlite"] if one else None,
            ONE_PROCESS_OVER_SQLITE,
        ),
        target(
            "postgres_2p_ratio_to_1p",
            two.get("ratio_to_one_process") if two else None,
            TWO_PROCESSES_OVER_ONE,
        ),
    ]


def render_postgres_table(result: JSON) -> str:
    m, s = result["machine"], result["settings"]
    marks = {t["name"]: {True: "✓", False: "✗", None: "-"}[t["ok"]] for t in result["targets"]}
    lines = [
        f"bulk-requests benchmark on PostgreSQL — {m['cpu_count']} CPU cores, Python "
        f"{m['python']}, SQLite {m['sqlite']}, PostgreSQL {result.get('postgres_version', '?')}",
        f"settings: rows {s['rows']:,} ({s['request_rows']}/POST, {s['concurrency']} "
        f"concurrent), workers {s['workers']} per process, batch size {s['batch_size']}; "
        f"load average at start {m.get('load_average', '?')}",
        "client, servers and database share this machine: numbers are noisy when anything "
        "else runs; CPU is µs per row (servers / database / client), known for the database "
        "only on a throwaway cluster",
        "",
        f"{'measure':<34} {'rows/s':>10}  {'ratios':<40} {'CPU µs/row':<34} target",
        "-" * 136,
    ]

    def cpu(part: JSON, *, in_process: bool = False) -> str:
        # SQLite's work is done inside the server process: its database CPU is 0 here.
        pg = 0.0 if in_process else part.get("database_cpu_us_per_row")
        pg_text = f"{pg:.1f}" if pg is not None else "?"
        server, client = part["server_cpu_us_per_row"], part["client_cpu_us_per_row"]
        text = f"{server:.1f} / {pg_text} / {client:.1f}"
        if pg is not None:
            # Cores kept busy: CPU per row times rows per second; 2 is all of this machine.
            text += f" = {(server + pg + client) * part['rows_per_s'] / 1e6:.2f} cores"
        return text

    i = result["ingest"]
    sqlite_cpu = cpu(i, in_process=True)
    lines.append(f"{'SQLite, 1 process':<34} {i['rows_per_s']:>10,.0f}  {'':<40} {sqlite_cpu}")
    for c in result["postgres_copy"]:
        label = f"PostgreSQL COPY, {c['clients']} connection(s)"
        ratio = f"{c['rows_per_s'] / i['rows_per_s']:.2f}× SQLite"
        lines.append(f"{label:<34} {c['rows_per_s']:>10,.0f}  {ratio:<40}")
    for p in result["postgres"]:
        n = p["processes"]
        ratios = f"{p['ratio_to_sqlite']:.2f}× SQLite, {p['ratio_to_copy']:.2f}× COPY"
        if "ratio_to_one_process" in p and n != 1:
            ratios += f", {p['ratio_to_one_process']:.2f}× 1 proc"
        target = ""
        if n == 1:
            target = f"≥ {ONE_PROCESS_OVER_SQLITE}× SQLite {marks['postgres_1p_ratio_to_sqlite']}"
        elif n == 2:
            target = f"≥ {TWO_PROCESSES_OVER_ONE}× 1 proc {marks['postgres_2p_ratio_to_1p']}"
        label = f"PostgreSQL, {n} process{'es' if n > 1 else ''}"
        lines.append(f"{label:<34} {p['rows_per_s']:>10,.0f}  {ratios:<40} {cpu(p):<34} {target}")
    for p in [i, *result["postgres"]]:
        a = p["accept"]
        label = f"accept p50/p99 ({p.get('processes', 'SQLite')})"
        lines.append(f"{label:<34} {a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms")
    return "\n".join(line.rstrip() for line in lines)
