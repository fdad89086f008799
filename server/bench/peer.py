"""The peer the benchmark measures the service against (issue 14): what a Python
developer would build instead — an aiohttp endpoint that enqueues each bulk POST's
body as a huey task on SqliteHuey, and a huey consumer process that inserts the rows
into a `records` table with one unique index. No validation, no row errors, no
heartbeat: two processes that do less. Same payload, same machine, same run as the
service's ingest phase; durability the same as the service's default (SQLite WAL,
synchronous=NORMAL) for both its queue and its records.

huey is a bench-only dependency (`pip install -e ".[bench]"`): it is imported only
inside the peer's own processes, so the rest of the benchmark runs without it.

Run by the benchmark as `python -m server.bench.peer serve|consume --queue Q --records R`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from server.bench.support import (
    ROOT,
    SERVER_START_SECONDS,
    SERVER_STOP_SECONDS,
    SERVING,
    BenchError,
    bulk_body,
    latency_summary,
    process_cpu_seconds,
    record_fields,
    timed_executemany,
)
from server.types import JSON

INSTALL_HINT = 'pip install -e ".[bench]"'
PEER_PREFIX = "ingest"  # the very rows the service's ingest phase sends
POLL_DONE_SECONDS = 0.02
# huey's consumer backs off up to 10 s when its queue is empty; the peer polls at most
# this long, so the measurement does not depend on when the first POST arrives.
CONSUMER_MAX_DELAY_SECONDS = 0.05
TASK_NAME = "insert_rows"

RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    data_stream_key TEXT,
    external_id TEXT NOT NULL,
    date TEXT,
    amount TEXT,
    currency TEXT,
    description TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS records_external_id ON records (external_id);
"""
INSERT_RECORD = (
    "INSERT OR IGNORE INTO records"
    " (data_stream_key, external_id, date, amount, currency, description)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def huey_installed() -> bool:
    try:
        importlib.import_module("huey")
    except ImportError:
        return False
    return True


def open_records(path: Path) -> sqlite3.Connection:
    """The peer's records database: WAL + synchronous=NORMAL, like the service."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(RECORDS_SCHEMA)
    return conn


def _row_values(record: JSON) -> tuple[Any, ...]:
    return (
        record.get("data_stream_key"),
        record["external_id"],
        record.get("date"),
        str(record.get("amount")),
        record.get("currency"),
        record.get("description"),
    )


def measure_one_index_ceiling(db_path: Path, rows: int, tx_rows: int) -> JSON:
    """Plain sqlite3 executemany into the peer's table (one unique index), no HTTP:
    the same rows as the ingest phase, `tx_rows` per transaction; only SQLite is timed."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_records(db_path)
    try:
        return timed_executemany(
            conn,
            INSERT_RECORD,
            rows,
            tx_rows,
            lambda numbers: [_row_values(record_fields(n, PEER_PREFIX)) for n in numbers],
            "one-index ceiling",
        )
    finally:
        conn.close()


# --- the peer's two processes ----------------------------------------------------------------


def build_huey(queue_path: Path, records_path: Path) -> tuple[Any, Any]:
    """The peer's huey (SqliteHuey at synchronous=NORMAL) and its one task."""
    huey = importlib.import_module("huey")
    sqlite_storage: Any = importlib.import_module("huey.storage").SqliteStorage

    class NormalSyncSqliteStorage(sqlite_storage):  # type: ignore[misc]  # huey is untyped
        def _create_connection(self) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._create_connection()
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn

    queue = huey.Huey(
        "bench-peer", results=False, storage_class=NormalSyncSqliteStorage, filename=str(queue_path)
    )
    local = threading.local()

    def insert_rows(body: bytes) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = open_records(records_path)
        values = [_row_values(r) for r in orjson.loads(body)["records"]]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_RECORD, values)
        conn.execute("COMMIT")

    return queue, queue.task(name=TASK_NAME)(insert_rows)


async def _serve(queue_path: Path, records_path: Path) -> None:
    from aiohttp import web

    _, insert_rows = build_huey(queue_path, records_path)

    async def enqueue(request: web.Request) -> web.Response:
        insert_rows(await request.read())  # one durable SqliteHuey enqueue per POST
        return web.json_response({"queued": True}, status=202)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/records/bulk", enqueue)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"Serving on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


def _consume(queue_path: Path, records_path: Path) -> None:
    queue, _ = build_huey(queue_path, records_path)
    consumer = queue.create_consumer(
        workers=1, periodic=False, initial_delay=0.01, max_delay=CONSUMER_MAX_DELAY_SECONDS
    )
    consumer.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.bench.peer")
    parser.add_argument("role", choices=["serve", "consume"])
    parser.add_argument("--queue", type=Path, required=True)
    parser.add_argument("--records", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.role == "serve":
        asyncio.run(_serve(args.queue, args.records))
    else:
        _consume(args.queue, args.records)
    return 0


# --- the measurement ---------------------------------------------------------------------------


class _Process:
    def __init__(self, role: str, directory: Path) -> None:
        self.role = role
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def out(self) -> Path:
        return self.directory / f"{self.role}.out"

    async def start(self) -> None:
        command = [
            sys.executable, "-m", "server.bench.peer", self.role,
            "--queue", str(self.directory / "queue.db"),
            "--records", str(self.directory / "records.db"),
        ]  # fmt: skip
        with self.out.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def check_alive(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            tail = self.out.read_text("utf-8", "replace")[-2000:]
            raise BenchError(f"the peer's {self.role} process died:\n{tail}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # huey's graceful stop; aiohttp's too
        try:
            await asyncio.wait_for(self.proc.wait(), SERVER_STOP_SECONDS)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _serving_url(server: _Process) -> str:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        found = SERVING.search(server.out.read_text("utf-8", "replace"))
        if found:
            return found.group(1)
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError("the peer's server did not start")
        await asyncio.sleep(0.02)


def _stored(records_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(records_path, timeout=5)) as conn:
        try:
            count: int = conn.execute("SELECT count(*) FROM records").fetchone()[0]
        except sqlite3.OperationalError:  # the consumer has not made the table yet
            return 0
        return count


async def measure_peer(work: Path, rows: int, request_rows: int, concurrency: int) -> JSON:
    """The ingest phase's POSTs against the peer: rows/s from the first POST until the
    consumer has inserted every row, and each process's CPU per row."""
    bodies = [
        bulk_body(start, min(request_rows, rows - start), PEER_PREFIX)
        for start in range(0, rows, request_rows)
    ]
    server, consumer = _Process("serve", work), _Process("consume", work)
    try:
        await consumer.start()
        await server.start()
        url = await _serving_url(server)
        assert server.proc is not None
        assert consumer.proc is not None
        pids = {"server": server.proc.pid, "consumer": consumer.proc.pid}
        cpu_before = {k: process_cpu_seconds(pid) or 0.0 for k, pid in pids.items()}
        pending = iter(bodies)
        accept: list[float] = []
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(
            base_url=url, connector=aiohttp.TCPConnector(limit=concurrency + 2)
        ) as session:

            async def client() -> None:
                for body in pending:
                    posted = time.perf_counter()
                    async with session.post("/v1/records/bulk", data=body, headers=headers) as r:
                        await r.read()
                        if r.status != 202:
                            raise BenchError(f"the peer answered {r.status}")
                    accept.append(time.perf_counter() - posted)

            started = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(client())
            deadline = time.monotonic() + 120 + rows / 500
            records_path = work / "records.db"
            while await asyncio.to_thread(_stored, records_path) < rows:
                consumer.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError("peer: rows still not inserted after the deadline")
                await asyncio.sleep(POLL_DONE_SECONDS)
            seconds = time.perf_counter() - started
        cpu = {k: (process_cpu_seconds(pid) or 0.0) - cpu_before[k] for k, pid in pids.items()}
    finally:
        await server.stop()
        await consumer.stop()
    return {
        "rows": rows,
        "requests": len(bodies),
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "server_cpu_us_per_row": round(cpu["server"] / rows * 1e6, 2),
        "consumer_cpu_us_per_row": round(cpu["consumer"] / rows * 1e6, 2),
        "accept": latency_summary(accept),
    }


if __name__ == "__main__":
    sys.exit(main())
