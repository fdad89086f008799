"""Atomic requests across kill -9 of the real server (SPEC §14): all or nothing.

A real `python run.py` is killed while two atomic uploads are half processed (their
records inserted but hidden), restarted, and watched to the end: at every look, a
request's records are visible only once it has completed, and then all of them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from server.types import TERMINAL_STATUSES
from tests.server_process import ServerProcess, poll, read_db

pytestmark = pytest.mark.slow

API_KEY = "bk_atomic_crash_key_0123456789abcdef0123456789abcdef"
ROWS = 20_000
BATCH_SIZE = 50
SERVER_ARGS = ("--workers", "2", "--batch-size", str(BATCH_SIZE), "--log-level", "WARNING")
WATCH_SECONDS = 60.0


def launch(db: Path, log_dir: Path, started: list[ServerProcess]) -> ServerProcess:
    server = ServerProcess(db, api_key=API_KEY, args=SERVER_ARGS, log_dir=log_dir)
    started.append(server)
    return server.start()


def csv_file(prefix: str, *, bad_last_row: bool) -> bytes:
    lines = ["date,amount,data_stream_key,external_id"]
    lines += [f"2024-03-{1 + i % 28:02d},{i}.10,bank,{prefix}{i}" for i in range(ROWS)]
    if bad_last_row:
        lines[-1] = f"2024-03-99,1.00,bank,{prefix}{ROWS - 1}"
    return ("\n".join(lines) + "\n").encode()


def look(server: ServerProcess, request_id: int) -> tuple[bool, Any]:
    """(whether any record of the request is visible, its row read right after)."""
    page = server.get(f"/v1/records?bulk_request_id={request_id}&limit=1")
    return bool(page["data"]), server.get(f"/v1/bulk_requests/{request_id}")


def visible_count(server: ServerProcess, request_id: int) -> int:
    count, cursor = 0, None
    while True:
        path = f"/v1/records?bulk_request_id={request_id}&limit=200"
        page = server.get(path + (f"&cursor={cursor}" if cursor else ""))
        count += len(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return count


def stored(db: Path, request_id: int) -> tuple[int, int]:
    """(records of the request in the file, hidden or not; its `unpublished` flag)."""
    with read_db(db) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM records WHERE bulk_request_id = ?", (request_id,)
        ).fetchone()[0]
        flag = conn.execute(
            "SELECT unpublished FROM bulk_requests WHERE id = ?", (request_id,)
        ).fetchone()[0]
    return int(rows), int(flag)


def test_kill_9_mid_atomic_requests_then_all_or_nothing(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    db = tmp_path / "atomic.db"
    server = launch(db, tmp_path, servers)
    server.post("/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201)
    clean = server.upload(csv_file("c", bad_last_row=False), {"mode": "atomic"})["id"]
    doomed = server.upload(csv_file("d", bad_last_row=True), {"mode": "atomic"})["id"]

    def mid_way(row: Any) -> bool:
        return (
            row["status"] == "processing"
            and not row["parsing"]
            and 2 * BATCH_SIZE <= row["processed_items"] <= ROWS - 5000
        )

    poll(
        lambda: [server.get(f"/v1/bulk_requests/{rid}") for rid in (clean, doomed)],
        lambda rows: all(mid_way(row) for row in rows),
        30,
        "both half processed",
    )
    for request_id in (clean, doomed):
        shown, row = look(server, request_id)
        assert not shown, row
    server.kill()
    for request_id in (clean, doomed):
        rows, flag = stored(db, request_id)
        assert rows > 0, "the kill must find records inserted (and hidden)"
        assert flag == 1

    server = launch(db, tmp_path, servers)
    # Hidden right after the restart, and at every look until each ends.
    finals: dict[int, Any] = {}
    deadline = time.monotonic() + WATCH_SECONDS
    while len(finals) < 2:
        assert time.monotonic() < deadline, server.tail()
        for request_id in (clean, doomed):
            shown, row = look(server, request_id)
            if shown:
                assert row["status"] == "completed", row
            if row["status"] in TERMINAL_STATUSES:
                finals[request_id] = row
    assert finals[clean]["status"] == "completed"
    assert finals[clean]["recoveries"] >= 1
    assert visible_count(server, clean) == ROWS == finals[clean]["successful_items"]
    assert stored(db, clean) == (ROWS, 0)

    assert finals[doomed]["status"] == "failed"
    assert "atomic" in finals[doomed]["error_message"]
    assert finals[doomed]["failed_items"] == 1
    assert visible_count(server, doomed) == 0
    # The hidden records are purged after the restart as well.
    poll(lambda: stored(db, doomed), lambda s: s == (0, 0), 30, "purge")
    assert visible_count(server, doomed) == 0
