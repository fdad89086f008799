"""The measurements of `python run.py bench`, one function each.

Each returns a JSON-ready dict of numbers; `server/bench/cli.py` runs them in order and
prints the table. Timings use the monotonic clock, except where a duration ends at a
server-side timestamp (`completed_at`): then both ends are wall-clock, which client
and server share since they run on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from server.bench.support import (
    STREAM_CURRENCY,
    STREAM_KEY,
    Api,
    BenchError,
    bulk_body,
    latency_summary,
    loop_lag_summary,
    process_cpu_seconds,
    rate,
    record_fields,
    timed_executemany,
    wall_seconds,
)
from server.clock import now_rfc3339
from server.db.sqlite.connection import open_sync_connection, prepare_database
from server.db.sqlite.queries import Q
from server.ingest.validation import StreamRef, ValidRecord, validate_row
from server.types import JSON, TERMINAL_STATUSES

POLL_FAST_SECONDS = 0.005  # cancel and probe polling: the latency resolution
POLL_DONE_SECONDS = 0.02  # ingest completion
POLL_UPLOAD_SECONDS = 0.05  # upload progress (parse end, completion)
INGEST_PREFIX = "ingest"


# --- 1. raw ceiling ---------------------------------------------------------------------


def measure_ceiling(db_path: Path, rows: int, request_rows: int, tx_rows: int) -> JSON:
    """The same rows the ingest phase sends, written straight with sqlite3.

    Same schema and indexes (the server's own migrations), same pragmas, same INSERT
    statement and same column values (made by the server's own validate_row), in
    `tx_rows`-row transactions: what SQLite alone can do on this machine, the bound for
    what the service can do.
    """
    prepare_database(db_path)
    conn = open_sync_connection(db_path)
    try:
        now = now_rfc3339()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(Q.ensure_environment, {"name": "bench", "now": now})
        env_id = conn.execute(Q.get_environment_by_name, {"name": "bench"}).fetchone()["id"]
        stream = conn.execute(
            Q.insert_data_stream,
            {
                "environment_id": env_id,
                "key": STREAM_KEY,
                "name": None,
                "currency": STREAM_CURRENCY,
                "now": now,
            },
        ).fetchall()[0]
        # records.bulk_request_id is a foreign key: one parent per request-sized slice,
        # as the server has one bulk request per POST.
        request_ids = [
            conn.execute(
                Q.insert_bulk_request,
                {
                    "environment_id": env_id,
                    "source": "bulk_api",
                    "on_conflict": "skip",
                    "total_items": min(request_rows, rows - start),
                    "parsing": 0,
                    "upload_format": None,
                    "upload_path": None,
                    "filename": None,
                    "default_data_stream_key": None,
                    "nacha_options": None,
                    "csv_options": None,
                    "data_stream_id": stream["id"],
                    "parent_bulk_request_id": None,
                    "run_at": None,
                    "mode": "partial",
                    "now": now,
                },
            ).fetchall()[0]["id"]
            for start in range(0, rows, request_rows)
        ]
        conn.execute("COMMIT")
        streams = {STREAM_KEY: StreamRef(stream["id"], stream["currency"])}

        def values_of(numbers: range) -> list[tuple[object, ...]]:
            values: list[tuple[object, ...]] = []
            for n in numbers:
                record = validate_row(record_fields(n, INGEST_PREFIX), streams)
                assert isinstance(record, ValidRecord), record
                values.append((*record, request_ids[n // request_rows], n % request_rows, now))
            return values

        return timed_executemany(
            conn, Q.insert_record_unless_duplicate, rows, tx_rows, values_of, "ceiling"
        )
    finally:
        conn.close()


# --- 2 + 3. end-to-end ingest and accept latency -------------------------------------------


async def _all_requests(api: Api) -> list[JSON]:
    found: list[JSON] = []
    cursor = ""
    while True:
        page = await api.get(f"/v1/bulk_requests?limit=200{cursor}")
        found.extend(page["data"])
        if page["next_cursor"] is None:
            return found
        cursor = f"&cursor={page['next_cursor']}"


async def measure_ingest(
    apis: Sequence[Api], rows: int, request_rows: int, concurrency: int
) -> JSON:
    """N bulk POSTs from `concurrency` clients; rows/s from first POST to last completion.

    With several server processes on one database (PostgreSQL), client i posts to
    process i mod len(apis): the spreading a load balancer in front of them would do.
    Any process may then claim any request; completion is read from the shared database.
    """
    api = apis[0]
    # Bodies are encoded before the clock starts: the client's own JSON work must not
    # be counted as server latency.
    bodies = [
        bulk_body(start, min(request_rows, rows - start), INGEST_PREFIX)
        for start in range(0, rows, request_rows)
    ]
    pending = iter(bodies)
    accept: list[float] = []
    ids: list[int] = []
    first_post_wall: list[float] = []

    async def client(target: Api) -> None:
        for body in pending:  # one shared iterator: each body is sent exactly once
            if not first_post_wall:
                first_post_wall.append(time.time())
            started = time.perf_counter()
            summary = await target.post_json("/v1/records/bulk", body)
            accept.append(time.perf_counter() - started)
            ids.append(summary["id"])

    def servers_cpu() -> float:
        return sum(process_cpu_seconds(a.server.pid) or 0.0 for a in apis)

    cpu_before = servers_cpu()
    lag_before = await api.loop_lag()
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for n in range(concurrency):
            group.create_task(client(apis[n % len(apis)]))
    posting_seconds = time.perf_counter() - started
    lag_posted = await api.loop_lag()
    # All accepted: now the queue only shrinks, so "no runnable request" means done.
    deadline = time.monotonic() + 120 + rows / 500
    while (await api.get("/healthz"))["queue_depth"]:
        if time.monotonic() > deadline:
            raise BenchError("ingest: requests still queued after the deadline")
        await asyncio.sleep(POLL_DONE_SECONDS)
    wanted = set(ids)
    requests = [r for r in await _all_requests(api) if r["id"] in wanted]
    not_done = [r["id"] for r in requests if r["status"] != "completed"]
    stored = sum(r["successful_items"] for r in requests)
    if len(requests) != len(wanted) or not_done or stored != rows:
        raise BenchError(
            f"ingest: {len(requests)}/{len(wanted)} requests found, not completed: "
            f"{not_done[:10]}, {stored}/{rows} rows stored"
        )
    cpu_seconds = servers_cpu() - cpu_before
    client_cpu_seconds = time.process_time() - client_cpu_before
    lag_done = await api.loop_lag()
    last_completion = max(wall_seconds(r["completed_at"]) for r in requests)
    seconds = last_completion - first_post_wall[0]
    return {
        "rows": rows,
        "requests": len(bodies),
        "rows_per_request": request_rows,
        "concurrency": concurrency,
        "posting_seconds": round(posting_seconds, 3),
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
        # Server CPU (all threads) per row: the work done, whatever else the machine runs.
        "server_cpu_us_per_row": round(cpu_seconds / rows * 1e6, 2),
        # The benchmark's own process (the clients), on the same cores as the servers.
        "client_cpu_us_per_row": round(client_cpu_seconds / rows * 1e6, 2),
        "accept": latency_summary(accept),
        # The first server's event loop (with several processes, each has its own).
        "loop_lag": {
            "posting": loop_lag_summary(lag_before, lag_posted),
            "ingest": loop_lag_summary(lag_before, lag_done),
        },
    }


# --- 4. cancel latency ---------------------------------------------------------------------


async def _wait_terminal(api: Api, request_id: int) -> JSON:
    while True:
        row = await api.bulk_request(request_id)
        if row["status"] in TERMINAL_STATUSES:
            return row
        await asyncio.sleep(POLL_FAST_SECONDS)


async def _wait_processing(api: Api, request_id: int) -> bool:
    """True once a batch has committed (the worker is in its batch loop); False if the
    request finished first."""
    while True:
        row = await api.bulk_request(request_id)
        if row["status"] == "processing" and row["processed_items"] > 0:
            return True
        if row["status"] in TERMINAL_STATUSES:
            return False
        await asyncio.sleep(POLL_FAST_SECONDS)


async def measure_cancel(api: Api, rounds: int, request_rows: int) -> JSON:
    """Cancel a request mid-processing; time from POST cancel until GET shows cancelled."""
    latencies: list[float] = []
    missed = 0
    completed_anyway = 0
    immediate = 0
    rows_after_cancel: list[int] = []
    attempt = 0
    while len(latencies) < rounds:
        if attempt >= rounds * 3:
            raise BenchError(
                f"cancel: {missed + completed_anyway} of {attempt} requests finished before "
                "they could be cancelled; lower --cancel-batch-size"
            )
        summary = await api.post_json(
            "/v1/records/bulk", bulk_body(attempt * request_rows, request_rows, "cancel")
        )
        attempt += 1
        request_id = summary["id"]
        if not await _wait_processing(api, request_id):
            missed += 1
            continue
        started = time.perf_counter()
        status, answer = await api.call(
            "POST", f"/v1/bulk_requests/{request_id}/cancel", expect=(200, 202, 409)
        )
        if status == 409:  # completed between our GET and the cancel
            missed += 1
            continue
        immediate += status == 200
        at_cancel = answer["processed_items"]
        row = await _wait_terminal(api, request_id)
        if row["status"] == "completed":
            # Its last batch was already in flight: finishing is the right outcome.
            completed_anyway += 1
            continue
        if row["status"] != "cancelled":
            raise BenchError(f"cancel: request {request_id} ended {row['status']}")
        latencies.append(time.perf_counter() - started)
        rows_after_cancel.append(row["processed_items"] - at_cancel)
    return {
        "rounds": rounds,
        "rows_per_request": request_rows,
        "missed": missed,
        "completed_after_cancel_requested": completed_anyway,
        "cancelled_at_once": immediate,
        "max_rows_processed_after_cancel": max(rows_after_cancel, default=0),
        "latency": latency_summary(latencies),
    }


# --- 5 + 6. CSV upload, and small requests while it runs -------------------------------------


async def _probe(api: Api, n: int) -> tuple[float, float]:
    """One 10-row request: seconds until its 202, and until it is completed."""
    body = bulk_body(n * 10, 10, "probe")
    started = time.perf_counter()
    summary = await api.post_json("/v1/records/bulk", body)
    accepted = time.perf_counter() - started
    row = await _wait_terminal(api, summary["id"])
    if row["status"] != "completed":
        raise BenchError(f"probe request {summary['id']} ended {row['status']}")
    return accepted, time.perf_counter() - started


async def measure_upload(
    api: Api, csv_path: Path, size: int, rows: int, probe_interval: float
) -> JSON:
    """Stream the CSV as multipart; follow it to completion while probing fairness."""
    started_wall = time.time()
    started = time.perf_counter()
    with csv_path.open("rb") as handle:
        # A file object, not bytes: aiohttp streams it in chunks, as a real client would.
        form = aiohttp.FormData()
        form.add_field("file", handle, filename=csv_path.name, content_type="text/csv")
        form.add_field("data_stream_key", STREAM_KEY)
        summary = (await api.call("POST", "/v1/uploads", data=form, expect=(202,)))[1]
    upload_seconds = time.perf_counter() - started
    request_id = summary["id"]

    done = asyncio.Event()
    parsed_at: list[float] = []
    final: list[JSON] = []
    probes: dict[str, list[float]] = {"parsing": [], "processing": []}
    probe_accept: list[float] = []
    phase = ["parsing"]  # what the upload was doing (as last seen) when a probe started

    async def follow() -> None:
        try:
            deadline = time.monotonic() + 600 + rows / 200
            while True:
                row = await api.bulk_request(request_id)
                if not row["parsing"] and not parsed_at:
                    parsed_at.append(time.perf_counter())
                    phase[0] = "processing"
                if row["status"] in TERMINAL_STATUSES:
                    final.append(row)
                    return
                if time.monotonic() > deadline:
                    raise BenchError(f"upload: request {request_id} still {row['status']}")
                await asyncio.sleep(POLL_UPLOAD_SECONDS)
        finally:
            done.set()

    async def probe_loop() -> None:
        n = 0
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), probe_interval)
            if done.is_set():
                return
            accepted, completed = await _probe(api, n)
            probe_accept.append(accepted)
            probes[phase[0]].append(completed)
            n += 1

    async with asyncio.TaskGroup() as group:  # one failing cancels the other
        group.create_task(follow())
        group.create_task(probe_loop())
    row = final[0]
    if row["status"] != "completed" or row["successful_items"] != rows:
        raise BenchError(
            f"upload: request {request_id} ended {row['status']} with "
            f"{row['successful_items']}/{rows} rows stored: {row['error_message']}"
        )
    total = wall_seconds(row["completed_at"]) - started_wall
    parse_seconds = parsed_at[0] - started - upload_seconds if parsed_at else None
    return {
        "upload": {
            "rows": rows,
            "bytes": size,
            "upload_seconds": round(upload_seconds, 3),
            "upload_mb_per_s": round(size / 1e6 / upload_seconds, 1),
            "parse_seconds": round(parse_seconds, 3) if parse_seconds is not None else None,
            "seconds": round(total, 3),
            "rows_per_s": rate(rows, total),
        },
        "fairness": {
            "probe_rows": 10,
            "probe_interval_s": probe_interval,
            "latency": latency_summary(probes["parsing"] + probes["processing"]),
            "during_parsing": latency_summary(probes["parsing"]),
            "during_processing": latency_summary(probes["processing"]),
            "accept": latency_summary(probe_accept),
        },
    }
