"""`python run.py bench` — measure the real server against SQLite's own ceiling.

Phases, each on a fresh database so one cannot slow the next:
1. raw ceiling: the ingest rows written with plain sqlite3 (no server);
2–3. ingest: N x 1000-row `POST /v1/records/bulk` from concurrent clients;
4. cancel: requests cancelled mid-processing, on a server with a small batch size;
5–6. a large CSV upload, with 10-row requests probing fairness while it runs.
The numbers go out as a table (targets marked ✓/✗) or, with --json, one JSON object.
With --database-url or --postgres-throwaway it measures ingest on PostgreSQL instead
(server/bench/postgres.py): SQLite's single-process ingest, PostgreSQL's COPY ceiling,
then ingest with each --processes count on one database.
Helpers live in `support.py` (server process, client, data), `scenarios.py` (the
measurements) and `report.py` (the targets and the table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from server.bench.peer import INSTALL_HINT, huey_installed, measure_one_index_ceiling, measure_peer
from server.bench.pg_cluster import Cluster, find_binaries
from server.bench.postgres import (
    DEFAULT_PROCESSES,
    postgres_targets,
    postgres_version,
    render_postgres_table,
    run_postgres_phases,
)
from server.bench.report import evaluate_targets, render_table
from server.bench.scenarios import measure_cancel, measure_ceiling, measure_ingest, measure_upload
from server.bench.support import Api, BenchError, ServerProcess, write_csv
from server.config import positive_float, positive_int
from server.types import JSON

CEILING_TX_ROWS = 500
CANCEL_REQUEST_ROWS = 1000  # the most one POST may carry


def _count(text: str) -> int:
    value = int(text)  # int() takes 1_000_000 as well
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _process_counts(text: str) -> tuple[int, ...]:
    counts = tuple(positive_int(part) for part in text.split(","))
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"each process count once, got {text}")
    return counts


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    # dest names are prefixed: the top-level parser already owns `workers`/`batch_size`
    # (the serve flags) in the same namespace.
    add = parser.add_argument
    add(
        "--rows",
        metavar="N",
        dest="bench_rows",
        type=_count,
        default=500_000,
        help="rows sent through POST /v1/records/bulk; 0 skips ingest (default 500000)",
    )
    add(
        "--request-rows",
        metavar="N",
        dest="bench_request_rows",
        type=positive_int,
        default=1000,
        help="rows per bulk POST, at most 1000 (default 1000)",
    )
    add(
        "--concurrency",
        metavar="N",
        dest="bench_concurrency",
        type=positive_int,
        default=8,
        help="concurrent clients posting (default 8)",
    )
    add(
        "--workers",
        metavar="N",
        dest="bench_workers",
        type=positive_int,
        default=2,
        help="server worker tasks (default 2)",
    )
    add(
        "--batch-size",
        metavar="N",
        dest="bench_batch_size",
        type=positive_int,
        default=500,
        help="server batch size for ingest and upload (default 500)",
    )
    add(
        "--cancel-rounds",
        metavar="N",
        dest="bench_cancel_rounds",
        type=_count,
        default=15,
        help="requests cancelled mid-processing; 0 skips (default 15)",
    )
    add(
        "--cancel-batch-size",
        metavar="N",
        dest="bench_cancel_batch_size",
        type=positive_int,
        default=20,
        help="batch size of the cancel phase's server: a 1000-row request must take "
        "many batches to be caught mid-processing (default 20)",
    )
    add(
        "--csv-rows",
        metavar="N",
        dest="bench_csv_rows",
        type=_count,
        default=1_000_000,
        help="rows in the uploaded CSV file; 0 skips upload and fairness (default 1000000)",
    )
    add(
        "--probe-interval",
        metavar="SECONDS",
        dest="bench_probe_interval",
        type=positive_float,
        default=1.0,
        help="seconds between 10-row probe requests during the upload (default 1.0)",
    )
    add(
        "--workdir",
        metavar="DIR",
        dest="bench_workdir",
        type=Path,
        default=None,
        help="where the temporary databases and CSV go (default: the system temp dir)",
    )
    add(
        "--keep",
        dest="bench_keep",
        action="store_true",
        help="keep the temporary files (databases, CSV, server logs) for inspection",
    )
    add(
        "--no-peer",
        dest="bench_peer",
        action="store_false",
        help="skip the huey peer (aiohttp + SqliteHuey consumer) measured beside ingest",
    )
    add(
        "--database-url",
        metavar="URL",
        dest="bench_database_url",
        default=None,
        help="PostgreSQL server to measure ingest on (postgresql://…; its role needs "
        "CREATEDB: each phase runs on a fresh database, dropped afterwards); runs the ingest "
        "scenario only, beside SQLite's figure and PostgreSQL's COPY ceiling",
    )
    add(
        "--postgres-throwaway",
        dest="bench_postgres_throwaway",
        action="store_true",
        help="as --database-url, on a cluster of its own (initdb + pg_ctl in a temp dir, "
        "removed afterwards; needs Debian's postgresql)",
    )
    add(
        "--processes",
        metavar="N[,N…]",
        dest="bench_processes",
        type=_process_counts,
        default=None,
        help="server processes sharing the PostgreSQL database, one run each (default 1,2,4)",
    )
    add("--json", action="store_true", help="print one JSON object instead of the table")


def _settings(args: argparse.Namespace) -> JSON:
    request_rows = args.bench_request_rows
    if request_rows > 1000:
        raise BenchError("--request-rows must be at most 1000 (the API's limit per POST)")
    postgres = args.bench_database_url is not None or args.bench_postgres_throwaway
    if args.bench_database_url is not None and args.bench_postgres_throwaway:
        raise BenchError("give --database-url or --postgres-throwaway, not both")
    if args.bench_processes is not None and not postgres:
        raise BenchError("--processes needs --database-url or --postgres-throwaway")
    if postgres and not args.bench_rows:
        raise BenchError("the PostgreSQL bench measures ingest: --rows must be more than 0")
    processes = args.bench_processes or DEFAULT_PROCESSES
    return {
        "postgres": postgres,
        "processes": list(processes) if postgres else None,
        "rows": args.bench_rows,
        "request_rows": request_rows,
        "concurrency": args.bench_concurrency,
        "workers": args.bench_workers,
        "batch_size": args.bench_batch_size,
        "cancel_rounds": args.bench_cancel_rounds,
        "cancel_batch_size": args.bench_cancel_batch_size,
        "csv_rows": args.bench_csv_rows,
        "probe_interval_s": args.bench_probe_interval,
        "peer": args.bench_peer,
    }


def _machine() -> JSON:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def _progress(quiet: bool, message: str) -> None:
    # Progress goes to stderr so `--json` output stays one clean object on stdout.
    if not quiet:
        print(f"… {message}", file=sys.stderr, flush=True)


async def _with_server(
    work: Path,
    name: str,
    api_key: str,
    *,
    workers: int,
    batch_size: int,
    connections: int,
    body: Callable[[Api], Awaitable[JSON]],
) -> tuple[JSON, JSON]:
    """Run `body(api)` against a fresh server; returns (its result, server memory)."""
    server = ServerProcess(name, work / name, api_key, workers=workers, batch_size=batch_size)
    try:
        await server.start()
        async with Api(server, connections) as api:
            await api.create_stream()
            result = await body(api)
        server.check_alive()
    finally:
        await server.stop()
    return result, server.memory()


async def _run_postgres(
    settings: JSON, work: Path, quiet: bool, admin_url: str, postmaster_pid: int | None
) -> JSON:
    """SQLite's single-process ingest, then PostgreSQL's COPY and N-process ingests."""
    api_key = "bk_bench_" + secrets.token_urlsafe(24)
    machine = {**_machine(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    result: JSON = {"machine": machine, "settings": settings, "servers": {}}
    result["postgres_version"] = await postgres_version(admin_url)
    rows, request_rows = settings["rows"], settings["request_rows"]
    _progress(quiet, f"SQLite ingest: {rows} rows in {request_rows}-row POSTs")
    result["ingest"], result["servers"]["ingest"] = await _with_server(
        work,
        "ingest",
        api_key,
        workers=settings["workers"],
        batch_size=settings["batch_size"],
        connections=settings["concurrency"] + 4,
        body=lambda api: measure_ingest([api], rows, request_rows, settings["concurrency"]),
    )
    await run_postgres_phases(
        result, settings, work, api_key, admin_url, postmaster_pid, lambda m: _progress(quiet, m)
    )
    result["targets"] = postgres_targets(result)
    return result


async def _run(settings: JSON, work: Path, quiet: bool) -> JSON:
    api_key = "bk_bench_" + secrets.token_urlsafe(24)
    result: JSON = {"machine": _machine(), "settings": settings, "servers": {}}
    rows, request_rows = settings["rows"], settings["request_rows"]
    common = {"workers": settings["workers"], "batch_size": settings["batch_size"]}

    if rows:
        _progress(quiet, f"raw ceiling: {rows} rows with sqlite3 executemany")
        ceiling_db = work / "ceiling" / "ceiling.db"
        result["ceiling"] = await asyncio.to_thread(
            measure_ceiling, ceiling_db, rows, request_rows, CEILING_TX_ROWS
        )
        _progress(quiet, f"ingest: {rows} rows in {request_rows}-row POSTs")
        result["ingest"], result["servers"]["ingest"] = await _with_server(
            work,
            "ingest",
            api_key,
            connections=settings["concurrency"] + 4,
            body=lambda api: measure_ingest([api], rows, request_rows, settings["concurrency"]),
            **common,
        )
        result["ingest"]["ratio_to_ceiling"] = round(
            result["ingest"]["rows_per_s"] / result["ceiling"]["rows_per_s"], 3
        )
        _progress(quiet, f"one-index ceiling: {rows} rows with sqlite3 executemany")
        result["one_index_ceiling"] = await asyncio.to_thread(
            measure_one_index_ceiling, work / "one-index" / "records.db", rows, CEILING_TX_ROWS
        )
        result["ingest"]["ratio_to_one_index_ceiling"] = round(
            result["ingest"]["rows_per_s"] / result["one_index_ceiling"]["rows_per_s"], 3
        )
        if settings["peer"] and huey_installed():
            _progress(quiet, f"peer: {rows} rows through aiohttp + a huey consumer")
            peer = await measure_peer(work / "peer", rows, request_rows, settings["concurrency"])
            result["peer"] = peer
            result["ingest"]["ratio_to_peer"] = round(
                result["ingest"]["rows_per_s"] / peer["rows_per_s"], 3
            )
        elif settings["peer"]:
            result["peer"] = {"skipped": f"huey is not installed: {INSTALL_HINT}"}

    if settings["cancel_rounds"]:
        _progress(quiet, f"cancel: {settings['cancel_rounds']} rounds")
        result["cancel"], result["servers"]["cancel"] = await _with_server(
            work,
            "cancel",
            api_key,
            workers=settings["workers"],
            batch_size=settings["cancel_batch_size"],
            connections=4,
            body=lambda api: measure_cancel(api, settings["cancel_rounds"], CANCEL_REQUEST_ROWS),
        )

    csv_rows = settings["csv_rows"]
    if csv_rows:
        csv_path = work / "bench.csv"
        _progress(quiet, f"writing a {csv_rows}-row CSV")
        started = time.perf_counter()
        size = await asyncio.to_thread(write_csv, csv_path, csv_rows, "csv")
        generated = time.perf_counter() - started
        _progress(quiet, f"upload: {size / 1e6:.1f} MB, probing fairness")
        measured, result["servers"]["upload"] = await _with_server(
            work,
            "upload",
            api_key,
            connections=8,
            body=lambda api: measure_upload(
                api, csv_path, size, csv_rows, settings["probe_interval_s"]
            ),
            **common,
        )
        csv_path.unlink()
        result["upload"] = {**measured["upload"], "csv_generation_seconds": round(generated, 3)}
        # Server CPU per row barely moves when other programs share the machine (wall
        # time does), so it tells whether a change made the CSV path do less work.
        cpu = result["servers"]["upload"]["cpu_seconds"]
        result["upload"]["server_cpu_us_per_row"] = (
            round(cpu / csv_rows * 1e6, 2) if cpu is not None else None
        )
        result["fairness"] = measured["fairness"]

    result["targets"] = evaluate_targets(result)
    return result


def _bench_error(exc: BaseException) -> BenchError | None:
    """The BenchError behind a failure, also from inside a TaskGroup's ExceptionGroup."""
    if isinstance(exc, BenchError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _bench_error(inner)) is not None:
                return found
    return None


def run_bench(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = args.bench_workdir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bulk-bench-", dir=base))
    try:
        with contextlib.ExitStack() as stack:
            if args.bench_postgres_throwaway:
                _progress(False, "starting a throwaway PostgreSQL cluster")
                cluster = stack.enter_context(Cluster(find_binaries()))
                pid = cluster.postmaster_pid()
                run = _run_postgres(settings, work, False, cluster.dsn(), pid)
                # Where it ran, so a caller can check nothing of it is left afterwards.
                settings["throwaway_cluster"] = {
                    "directory": str(cluster.directory),
                    "postmaster_pid": pid,
                }
            elif settings["postgres"]:
                run = _run_postgres(settings, work, False, args.bench_database_url, None)
            else:
                run = _run(settings, work, quiet=False)
            result = asyncio.run(run)
    except (BenchError, ExceptionGroup) as exc:
        error = _bench_error(exc)
        if error is None:
            raise
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        if args.bench_keep:
            print(f"kept the benchmark files in {work}", file=sys.stderr)
        else:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(work)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    elif settings["postgres"]:
        print(render_postgres_table(result))
    else:
        print(render_table(result))
    return 0
