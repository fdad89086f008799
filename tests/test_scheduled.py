"""Scheduled requests (SPEC §12): `run_at` on bulk posts and uploads, `scheduled`, cancel,
the `scheduled` filter, the claim at `run_at` without polling, durability across kill -9.

Timing is asserted the robust way on a loaded 2-core machine: never before `run_at`,
within a generous bound after it, and with the claim attempts counted while waiting
(a polling pool would run hundreds; a sleeping one a handful).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData

from server.api.common import STORE
from server.clock import parse_rfc3339, to_rfc3339, utc_now
from server.db.sqlite.migrations import MIGRATIONS, migrate
from server.db.sqlite.store import Store
from server.staging import encode_items
from tests.conftest import (
    API_KEY,
    Api,
    claim_next,
    make_environment,
    make_stream,
    record,
    wait_until,
)
from tests.db_access import stored_uploads
from tests.server_process import ServerProcess, poll, read_db

# How late after run_at a claim may be and still pass here. The contract is "within a
# second"; the bound is wider because the test machine's 2 cores are shared.
CLAIM_LATENESS_BOUND_SECONDS = 3.0
# Claim transactions all workers may run while a schedule waits a few seconds: once
# each when the schedule's creation wakes them, once more each at the idle safety poll,
# and once each when it is due. A polling loop would run hundreds.
MAX_CLAIMS_WHILE_WAITING = 8


def ahead(seconds: float) -> str:
    return to_rfc3339(utc_now() + timedelta(seconds=seconds))


async def submit_at(api: Api, run_at: Any, *, expect: int = 202, **extra: Any) -> Any:
    body = {"records": [record(1), record(2)], "run_at": run_at, **extra}
    return await api.post("/v1/records/bulk", body, expect=expect)


async def upload_at(api: Api, content: bytes, run_at: str | None, *, expect: int = 202) -> Any:
    form = FormData()
    form.add_field("file", content, filename="sched.csv", content_type="text/csv")
    form.add_field("data_stream_key", "bank")
    if run_at is not None:
        form.add_field("run_at", run_at)
    status, body = await api.call("POST", "/v1/uploads", data=form)
    assert status == expect, (status, body)
    return body


async def claim_attempts(api: Api) -> float:
    async with api.client.get("/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^bulk_worker_claim_attempts_total (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1))


# --- validation: a bad run_at is a 422 that creates nothing --------------------------------


@pytest.mark.parametrize(
    ("run_at", "code"),
    [
        ("2026-12-24T09:00:00", "missing_offset"),
        ("next tuesday", "invalid_format"),
        ("", "invalid_format"),
        ("2026-02-30T09:00:00Z", "invalid_value"),
        ("1969-07-20T20:17:00Z", "out_of_range"),
        (12345, "invalid_type"),
        ({"at": "2026-12-24T09:00:00Z"}, "invalid_type"),
        (True, "invalid_type"),
    ],
)
async def test_bad_run_at_on_bulk_post_is_422_and_creates_nothing(
    api: Api, run_at: Any, code: str
) -> None:
    await api.create_stream()
    problem = await submit_at(api, run_at, expect=422)
    assert problem["errors"] == [
        {"pointer": "/run_at", "code": code, "message": problem["errors"][0]["message"]}
    ]
    assert (await api.get("/v1/bulk_requests"))["data"] == []


async def test_run_at_more_than_366_days_ahead_is_422(api: Api) -> None:
    await api.create_stream()
    problem = await submit_at(api, ahead(367 * 86400), expect=422)
    assert [e["code"] for e in problem["errors"]] == ["too_far_ahead"]
    # Just inside the bound is accepted.
    accepted = await submit_at(api, ahead(365 * 86400))
    assert accepted["status"] == "pending"
    assert len((await api.get("/v1/bulk_requests"))["data"]) == 1


@pytest.mark.parametrize(
    ("run_at", "code"),
    [
        ("", "empty"),
        ("2026-12-24T09:00:00", "missing_offset"),
        ("soon", "invalid_format"),
        ("2999-01-01T00:00:00Z", "too_far_ahead"),
    ],
)
async def test_bad_run_at_on_upload_is_422_and_leaves_nothing(
    api: Api, settings: Any, run_at: str, code: str
) -> None:
    await api.create_stream()
    problem = await upload_at(api, b"date,amount\n2024-01-31,1.00\n", run_at, expect=422)
    assert [(e["pointer"], e["code"]) for e in problem["errors"]] == [("/run_at", code)]
    assert (await api.get("/v1/bulk_requests"))["data"] == []
    assert await stored_uploads(api.app[STORE]) == []


async def test_bad_scheduled_filter_is_400(api: Api) -> None:
    status, problem = await api.call("GET", "/v1/bulk_requests?scheduled=yes")
    assert status == 400, problem
    assert problem["errors"][0]["parameter"] == "scheduled"


# --- the lifecycle of a scheduled request ------------------------------------------------


async def test_scheduled_request_waits_shows_its_schedule_then_runs(api: Api) -> None:
    await api.create_stream()
    # Spelled with an offset; shown (and stored) as the same instant in UTC.
    moment = utc_now().replace(microsecond=0) + timedelta(seconds=2)
    spelled = moment.astimezone(timezone(timedelta(hours=2))).isoformat()
    summary = await submit_at(api, spelled)
    assert summary["status"] == "pending"
    path = f"/v1/bulk_requests/{summary['id']}"
    waiting = await api.get(path)
    assert (waiting["status"], waiting["scheduled"]) == ("pending", True)
    assert waiting["run_at"] == to_rfc3339(moment)
    assert waiting["started_at"] is None
    assert waiting["can_cancel"] is True
    unscheduled = await api.submit([record(3)])

    listed = await api.get("/v1/bulk_requests?scheduled=true")
    assert [r["id"] for r in listed["data"]] == [summary["id"]]
    others = await api.get("/v1/bulk_requests?scheduled=false")
    assert [r["id"] for r in others["data"]] == [unscheduled["id"]]
    done = await api.wait_terminal(unscheduled["id"])
    assert (done["run_at"], done["scheduled"]) == (None, False)

    final = await api.wait_terminal(summary["id"])
    assert final["status"] == "completed"
    assert final["successful_items"] == 2
    assert parse_rfc3339(final["started_at"]) >= moment
    assert (final["run_at"], final["scheduled"]) == (to_rfc3339(moment), False)
    assert (await api.get("/v1/bulk_requests?scheduled=true"))["data"] == []
    assert len((await api.get("/v1/bulk_requests?scheduled=false"))["data"]) == 2


async def test_run_at_in_the_past_runs_at_once(api: Api) -> None:
    await api.create_stream()
    summary = await submit_at(api, "2020-01-01T00:00:00Z")
    final = await api.wait_terminal(summary["id"], within=10)
    assert final["status"] == "completed"
    assert (final["run_at"], final["scheduled"]) == ("2020-01-01T00:00:00.000000Z", False)


async def test_null_run_at_is_not_scheduled(api: Api) -> None:
    await api.create_stream()
    summary = await submit_at(api, None)
    final = await api.wait_terminal(summary["id"], within=10)
    assert (final["status"], final["run_at"]) == ("completed", None)


async def test_cancel_of_a_scheduled_request_is_immediate_and_its_retry_runs_at_once(
    api: Api,
) -> None:
    await api.create_stream()
    summary = await submit_at(api, ahead(3600))
    path = f"/v1/bulk_requests/{summary['id']}"
    status, cancelled = await api.call("POST", f"{path}/cancel")
    assert status == 200, cancelled
    assert (cancelled["status"], cancelled["scheduled"]) == ("cancelled", False)
    assert cancelled["completed_at"] is not None
    assert (await api.get("/v1/bulk_requests?scheduled=true"))["data"] == []
    # A retry is not scheduled: the client retries to have the rows now (README).
    child = await api.post(f"{path}/retry", expect=201)
    assert (child["run_at"], child["scheduled"], child["total_items"]) == (None, False, 2)
    final = await api.wait_terminal(child["id"], within=10)
    assert (final["status"], final["successful_items"]) == ("completed", 2)
    assert (await api.get(path))["status"] == "cancelled"  # the parent never ran
    records = await api.get("/v1/records?limit=200")
    assert {r["bulk_request_id"] for r in records["data"]} == {child["id"]}


async def test_scheduled_upload_is_parsed_when_it_runs_and_a_bad_file_fails_then(
    api: Api, settings: Any
) -> None:
    await api.create_stream()
    run_at = utc_now() + timedelta(seconds=1.5)
    # A header and no rows: the request fails when the file is parsed (SPEC §8).
    body = await upload_at(api, b"date,amount,description\n", to_rfc3339(run_at))
    path = f"/v1/bulk_requests/{body['id']}"
    waiting = await api.get(path)
    assert (waiting["status"], waiting["scheduled"], waiting["parsing"]) == ("pending", True, True)
    assert waiting["error_message"] is None
    # Stored, not parsed: the file waits among the stored uploads.
    assert len(await stored_uploads(api.app[STORE])) == 1
    final = await api.wait_terminal(body["id"])
    assert final["status"] == "failed", final
    assert final["error_message"]
    assert parse_rfc3339(final["started_at"]) >= run_at


async def test_scheduled_upload_with_good_rows_stores_them_at_its_time(api: Api) -> None:
    await api.create_stream()
    run_at = utc_now() + timedelta(seconds=1)
    body = await upload_at(
        api, b"date,amount,external_id\n2024-01-31,1.50,a\n2024-02-01,2.50,b\n", to_rfc3339(run_at)
    )
    waiting = await api.get(f"/v1/bulk_requests/{body['id']}")
    assert (waiting["total_items"], waiting["scheduled"]) == (0, True)
    final = await api.wait_terminal(body["id"])
    assert (final["status"], final["successful_items"]) == ("completed", 2)
    assert parse_rfc3339(final["started_at"]) >= run_at


async def test_a_cancelled_scheduled_upload_retried_parses_its_file_at_once(api: Api) -> None:
    await api.create_stream()
    body = await upload_at(api, b"date,amount\n2024-01-31,1.00\n2024-02-01,2.00\n", ahead(3600))
    path = f"/v1/bulk_requests/{body['id']}"
    status, cancelled = await api.call("POST", f"{path}/cancel")
    assert (status, cancelled["status"], cancelled["parsing"]) == (200, "cancelled", False)
    child = await api.post(f"{path}/retry", expect=201)
    assert (child["run_at"], child["scheduled"]) == (None, False)
    final = await api.wait_terminal(child["id"], within=10)
    assert (final["status"], final["successful_items"]) == ("completed", 2)


# --- idempotency ---------------------------------------------------------------------------


async def test_idempotency_fingerprint_includes_the_run_at_instant(api: Api) -> None:
    await api.create_stream()
    key = {"Idempotency-Key": "sched-1"}
    body: dict[str, Any] = {"records": [record(1)], "run_at": "2026-12-24T09:00:00Z"}
    first = await api.post("/v1/records/bulk", body, expect=202, headers=key)
    # The same instant spelled with an offset is the same request.
    same = {**body, "run_at": "2026-12-24T10:00:00+01:00"}
    status, replay = await api.call("POST", "/v1/records/bulk", json=same, headers=key)
    assert status == 200, replay
    assert replay["id"] == first["id"]
    for changed in ({**body, "run_at": "2026-12-24T09:00:01Z"}, {"records": [record(1)]}):
        status, problem = await api.call("POST", "/v1/records/bulk", json=changed, headers=key)
        assert status == 409, problem
    assert len((await api.get("/v1/bulk_requests"))["data"]) == 1


async def test_upload_idempotency_fingerprint_includes_run_at(api: Api) -> None:
    await api.create_stream()
    content = b"date,amount\n2024-01-31,1.00\n"

    async def send(run_at: str | None) -> tuple[int, Any]:
        form = FormData()
        form.add_field("file", content, filename="a.csv", content_type="text/csv")
        form.add_field("data_stream_key", "bank")
        if run_at is not None:
            form.add_field("run_at", run_at)
        return await api.call(
            "POST", "/v1/uploads", data=form, headers={"Idempotency-Key": "up-sched"}
        )

    assert (await send("2026-12-24T09:00:00Z"))[0] == 202
    assert (await send("2026-12-24T04:00:00-05:00"))[0] == 200
    assert (await send(None))[0] == 409
    assert (await send("2026-12-25T09:00:00Z"))[0] == 409


# --- the claim: at run_at, without polling ---------------------------------------------------


async def test_claimed_within_bound_of_run_at_and_the_pool_sleeps_meanwhile(api: Api) -> None:
    await api.create_stream()
    # A far schedule first: idle workers then sleep (at most the idle poll interval)...
    far = await submit_at(api, ahead(600))
    await asyncio.sleep(0.3)
    before = await claim_attempts(api)
    # ...and a nearer one committed meanwhile wakes them to sleep until its run_at. (A
    # pool that only slept the idle poll interval would claim it ~4 s late.)
    run_at = utc_now() + timedelta(seconds=1)
    near = await submit_at(api, to_rfc3339(run_at))
    path = f"/v1/bulk_requests/{near['id']}"
    started = await wait_until(
        lambda: api.get(path),
        lambda r: r["started_at"] is not None,
        within=1 + CLAIM_LATENESS_BOUND_SECONDS + 5,
    )
    claims = await claim_attempts(api) - before
    lateness = (parse_rfc3339(started["started_at"]) - run_at).total_seconds()
    print(f"claimed {lateness * 1000:.1f} ms after run_at; {claims:.0f} claim attempts meanwhile")
    assert 0 <= lateness < CLAIM_LATENESS_BOUND_SECONDS
    assert claims <= MAX_CLAIMS_WHILE_WAITING
    far_now = await api.get(f"/v1/bulk_requests/{far['id']}")
    assert (far_now["status"], far_now["scheduled"]) == ("pending", True)


async def test_queue_depth_does_not_count_requests_waiting_for_their_time(api: Api) -> None:
    await api.create_stream()
    await submit_at(api, ahead(600))
    health = await api.get("/healthz")
    assert health["queue_depth"] == 0


@pytest.mark.sqlite_only("a SQLite file from before SQLite's scheduling migration")
async def test_a_request_pending_before_the_migration_runs_unscheduled(
    make_api: Any, settings: Any
) -> None:
    """A database as the server before scheduling left it, with a request still pending:
    migrated at start, it is not scheduled and runs at once."""
    schedule_migration = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN run_at" in m)
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.db_path)
    assert migrate(conn, up_to=schedule_migration) == schedule_migration
    now = "2024-01-01T00:00:00.000000Z"
    conn.executescript(
        f"""
        INSERT INTO environments (id, name, created_at) VALUES (1, 'default', '{now}');
        INSERT INTO data_streams (id, environment_id, key, currency, created_at)
            VALUES (1, 1, 'bank', 'USD', '{now}');
        INSERT INTO bulk_requests (id, environment_id, status, source, on_conflict,
            total_items, created_at, queued_at)
            VALUES (1, 1, 'pending', 'bulk_api', 'skip', 1, '{now}', '{now}');
        """
    )
    conn.execute(
        "INSERT INTO request_chunks (bulk_request_id, first_row, row_count, body)"
        " VALUES (1, 0, 1, ?)",
        (encode_items([[None, record(1), None]]),),
    )
    conn.commit()
    conn.close()
    api = await make_api(settings)
    final = await api.wait_terminal(1, within=10)
    assert (final["status"], final["run_at"], final["scheduled"]) == ("completed", None, False)
    assert final["successful_items"] == 1


# --- the storage operations (the port, on the SQLite adapter) -------------------------------


async def test_store_claim_skips_a_request_until_its_run_at(store: Store) -> None:
    environment = await make_environment(store)
    await make_stream(store, environment)
    due = utc_now() + timedelta(seconds=0.5)
    later = utc_now() + timedelta(hours=1)
    for run_at in (later, due):
        await store.create_records_request(
            environment,
            on_conflict="skip",
            total_items=0,
            chunks=[],
            data_stream_key=None,
            claim=None,
            run_at=run_at,
        )
    assert await claim_next(store, "w") is None
    assert not await store.has_runnable_request()
    assert await store.queue_depth() == 0
    assert await store.next_run_at() == due
    await asyncio.sleep(max(0.0, (due - utc_now()).total_seconds()) + 0.01)
    assert await store.next_run_at() == later
    assert await store.has_runnable_request()
    claimed = await claim_next(store, "w")
    assert claimed is not None
    assert claimed.run_at is not None
    assert parse_rfc3339(claimed.run_at) == due
    assert await claim_next(store, "w2") is None


async def test_store_lists_by_scheduled(store: Store) -> None:
    environment = await make_environment(store)
    ids = {}
    for name, run_at in (
        ("waiting", utc_now() + timedelta(hours=1)),
        ("past", datetime(2020, 1, 1, tzinfo=UTC)),
        ("plain", None),
    ):
        row, _ = await store.create_records_request(
            environment,
            on_conflict="skip",
            total_items=0,
            chunks=[],
            data_stream_key=None,
            claim=None,
            run_at=run_at,
        )
        ids[name] = row.id

    async def listed(scheduled: bool | None) -> set[int]:
        rows = await store.list_bulk_requests(
            environment,
            status=None,
            source=None,
            data_stream_key=None,
            before_id=2**62,
            limit=50,
            scheduled=scheduled,
        )
        return {r.id for r in rows}

    assert await listed(True) == {ids["waiting"]}
    assert await listed(False) == {ids["past"], ids["plain"]}
    assert await listed(None) == set(ids.values())


# --- durable across kill -9 ------------------------------------------------------------------


def test_a_schedule_survives_kill_9_and_runs_once_at_its_time(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    db = tmp_path / "sched.db"

    def launch() -> ServerProcess:
        server = ServerProcess(db, api_key=API_KEY, log_dir=tmp_path)
        servers.append(server)
        return server.start()

    server = launch()
    server.post("/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201)
    run_at = utc_now() + timedelta(seconds=2)
    rows = [record(n, external_id=f"k-{n}") for n in range(300)]
    summary = server.post(
        "/v1/records/bulk", {"records": rows, "run_at": to_rfc3339(run_at)}, expect=202
    )
    path = f"/v1/bulk_requests/{summary['id']}"
    assert server.get(path)["scheduled"] is True
    server.kill()
    # Killed before its time: nothing ran, the schedule is in the database.
    with read_db(db) as conn:
        stored = conn.execute(
            "SELECT status, run_at, started_at FROM bulk_requests WHERE id = ?", (summary["id"],)
        ).fetchone()
    assert (stored["status"], stored["run_at"], stored["started_at"]) == (
        "pending",
        to_rfc3339(run_at),
        None,
    )

    server = launch()
    final = poll(
        lambda: server.get(path),
        lambda r: r["status"] == "completed",
        30.0,
        "the scheduled request completed after the restart",
    )
    assert parse_rfc3339(final["started_at"]) >= run_at
    assert final["successful_items"] == 300
    with read_db(db) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT external_id) FROM records WHERE bulk_request_id = ?",
            (summary["id"],),
        ).fetchone()
    assert (count, distinct) == (300, 300)
    assert server.stop()[0] == 0
