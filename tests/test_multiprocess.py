"""Several real `run.py` processes on one PostgreSQL database (issue 12, SPEC §16).

Each test starts its servers with tests/server_process.py on a fresh database of the
session's throwaway cluster and checks the outcome in the database itself.
`BULK_MP_ROUNDS=20 python -m pytest tests/test_multiprocess.py -k kill` runs the kill
test's rounds (default 1 in the suite).
"""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.pg_cluster import run_in_thread
from tests.server_process import ServerProcess, poll

API_KEY = "bk_multiprocess_test_key_0123456789abcdef"
ROUNDS = int(os.environ.get("BULK_MP_ROUNDS", "1"))
ROWS = 1000  # the most one POST takes
# Fast rescue, so a killed process's requests move on within the test: heartbeats every
# batch (a few ms apart) are far younger than this.
FAST_RESCUE = ["--heartbeat-timeout", "1.5", "--sweep-interval", "0.2"]


def query(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(row.items()) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return run_in_thread(fetch)


def start(servers: list[ServerProcess], tmp_path: Path, dsn: str, *args: str) -> ServerProcess:
    server = ServerProcess(
        tmp_path / f"unused-{len(servers)}.db",
        api_key=API_KEY,
        args=["--database-url", dsn, *args],
        log_dir=tmp_path,
    )
    servers.append(server)
    return server.start()


def rows(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "date": "2024-01-31",
            "data_stream_key": "bank",
            "amount": f"{n}.25",
            "external_id": f"{prefix}-{n}",
        }
        for n in range(count)
    ]


def wait_all_terminal(server: ServerProcess, ids: list[int], within: float) -> list[Any]:
    return [
        poll(
            lambda rid=rid: server.get(f"/v1/bulk_requests/{rid}"),
            lambda r: r["status"] in {"completed", "failed", "cancelled"},
            within,
            f"request {rid} terminal",
        )
        for rid in ids
    ]


def claimers(dsn: str) -> set[str]:
    """The processes (worker id prefixes) that claimed or resumed any request."""
    found = query(
        dsn,
        "SELECT DISTINCT split_part(payload::jsonb ->> 'claimed_by', ':', 1) AS process"
        " FROM outbox WHERE event_type IN ('claimed', 'resumed')",
    )
    return {row["process"] for row in found}


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_kill_9_mid_batch_the_others_resume_and_every_row_is_stored_once(
    pg_database: str, tmp_path: Path, servers: list[ServerProcess], round_number: int
) -> None:
    dsn = pg_database
    common = [*FAST_RESCUE, "--workers", "2", "--batch-size", "50", "--time-slice", "0.1"]
    a, b, c = (start(servers, tmp_path, dsn, *common) for _ in range(3))
    a.post("/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201)
    ids = [
        a.post("/v1/records/bulk", {"records": rows(f"r{round_number}-{n}", ROWS)}, expect=202)[
            "id"
        ]
        for n in range(6)
    ]
    # Mid-batch: every process is working, and some rows of each request are stored.
    poll(
        lambda: query(dsn, "SELECT count(*) AS n FROM records")[0]["n"],
        lambda n: n >= ROWS,
        60,
        "some rows stored",
    )
    a.kill()
    done = wait_all_terminal(b, ids, within=120)
    assert [r["status"] for r in done] == ["completed"] * len(ids)
    assert [r["successful_items"] for r in done] == [ROWS] * len(ids)
    stored = query(
        dsn,
        "SELECT bulk_request_id, count(*) AS n, count(DISTINCT row_index) AS distinct_rows,"
        " count(DISTINCT external_id) AS distinct_ids FROM records GROUP BY bulk_request_id"
        " ORDER BY bulk_request_id",
    )
    assert stored == [
        {"bulk_request_id": rid, "n": ROWS, "distinct_rows": ROWS, "distinct_ids": ROWS}
        for rid in ids
    ]
    # The load was spread: every one of the three processes claimed requests.
    assert len(claimers(dsn)) == 3
    assert c.get("/healthz")["status"] == "ok"


def test_upload_cancel_and_event_streams_cross_processes(
    pg_database: str, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """A and B run no workers; C does all the work. An upload received by A is parsed
    by C; a stream on B sees C's progress; a cancel sent to B stops C's request."""
    dsn = pg_database
    a = start(servers, tmp_path, dsn, "--workers", "0")
    b = start(servers, tmp_path, dsn, "--workers", "0")
    # Three batches 0.3 s apart: several of B's 0.1 s bursts fall mid-way, however late
    # the machine runs them.
    c = start(servers, tmp_path, dsn, "--workers", "1", "--batch-size", "10",
              "--batch-pause", "0.3")  # fmt: skip
    a.post("/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201)

    csv = b"date,data_stream_key,amount,external_id\n" + b"".join(
        f"2024-01-31,bank,{n}.00,u{n}\n".encode() for n in range(30)
    )
    # The environment's stream, open before the upload exists: a request stream opened
    # after it could miss the mid-way progress when C ran ahead (it did once, under load).
    stream = b.open_event_stream("/v1/events")
    try:
        uploaded = a.upload(csv, {"on_conflict": "error"})
        [parsed] = wait_all_terminal(b, [uploaded["id"]], within=60)
        assert (parsed["status"], parsed["successful_items"]) == ("completed", 30)
        seen = _read_events(stream, until=b"event: done")
    finally:
        stream.close()
    # C's progress, mid-way, reached B's stream (not only the final state).
    progress = [int(n) for n in re.findall(rb'"processed_items":(\d+)', seen)]
    assert any(0 < n < 30 for n in progress), progress
    # Each process answers /healthz and /metrics for itself.
    assert [s.get("/healthz")["workers"] for s in (a, b, c)] == [0, 0, 1]
    assert [_workers_in_metrics(s) for s in (a, b, c)] == [0, 0, 1]
    assert query(dsn, "SELECT count(*) AS n FROM uploads")[0]["n"] == 0  # parsed: dropped

    long = b.post("/v1/records/bulk", {"records": rows("long", 1000)}, expect=202)
    poll(
        lambda: b.get(f"/v1/bulk_requests/{long['id']}"),
        lambda r: r["processed_items"] > 0,
        60,
        "C is processing the long request",
    )
    status, _ = b.call("POST", f"/v1/bulk_requests/{long['id']}/cancel")
    assert status == 202  # C holds it: it stops at its next heartbeat
    [cancelled] = wait_all_terminal(a, [long["id"]], within=30)
    assert cancelled["status"] == "cancelled"
    assert cancelled["processed_items"] < 1000
    stored = query(dsn, "SELECT count(*) AS n FROM records WHERE bulk_request_id = $1", long["id"])
    assert stored[0]["n"] == cancelled["successful_items"]
    for server in (a, b, c):
        assert server.get("/healthz")["status"] == "ok"


def _read_events(sock: socket.socket, *, until: bytes, within: float = 30.0) -> bytes:
    sock.settimeout(1.0)
    seen = b""
    deadline = time.monotonic() + within
    while until not in seen and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        seen += chunk
    assert until in seen, seen[-2000:]
    return seen


def _workers_in_metrics(server: ServerProcess) -> float:
    """The process's own workers, idle and busy, as its /metrics counts them."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bulk_workers{")
    )
