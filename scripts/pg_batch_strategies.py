"""How should one on_conflict=skip batch reach the records table? (issue 12, profiling)

Times, per 500-row batch in its own transaction on one connection, on the server's own
migrated schema (its unique indexes and foreign keys) and the bench's rows:
- staged: what the adapter does (COPY into the temp table, INSERT … SELECT … ON CONFLICT DO
  NOTHING, DELETE the temp rows): 3 statements, 4 round trips;
- unnest: one
  `INSERT … SELECT FROM unnest($1::bigint[], …) ON CONFLICT DO NOTHING`;
- copy: plain COPY into records (what on_conflict=error does after its duplicate lookup),
  the reference.
Strategies are interleaved in a shuffled order per round (the machine is shared and noisy);
for each: the median rows/s and the CPU per row of the PostgreSQL backend (read from
/proc, so the cluster must run on this machine) and of this client.

    python scripts/pg_batch_strategies.py                 # a throwaway cluster of its own
    python scripts/pg_batch_strategies.py --database-url postgresql://…  # CREATEDB needed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.bench.pg_cluster import Cluster, find_binaries
from server.bench.postgres import _copy_setup, create_database, drop_database
from server.bench.support import process_cpu_seconds
from server.db.postgres.tx import (
    _INSERT_STAGED_SKIPPING_DUPLICATES,
    CREATE_STAGED_RECORDS,
    RECORD_COLUMNS,
    STAGED_RECORDS_TABLE,
)

BATCH_ROWS = 500
RECORD_TYPES = (
    "bigint",
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "bigint",
    "text",
)
UNNEST = (
    f"INSERT INTO records ({', '.join(RECORD_COLUMNS)})"
    f" SELECT * FROM unnest({', '.join(f'${n}::{t}[]' for n, t in enumerate(RECORD_TYPES, 1))})"
    f" AS batch ({', '.join(RECORD_COLUMNS)}) ORDER BY row_index"
    " ON CONFLICT (data_stream_id, external_id) WHERE external_id IS NOT NULL DO NOTHING"
)
Strategy = Callable[[asyncpg.Connection, list[Any]], Awaitable[None]]


async def staged(conn: asyncpg.Connection, rows: list[Any]) -> None:
    await conn.copy_records_to_table(STAGED_RECORDS_TABLE, records=rows, columns=RECORD_COLUMNS)
    await conn.execute(_INSERT_STAGED_SKIPPING_DUPLICATES)
    await conn.execute(f"DELETE FROM {STAGED_RECORDS_TABLE}")


async def unnest(conn: asyncpg.Connection, rows: list[Any]) -> None:
    await conn.execute(UNNEST, *[list(column) for column in zip(*rows, strict=True)])


async def copy(conn: asyncpg.Connection, rows: list[Any]) -> None:
    await conn.copy_records_to_table("records", records=rows, columns=RECORD_COLUMNS)


STRATEGIES: dict[str, Strategy] = {
    "staged (COPY temp + INSERT ON CONFLICT + DELETE)": staged,
    "unnest (one INSERT ON CONFLICT)": unnest,
    "copy (plain COPY, no conflict handling)": copy,
}


async def measure(admin_url: str, rounds: int, batches: int) -> None:
    name = f"bulk_strategies_{secrets.token_hex(4)}"
    url = await create_database(admin_url, name)
    try:
        setup = await asyncpg.connect(url)
        try:
            rows_needed = rounds * len(STRATEGIES) * batches * BATCH_ROWS
            values = await _copy_setup(setup, rows_needed, BATCH_ROWS)
        finally:
            await setup.close()
        chunks = iter([values[n : n + BATCH_ROWS] for n in range(0, len(values), BATCH_ROWS)])
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(CREATE_STAGED_RECORDS)
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in STRATEGIES}
            for round_number in range(rounds):
                order = list(STRATEGIES.items())
                random.Random(round_number).shuffle(order)
                for label, strategy in order:
                    db_before = process_cpu_seconds(backend) or 0.0
                    client_before, started = time.process_time(), time.perf_counter()
                    for _ in range(batches):
                        batch = next(chunks)
                        async with conn.transaction():
                            await strategy(conn, batch)
                    seconds = time.perf_counter() - started
                    db = (process_cpu_seconds(backend) or 0.0) - db_before
                    runs[label].append((seconds, db, time.process_time() - client_before))
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, name)
    rows = batches * BATCH_ROWS
    for label, measured in runs.items():
        measured.sort()
        seconds, db, client = measured[len(measured) // 2]
        print(
            f"{label:<50} {rows / seconds:>8,.0f} rows/s (median of {rounds}; "
            f"all {[round(rows / m[0]) for m in measured]}), backend "
            f"{db / rows * 1e6:.1f} µs/row, client {client / rows * 1e6:.1f} µs/row"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40, help="batches per strategy and round")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.database_url or stack.enter_context(Cluster(find_binaries())).dsn()
        asyncio.run(measure(url, args.rounds, args.batches))


if __name__ == "__main__":
    main()
