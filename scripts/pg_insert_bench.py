"""How the PostgreSQL adapter's commit_batch should insert records (issue 12): measured.

200,000 rows of the records table's shape (server/db/postgres/migrations.py: its real
indexes and foreign keys) into a fresh migrated database, by 1 and 2 client processes,
each committing one transaction per batch of 1000 rows, as a worker does:
- copy:      asyncpg's copy_records_to_table (binary COPY)
- multirow:  one INSERT … VALUES (…), (…) statement of 1000 rows (queries.multi_row)
- executemany: asyncpg's executemany of the single-row INSERT
and, for on_conflict=skip (COPY cannot say ON CONFLICT):
- multirow_skip: the 1000-row INSERT … ON CONFLICT DO NOTHING (insert_record_unless_duplicate)
- copy_skip:   binary COPY into a temporary table, then INSERT … SELECT … ON CONFLICT DO NOTHING
and, as PostgreSQL's own ceiling, plain COPY of the same rows from a file on the server
(one statement per process: no client encoding, no per-batch commit).

    python scripts/pg_insert_bench.py [--rows 200000] [--repeats 3]

starts a throwaway cluster (tests/pg_cluster.py) and removes it afterwards. Prints rows/s,
the median of the repeats, with every run's figure beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import multiprocessing
import os
import pwd
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.db.postgres.migrations import migrate  # noqa: E402
from server.db.postgres.queries import load_queries, multi_row  # noqa: E402
from tests.pg_cluster import SUPERUSER, PgCluster, find_binaries  # noqa: E402

BATCH_ROWS = 1000
COLUMNS = [
    "data_stream_id",
    "date",
    "amount_minor",
    "currency",
    "description",
    "external_id",
    "metadata",
    "bulk_request_id",
    "row_index",
    "created_at",
]
NOW = "2026-12-02T00:00:00.000000Z"
METHODS = ("copy", "multirow", "executemany", "multirow_skip", "copy_skip")
Row = tuple[Any, ...]


def make_rows(stream_id: int, request_id: int, count: int) -> list[Row]:
    """Rows like an API batch's: unique external ids, a description, some metadata."""
    return [
        (
            stream_id,
            f"2026-{1 + index % 12:02d}-{1 + index % 28:02d}",
            (index * 7919) % 10_000_000 - 5_000_000,
            "USD",
            f"payment {index} for invoice {index * 31 % 100_000}",
            f"ext-{request_id}-{index:08d}",
            f'{{"batch": "bench", "n": {index}}}' if index % 4 == 0 else None,
            request_id,
            index,
            NOW,
        )
        for index in range(count)
    ]


async def insert_batches(dsn: str, method: str, rows: list[Row]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        single = load_queries()["insert_record"].sql
        columns = ", ".join(COLUMNS)
        if method == "copy_skip":
            await conn.execute(
                f"CREATE TEMP TABLE staged_records ON COMMIT DELETE ROWS AS"
                f" SELECT {columns} FROM records WITH NO DATA"
            )
        for start in range(0, len(rows), BATCH_ROWS):
            batch = rows[start : start + BATCH_ROWS]
            async with conn.transaction():
                if method == "copy":
                    await conn.copy_records_to_table("records", records=batch, columns=COLUMNS)
                elif method in ("multirow", "multirow_skip"):
                    name = (
                        "insert_record"
                        if method == "multirow"
                        else "insert_record_unless_duplicate"
                    )
                    flat = [value for row in batch for value in row]
                    await conn.execute(multi_row(name, len(batch)), *flat)
                elif method == "copy_skip":
                    await conn.copy_records_to_table(
                        "staged_records", records=batch, columns=COLUMNS
                    )
                    await conn.execute(
                        f"INSERT INTO records ({columns}) SELECT {columns} FROM staged_records"
                        " ON CONFLICT (data_stream_id, external_id) WHERE external_id IS NOT NULL"
                        " DO NOTHING"
                    )
                else:
                    await conn.executemany(single, batch)
    finally:
        await conn.close()


async def copy_from_server_file(dsn: str, path: Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        columns = ", ".join(COLUMNS)
        await conn.execute(f"COPY records ({columns}) FROM '{path}' WITH (FORMAT csv)")
    finally:
        await conn.close()


def client(
    dsn: str, method: str, stream_id: int, request_id: int, count: int,
    csv_path: str, barrier: Barrier, results: Any,
) -> None:  # fmt: skip
    rows = make_rows(stream_id, request_id, count)
    barrier.wait()
    started = time.perf_counter()
    if method == "ceiling":
        asyncio.run(copy_from_server_file(dsn, Path(csv_path)))
    else:
        asyncio.run(insert_batches(dsn, method, rows))
    results.put((started, time.perf_counter()))


async def seed(dsn: str, processes: int) -> list[tuple[int, int]]:
    """An environment, and per client process a data stream and a bulk request."""
    conn = await asyncpg.connect(dsn)
    try:
        environment = await conn.fetchval(
            "INSERT INTO environments (name, created_at) VALUES ('bench', $1) RETURNING id", NOW
        )
        pairs = []
        for process in range(processes):
            stream = await conn.fetchval(
                "INSERT INTO data_streams (environment_id, key, currency, created_at)"
                " VALUES ($1, $2, 'USD', $3) RETURNING id",
                environment,
                f"stream-{process}",
                NOW,
            )
            request = await conn.fetchval(
                "INSERT INTO bulk_requests (environment_id, status, source, on_conflict,"
                " total_items, created_at, queued_at)"
                " VALUES ($1, 'processing', 'api', 'error', 0, $2, $2) RETURNING id",
                environment,
                NOW,
            )
            pairs.append((stream, request))
        return pairs
    finally:
        await conn.close()


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        for row in rows:
            writer.writerow(["" if value is None else value for value in row])
    if os.geteuid() == 0:
        account = pwd.getpwnam(SUPERUSER)
        os.chown(path, account.pw_uid, account.pw_gid)


def measure(
    cluster: PgCluster, template: str, method: str, processes: int, total_rows: int
) -> float:
    dsn = asyncio.run(cluster.create_database(template=template))
    try:
        pairs = asyncio.run(seed(dsn, processes))
        share = total_rows // processes
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(processes)
        results = context.Queue()
        workers = []
        for index, (stream, request) in enumerate(pairs):
            csv_path = cluster.directory / f"rows-{index}.csv"
            if method == "ceiling":
                write_csv(csv_path, make_rows(stream, request, share))
            args = (dsn, method, stream, request, share, str(csv_path), barrier, results)
            workers.append(context.Process(target=client, args=args))
        for worker in workers:
            worker.start()
        spans = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError(f"{method} client exited with {worker.exitcode}")
        stored = asyncio.run(count_records(dsn))
        if stored != share * processes:
            raise RuntimeError(f"{method}: {stored} rows stored, {share * processes} sent")
        elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
        return share * processes / elapsed
    finally:
        asyncio.run(cluster.drop_database(dsn))


async def count_records(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM records"))
    finally:
        await conn.close()


async def build_template(cluster: PgCluster, name: str) -> None:
    await cluster.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(cluster.dsn(name))
    try:
        await migrate(conn)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    options = parser.parse_args(argv)
    template = "bench_template"
    report: Callable[[str], None] = print
    with PgCluster(find_binaries()) as cluster:
        asyncio.run(build_template(cluster, template))
        report(f"{options.rows} rows, batches of {BATCH_ROWS} rows per transaction; rows/s")
        report(f"{'method':<14} {'clients':>7} {'median':>9}   runs")
        for method in (*METHODS, "ceiling"):
            for processes in options.processes:
                runs = [
                    measure(cluster, template, method, processes, options.rows)
                    for _ in range(options.repeats)
                ]
                figures = " ".join(f"{run:,.0f}" for run in runs)
                median = statistics.median(runs)
                report(f"{method:<14} {processes:>7} {median:>9,.0f}   {figures}")


if __name__ == "__main__":
    main()
