"""Crash and shutdown of the real server process (SPEC §9): `kill -9` at chosen points,
SIGTERM/SIGINT, one server per database, and the first-start API key.

Every test drives `python run.py` in a subprocess and judges the outcome from the
SQLite file itself, so nothing in-process can paper over a lost or doubled row.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from server.constants import SHUTDOWN_GRACE_SECONDS
from server.types import TERMINAL_STATUSES
from tests.server_process import START_SECONDS, ServerProcess, poll, read_db

pytestmark = pytest.mark.slow

API_KEY = "bk_crash_test_key_0123456789abcdef0123456789abcdef"
STREAM = "bank"
BATCH_SIZE = 50
SERVER_ARGS = ("--workers", "2", "--batch-size", str(BATCH_SIZE), "--log-level", "WARNING")
# Generous: these bound a wait on a healthy server and only matter when it is not.
SETTLE_SECONDS = 60.0
WATCH_SECONDS = 30.0


# --- the launcher fixture ------------------------------------------------------------------


class Launch(Protocol):
    def __call__(
        self, db: Path, *, api_key: str | None = API_KEY, start: bool = True
    ) -> ServerProcess: ...


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    servers: list[ServerProcess] = []

    def launch(db: Path, *, api_key: str | None = API_KEY, start: bool = True) -> ServerProcess:
        server = ServerProcess(db, api_key=api_key, args=SERVER_ARGS, log_dir=tmp_path)
        servers.append(server)
        if start:
            server.start()
        else:
            server.spawn()
        return server

    yield launch
    for server in servers:
        server.close()


# --- what was submitted, and what must therefore be stored ----------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    external_id: str | None
    amount_minor: int
    error: str | None = None  # the row error code this row must end with, if invalid


@dataclass(slots=True)
class Submitted:
    id: int
    on_conflict: str
    rows: list[Row]
    label: str
    status: str = "completed"  # how it must end


def json_rows(prefix: str, count: int) -> tuple[list[dict[str, Any]], list[Row]]:
    """Rows with invalid ones and in-request duplicates at fixed positions, so the
    expected outcome of every row is known whatever order the batches run in."""
    records: list[dict[str, Any]] = []
    rows: list[Row] = []
    for i in range(count):
        minor = i * 100 + i % 100
        record: dict[str, Any] = {
            "date": "2024-03-15",
            "data_stream_key": STREAM,
            "amount": f"{i}.{i % 100:02d}",
            "external_id": f"{prefix}-{i}",
        }
        error = None
        match i % 100:
            case 13:
                record["date"], error = "2024-02-30", "invalid_date"
            case 41:
                record["amount"], error = "12.345", "too_many_decimals"
            case 59:
                record["data_stream_key"], error = "nope", "unknown_data_stream"
            case 77:
                record["external_id"] = f"{prefix}-{i - 1}"  # row i-1 is always valid
            case 50:
                del record["external_id"]
        records.append(record)
        rows.append(Row(record.get("external_id"), minor, error))
    return records, rows


def csv_rows(prefix: str, count: int) -> tuple[bytes, list[Row]]:
    lines = ["date,amount,external_id,description"]
    rows: list[Row] = []
    for i in range(count):
        external_id, amount, error = f"{prefix}-{i}", f"{i}.10", None
        if i % 1000 == 7:
            amount, error = "abc", "invalid_amount"
        elif i % 1000 == 500:
            external_id = f"{prefix}-{i - 1}"
        lines.append(f"2024-03-16,{amount},{external_id},csv row {i}")
        rows.append(Row(external_id, i * 100 + 10, error))
    return ("\r\n".join(lines) + "\r\n").encode(), rows


def submit_json(
    server: ServerProcess, prefix: str, count: int, on_conflict: str, label: str = ""
) -> Submitted:
    records, rows = json_rows(prefix, count)
    answer = server.post(
        "/v1/records/bulk", {"records": records, "on_conflict": on_conflict}, expect=202
    )
    return Submitted(answer["id"], on_conflict, rows, label or prefix)


def submit_csv(server: ServerProcess, prefix: str, count: int, label: str) -> Submitted:
    content, rows = csv_rows(prefix, count)
    answer = server.upload(content, {"data_stream_key": STREAM})
    return Submitted(answer["id"], "skip", rows, label)


# --- judging the database ---------------------------------------------------------------------


def snapshot(db: Path) -> dict[int, dict[str, Any]]:
    """Every request as the database holds it, plus the rows staged for it."""
    with read_db(db) as conn:
        requests = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM bulk_requests")}
        staged = conn.execute(
            "SELECT bulk_request_id, sum(row_count) FROM request_chunks GROUP BY 1"
        ).fetchall()
    for request_id, rows in staged:
        requests[request_id]["staged_rows"] = rows
    return requests


def assert_exactly_once(db: Path, submitted: list[Submitted]) -> None:
    """Each accepted request ended as expected; each row it processed is stored once,
    failed or skipped exactly as its content dictates, each row it did not process left
    no trace; every counter equals the rows behind it."""
    with read_db(db) as conn:
        requests = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM bulk_requests")}
        stored = conn.execute(
            "SELECT bulk_request_id, row_index, external_id, amount_minor, data_stream_id "
            "FROM records"
        ).fetchall()
        errors = conn.execute("SELECT bulk_request_id, row, code FROM row_errors").fetchall()
        staged = dict(conn.execute("SELECT DISTINCT bulk_request_id, 1 FROM request_chunks"))

    assert sorted(requests) == sorted(s.id for s in submitted), "a request was lost or invented"
    stored_at: dict[tuple[int, int], tuple[str | None, int]] = {}
    owner: dict[str, tuple[int, int]] = {}
    for request_id, row_index, external_id, amount_minor, _stream in stored:
        where = (request_id, row_index)
        assert where not in stored_at, f"row {where} stored twice"
        stored_at[where] = (external_id, amount_minor)
        if external_id is not None:
            assert external_id not in owner, f"{external_id} stored by {owner[external_id]} too"
            owner[external_id] = where
    assert len({s for *_, s in stored}) <= 1, "records landed in an unexpected stream"
    error_at = {(r[0], r[1]): r[2] for r in errors}
    assert len(error_at) == len(errors)

    valid_ids: set[str] = set()
    for s in submitted:
        req = requests[s.id]
        total = len(s.rows)
        assert (req["status"], req["parsing"], req["claimed_by"]) == (s.status, 0, None), (
            s.label,
            req,
        )
        done = req["next_row"]
        assert req["total_items"] == total, (s.label, req)
        assert req["processed_items"] == done, (s.label, req)
        if s.status == "completed":
            assert done == total, (s.label, req)
            assert s.id not in staged, f"{s.label}: completed, yet its staged rows are kept"
        else:
            assert done < total, (s.label, req)
        successful = failed = skipped = 0
        for i, row in enumerate(s.rows):
            where = (s.id, i)
            if i >= done:
                assert where not in stored_at, f"{s.label}: unprocessed row {i} stored"
                assert where not in error_at, f"{s.label}: unprocessed row {i} has an error"
            elif row.error is not None:
                assert where not in stored_at, (s.label, i)
                assert error_at.get(where) == row.error, (s.label, i)
                failed += 1
            elif row.external_id is None or owner.get(row.external_id) == where:
                assert stored_at.get(where) == (row.external_id, row.amount_minor), (s.label, i)
                assert where not in error_at, (s.label, i)
                successful += 1
            else:
                # A duplicate: its twin is stored elsewhere and this row is not.
                assert row.external_id in owner, (s.label, i)
                assert where not in stored_at, (s.label, i)
                if s.on_conflict == "error":
                    assert error_at.get(where) == "duplicate_external_id", (s.label, i)
                    failed += 1
                else:
                    assert where not in error_at, (s.label, i)
                    skipped += 1
            if i < done and row.error is None and row.external_id is not None:
                valid_ids.add(row.external_id)
        counted = (req["successful_items"], req["failed_items"], req["skipped_items"])
        assert counted == (successful, failed, skipped), (s.label, counted)
        assert sum(1 for w in stored_at if w[0] == s.id) == successful, s.label
        assert sum(1 for w in error_at if w[0] == s.id) == failed, s.label

    assert set(owner) == valid_ids
    assert len(stored) == sum(r["successful_items"] for r in requests.values())


# --- watching a live server to choose the kill point ------------------------------------------


@dataclass(slots=True)
class Heartbeats:
    """Counts heartbeats seen through the API: each rise of the processed total."""

    seen: int = 0
    last_total: int | None = None

    def observe(self, page: list[Any]) -> None:
        total = sum(r["processed_items"] for r in page)
        if self.last_total is not None and total > self.last_total:
            self.seen += 1
        self.last_total = total


def mid_way(request: Any, *, at_least: int, remaining: int) -> bool:
    """Processing, past `at_least` rows and with enough left that it cannot finish in
    the moment between our look and the kill."""
    return (
        request["status"] == "processing"
        and not request["parsing"]
        and request["processed_items"] >= at_least
        and request["total_items"] - request["processed_items"] >= remaining
    )


def wait_terminal(server: ServerProcess, expected: int) -> list[Any]:
    return poll(
        server.bulk_requests,
        lambda page: len(page) == expected and all(r["status"] in TERMINAL_STATUSES for r in page),
        SETTLE_SECONDS,
        "every request terminal",
    )


# --- 1. kill -9 at chosen points, restart, exactly once -------------------------------------------


def test_sigkill_rounds_store_every_accepted_row_exactly_once(
    tmp_path: Path, launch: Launch
) -> None:
    db = tmp_path / "crash.db"
    uploads = tmp_path / "uploads"
    submitted: list[Submitted] = []
    kills: list[dict[int, dict[str, Any]]] = []  # the database as each kill left it
    log: list[str] = []

    def kill(server: ServerProcess, point: str) -> dict[int, dict[str, Any]]:
        server.kill()
        state = snapshot(db)
        kills.append(state)
        claimed = {
            i: f"parsing, {r['total_items']} staged" if r["parsing"] else f"row {r['next_row']}"
            for i, r in state.items()
            if r["claimed_by"]
        }
        done = sum(r["processed_items"] for r in state.values())
        log.append(
            f"round {len(kills)} ({point}): {len(state)} requests, {done} rows "
            f"processed, claimed at kill {claimed}"
        )
        # Every request the client heard 202 for is in the file (durable before 202),
        # and nothing the client was not told about.
        assert set(state) == {s.id for s in submitted}
        return state

    # Round 1: kill right after the last 202, while the workers are just starting and
    # an upload is half received (never answered, so never accepted).
    server = launch(db)
    server.post("/v1/data_streams", {"key": STREAM, "currency": "USD"}, expect=201)
    with server.begin_upload(csv_rows("cut", 20_000)[0], {"data_stream_key": STREAM}):
        poll(
            lambda: [p.stat().st_size for p in uploads.glob("*.part")],
            lambda sizes: sum(sizes) > 0,
            WATCH_SECONDS,
            "part of the upload on disk",
        )
        for n, on_conflict in enumerate(("skip", "error", "skip", "error")):
            submitted.append(submit_json(server, f"a{n}", 1000, on_conflict, f"a{n}"))
        kill(server, "right after accepting 4 x 1000 rows, an upload half received")

    # Round 2: kill while the upload is being parsed (some chunks staged, not all).
    server = launch(db)
    assert not any(uploads.iterdir()), "the cut-off upload's file must be removed at start"
    upload = submit_csv(server, "csv", 40_000, "upload")
    submitted.append(upload)
    poll(
        lambda: server.get(f"/v1/bulk_requests/{upload.id}"),
        lambda r: r["parsing"] and 0 < r["total_items"] <= 20_000,
        WATCH_SECONDS,
        "upload part-way through parsing",
    )
    state = kill(server, "upload parsing")
    assert state[upload.id]["parsing"] == 1
    assert state[upload.id]["claimed_by"]
    assert 0 < state[upload.id]["staged_rows"] == state[upload.id]["total_items"] < 40_000

    # Round 3: more work, including a replay of a0's ids with on_conflict=error (a
    # cross-request duplicate: whichever request runs first owns the rows); kill after
    # several heartbeats with a request mid-way.
    server = launch(db)
    submitted.append(submit_json(server, "b0", 1000, "skip", "b0"))
    submitted.append(submit_json(server, "b1", 1000, "error", "b1"))
    submitted.append(submit_json(server, "a0", 300, "error", "replay-a0"))
    beats = Heartbeats()

    def several_beats_one_mid_way(page: list[Any]) -> bool:
        beats.observe(page)
        return beats.seen >= 5 and any(
            mid_way(r, at_least=2 * BATCH_SIZE, remaining=6 * BATCH_SIZE) for r in page
        )

    page = poll(server.bulk_requests, several_beats_one_mid_way, WATCH_SECONDS, "mid-processing")
    victim = next(r for r in page if mid_way(r, at_least=2 * BATCH_SIZE, remaining=6 * BATCH_SIZE))
    state = kill(server, f"mid-processing after {beats.seen} heartbeats")
    assert state[victim["id"]]["status"] == "processing"
    assert victim["processed_items"] <= state[victim["id"]]["next_row"] < victim["total_items"]

    # Round 4: kill while the upload's rows are being processed.
    server = launch(db)
    first_seen: list[int] = []

    def upload_advanced(r: Any) -> bool:
        if not r["parsing"]:
            first_seen.append(r["processed_items"])
        return bool(first_seen) and mid_way(
            r, at_least=first_seen[0] + 5 * BATCH_SIZE, remaining=2000
        )

    poll(
        lambda: server.get(f"/v1/bulk_requests/{upload.id}"),
        upload_advanced,
        WATCH_SECONDS,
        "upload mid-processing",
    )
    state = kill(server, "upload mid-processing")
    assert state[upload.id]["status"] == "processing"
    assert state[upload.id]["parsing"] == 0
    assert 0 < state[upload.id]["next_row"] < 40_000

    # Round 5: cancel a request mid-way and kill at once. The answered cancellation
    # must survive the crash, and the rows processed before it must stay as counted.
    server = launch(db)
    cancelled = submit_json(server, "c0", 1000, "skip")
    cancelled.status = "cancelled"
    submitted.append(cancelled)
    poll(
        lambda: server.get(f"/v1/bulk_requests/{cancelled.id}"),
        lambda r: mid_way(r, at_least=2 * BATCH_SIZE, remaining=6 * BATCH_SIZE),
        WATCH_SECONDS,
        "c0 mid-processing",
    )
    status, answer = server.call("POST", f"/v1/bulk_requests/{cancelled.id}/cancel")
    assert status in (200, 202), answer
    state = kill(server, f"right after cancel answered {status}")
    assert state[cancelled.id]["cancellation_requested_at"] is not None

    # Final start: everything finishes; the recoveries are visible in the payloads.
    server = launch(db)
    final = {r["id"]: r for r in wait_terminal(server, len(submitted))}
    recovered = 0
    for request_id, payload in final.items():
        resumed_from = [
            k[request_id]["next_row"]
            for k in kills
            if request_id in k and k[request_id]["claimed_by"]
        ]
        history = payload["error_details"].get("recoveries", [])
        assert payload["recoveries"] == len(resumed_from) == len(history), payload
        assert [h["resumed_from_row"] for h in history] == resumed_from, payload
        assert all(h["reason"] == "process restarted" for h in history), payload
        recovered += len(history)
    assert final[upload.id]["recoveries"] >= 1  # claimed at least while parsing
    code, seconds = server.stop(signal.SIGTERM)
    assert code == 0, server.tail()

    assert_exactly_once(db, submitted)
    assert not any(uploads.iterdir()), "a parsed upload's file must not be kept"
    rows = sum(len(s.rows) for s in submitted)
    stored = sum(r["successful_items"] for r in final.values())
    log.append(
        f"final: {len(submitted)} requests, {rows} rows submitted, {stored} stored, "
        f"{recovered} recoveries recorded; clean stop in {seconds:.2f}s"
    )
    print("\n".join(log))


# --- 2. graceful shutdown ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "phase"),
    [
        (signal.SIGTERM, "processing"),
        (signal.SIGINT, "processing"),
        (signal.SIGTERM, "parsing"),
    ],
    ids=["sigterm-processing", "sigint-processing", "sigterm-parsing"],
)
def test_graceful_shutdown_leaves_the_request_resumable(
    tmp_path: Path, launch: Launch, sig: signal.Signals, phase: str
) -> None:
    db = tmp_path / "term.db"
    rows = 20_000
    server = launch(db)
    server.post("/v1/data_streams", {"key": STREAM, "currency": "USD"}, expect=201)
    upload = submit_csv(server, "up", rows, "upload")
    is_at: Callable[[Any], bool]
    if phase == "processing":
        is_at = lambda r: mid_way(r, at_least=2 * BATCH_SIZE, remaining=4000)  # noqa: E731
    else:
        is_at = lambda r: r["parsing"] and 0 < r["total_items"] <= rows // 2  # noqa: E731
    poll(lambda: server.get(f"/v1/bulk_requests/{upload.id}"), is_at, WATCH_SECONDS, phase)

    # A dashboard left open must not hold the shutdown up: the server ends the stream.
    with server.open_event_stream(f"/v1/bulk_requests/{upload.id}/events") as watcher:
        code, seconds = server.stop(sig, within=SHUTDOWN_GRACE_SECONDS + 5)
        while watcher.recv(65536):
            pass  # events sent before the end; what matters is that the end comes
    print(f"{sig.name} during {phase}: exit {code} after {seconds:.3f}s")
    assert code == 0, server.tail()
    assert seconds < SHUTDOWN_GRACE_SECONDS, server.tail()
    assert "Shutting down" in server.stdout()

    state = snapshot(db)[upload.id]
    # Given back, not abandoned: no claim left for a restart to treat as a crash.
    assert (state["status"], state["claimed_by"]) == ("processing", None), state
    with read_db(db) as conn:
        stored = conn.execute("SELECT count(*) FROM records").fetchone()[0]
        failed = conn.execute("SELECT count(*) FROM row_errors").fetchone()[0]
    if phase == "processing":
        assert state["parsing"] == 0
        assert state["total_items"] == state["staged_rows"] == rows
        assert 0 < state["next_row"] == state["processed_items"] < rows, state
        assert (state["successful_items"], state["failed_items"]) == (stored, failed)
    else:
        assert state["parsing"] == 1
        assert state["next_row"] == state["processed_items"] == 0
        assert 0 < state["staged_rows"] == state["total_items"] < rows, state
        assert (stored, failed) == (0, 0)

    server = launch(db)
    (payload,) = wait_terminal(server, 1)
    assert payload["recoveries"] == 0, payload  # a clean stop is not a crash
    assert server.stop()[0] == 0
    assert_exactly_once(db, [upload])


def test_an_upload_killed_mid_parse_and_cancelled_after_restart_is_not_parsing(
    tmp_path: Path, launch: Launch
) -> None:
    """Crash recovery hands the parse back; cancelled then, it ends before its file was
    parsed, and the payload must stop saying `parsing` (issue 15.7)."""
    db = tmp_path / "parse.db"
    rows = 100_000  # 50 staged chunks: the cancel lands long before the parse ends
    server = launch(db)
    server.post("/v1/data_streams", {"key": STREAM, "currency": "USD"}, expect=201)
    upload = submit_csv(server, "up", rows, "upload")
    path = f"/v1/bulk_requests/{upload.id}"
    poll(
        lambda: server.get(path),
        lambda r: r["parsing"] and 0 < r["total_items"] <= 20_000,
        WATCH_SECONDS,
        "part-way through parsing",
    )
    server.kill()
    assert snapshot(db)[upload.id]["claimed_by"]

    server = launch(db)
    resumed = server.get(path)
    assert (resumed["status"], resumed["parsing"], resumed["recoveries"]) == ("processing", True, 1)
    status, answer = server.call("POST", f"{path}/cancel")
    assert status in (200, 202), answer  # 200 if no worker had claimed it again yet
    final = poll(
        lambda: server.get(path),
        lambda r: r["status"] in TERMINAL_STATUSES,
        SETTLE_SECONDS,
        "cancelled",
    )
    assert (final["status"], final["parsing"], final["processed_items"]) == ("cancelled", False, 0)
    stored = snapshot(db)[upload.id]
    # Genuinely cancelled before its file was parsed: the database still says so, which is
    # what lets a retry parse the same file again.
    assert stored["parsing"] == 1, stored
    assert stored["total_items"] < rows, stored
    assert server.stop()[0] == 0


# --- 3. one server per database ------------------------------------------------------------


def test_second_server_on_the_same_database_is_refused(tmp_path: Path, launch: Launch) -> None:
    db = tmp_path / "locked.db"
    first = launch(db)
    first.post("/v1/data_streams", {"key": STREAM, "currency": "USD"}, expect=201)

    second = launch(db, start=False)
    assert second.wait_exit(START_SECONDS) != 0
    message = second.stderr()
    assert "another server process is already using" in message
    assert str(db) in message
    assert "Traceback" not in message + second.stdout()
    assert "Serving on" not in second.stdout()

    # The first server is untouched: healthy, still accepting and processing.
    assert first.get("/healthz", key=None)["status"] == "ok"
    accepted = submit_json(first, "lock", 120, "skip", "after-refusal")
    (payload,) = wait_terminal(first, 1)
    assert payload["status"] == "completed"
    # The refused start must not have released the first server's lock on its way out.
    third = launch(db, start=False)
    assert third.wait_exit(START_SECONDS) != 0
    assert first.stop()[0] == 0
    assert_exactly_once(db, [accepted])


# --- 4. the first-start key ----------------------------------------------------------------


def test_first_start_prints_one_key_once(tmp_path: Path, launch: Launch) -> None:
    db = tmp_path / "keys.db"
    first = launch(db, api_key=None)
    shown = first.stdout()
    keys = re.findall(r"X-API-KEY: (\S+)", shown)
    assert len(keys) == 1, shown
    key = keys[0]
    assert re.fullmatch(r"bk_[a-z0-9]{12}_[A-Za-z0-9_-]{43}", key), key  # SPEC §11 scheme
    assert shown.count(key) == 1
    assert "once" in shown
    assert key not in first.stderr(), "the key must not reach the logs"
    assert first.call("GET", "/v1/data_streams", key=key)[0] == 200
    assert first.stop()[0] == 0

    second = launch(db, api_key=None)
    assert "X-API-KEY" not in second.stdout()
    assert key not in second.stdout() + second.stderr()
    assert second.call("GET", "/v1/data_streams", key=key)[0] == 200
    assert second.call("GET", "/v1/data_streams", key=key + "0")[0] == 401
    assert second.stop()[0] == 0
