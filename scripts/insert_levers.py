"""Measure the writer's insert levers on the service's own schema (issue 14, "the insert").

    python scripts/insert_levers.py [--prefill 200000] [--rows 100000] [--repeat 3]

Each variant inserts `--rows` rows (made by the server's own validate_row, like the
bench's ceiling) into a copy of one database already holding `--prefill` rows, in
500-row transactions, on the writer's connection settings; it prints µs/row (best and
worst of `--repeat`). Variants: the statement form (executemany, the worker's multi-row
VALUES, INSERT … SELECT FROM json_each), each index of `records` dropped in turn, foreign
keys off, and the PRAGMAs cache_size / mmap_size / temp_store. The timed part includes
building the statement's parameters from ready tuples (what the worker does per batch).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.bench.scenarios import measure_ceiling
from server.bench.support import record_fields
from server.constants import MAX_ROWS_PER_INSERT
from server.db.sqlite.connection import open_writer_connection
from server.db.sqlite.queries import Q, multi_row
from server.ingest.validation import StreamRef, ValidRecord, validate_row

TX_ROWS = 500
COLUMNS = (
    "data_stream_id, date, amount_minor, currency, description, external_id, metadata,"
    " bulk_request_id, row_index, created_at"
)
JSON_EACH_INSERT = (
    f"INSERT INTO records ({COLUMNS}) SELECT value->>0, value->>1, value->>2, value->>3,"
    " value->>4, value->>5, value->>6, value->>7, value->>8, value->>9 FROM json_each(?)"
    " WHERE true ON CONFLICT (data_stream_id, external_id) WHERE external_id IS NOT NULL"
    " DO NOTHING"
)
PLAIN_INSERT_NAME = "insert_record"  # no ON CONFLICT: for the variant without that index

Rows = Sequence[tuple[Any, ...]]
Insert = Callable[[sqlite3.Connection, Rows], None]


def executemany(conn: sqlite3.Connection, rows: Rows) -> None:
    conn.executemany(Q.insert_record_unless_duplicate, rows)


def multi_values(chunk: int, name: str = "insert_record_unless_duplicate") -> Insert:
    def insert(conn: sqlite3.Connection, rows: Rows) -> None:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            conn.execute(multi_row(name, len(part)), [v for row in part for v in row])

    return insert


def json_each(conn: sqlite3.Connection, rows: Rows) -> None:
    conn.execute(JSON_EACH_INSERT, (orjson.dumps(rows).decode(),))


def make_rows(conn: sqlite3.Connection, count: int) -> list[tuple[Any, ...]]:
    stream_id, currency = conn.execute("SELECT id, currency FROM data_streams").fetchone()
    request_ids = [r[0] for r in conn.execute("SELECT id FROM bulk_requests ORDER BY id")]
    streams = {"bench": StreamRef(stream_id, currency)}
    rows = []
    for n in range(count):
        record = validate_row(record_fields(n, "lever"), streams)
        assert isinstance(record, ValidRecord)
        # 1000 consecutive rows per request, at positions past the prefill's 1000 (never a
        # duplicate), so each index is appended to in order as a real request's rows are.
        chunk, position = divmod(n, 1000)
        lap, index = divmod(chunk, len(request_ids))
        row_index = 1000 * (1 + lap) + position
        rows.append((*record, request_ids[index], row_index, "2026-12-01T00:00:00Z"))
    return rows


def run_variant(
    base: Path, work: Path, rows: Rows, insert: Insert, setup: Sequence[str], tx_rows: int
) -> float:
    db = work / "variant.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(base, db)
    conn = open_writer_connection(db, "NORMAL")
    try:
        for statement in setup:
            conn.execute(statement)
        started = time.perf_counter()
        for start in range(0, len(rows), tx_rows):
            conn.execute("BEGIN IMMEDIATE")
            insert(conn, rows[start : start + tx_rows])
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
        stored = conn.execute("SELECT count(*) FROM records WHERE row_index >= 1000").fetchone()
    finally:
        conn.close()
    assert stored[0] == len(rows), (stored[0], len(rows))
    return seconds / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    plain = multi_values(MAX_ROWS_PER_INSERT, PLAIN_INSERT_NAME)
    worker = multi_values(MAX_ROWS_PER_INSERT)
    variants: list[tuple[str, Insert, list[str], int]] = [
        ("multi-row VALUES 500 (the worker's), 500-row tx", worker, [], TX_ROWS),
        ("executemany, 500-row tx", executemany, [], TX_ROWS),
        ("multi-row VALUES 1000, 1000-row tx", multi_values(1000), [], 1000),
        ("multi-row VALUES 500, 1000-row tx", worker, [], 1000),
        ("json_each, 500-row tx", json_each, [], TX_ROWS),
        ("json_each, 1000-row tx", json_each, [], 1000),
        ("without records_external_id", plain, ["DROP INDEX records_external_id"], TX_ROWS),
        ("without records_request_row", worker, ["DROP INDEX records_request_row"], TX_ROWS),
        ("without records_stream", worker, ["DROP INDEX records_stream"], TX_ROWS),
        ("foreign_keys OFF", worker, ["PRAGMA foreign_keys = OFF"], TX_ROWS),
        (
            "no index, foreign_keys OFF (rowid table only)",
            plain,
            [
                "DROP INDEX records_external_id",
                "DROP INDEX records_request_row",
                "DROP INDEX records_stream",
                "PRAGMA foreign_keys = OFF",
            ],
            TX_ROWS,
        ),
        ("cache_size 8 MB", worker, ["PRAGMA cache_size = -8000"], TX_ROWS),
        ("cache_size 128 MB", worker, ["PRAGMA cache_size = -128000"], TX_ROWS),
        ("mmap_size 256 MB", worker, ["PRAGMA mmap_size = 268435456"], TX_ROWS),
        ("temp_store DEFAULT (file)", worker, ["PRAGMA temp_store = DEFAULT"], TX_ROWS),
    ]
    with tempfile.TemporaryDirectory(prefix="insert-levers-") as tmp:
        work = Path(tmp)
        base = work / "base.db"
        measure_ceiling(base, args.prefill, 1000, TX_ROWS)
        conn = sqlite3.connect(base)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = make_rows(conn, args.rows)
        conn.close()
        print(
            f"{args.rows:,} rows into a table of {args.prefill:,}; µs/row best–worst; each run "
            "follows a run of the worker's form (multi-row VALUES 500, 500-row tx) and the "
            "ratio to it is the median (the machine is shared: only back-to-back pairs compare)"
        )
        for name, insert, setup, tx_rows in variants[1:]:
            times, ratios = [], []
            for _ in range(args.repeat):
                reference = run_variant(base, work, rows, worker, [], TX_ROWS)
                times.append(run_variant(base, work, rows, insert, setup, tx_rows))
                ratios.append(times[-1] / reference)
            ratio = statistics.median(ratios)
            print(f"{name:<48} {min(times):5.2f}–{max(times):5.2f}  ×{ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
