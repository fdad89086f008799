"""The outbox and the one place after every commit (server/outcomes.py, README "After a commit").

Every state change of a request leaves its event in the `outbox` table, written in the
transaction that made the change; the in-process hub is fed exactly those events, and
only server/outcomes.py publishes, wakes the pool or logs a transition.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.api.common import POOL, STORE
from server.batches import validated_batch
from server.bulk_requests import submit_records
from server.config import Settings
from server.constants import OUTBOX_PRUNE_BATCH
from server.db.payload import stored_row
from server.db.port import FencedOut, Storage
from server.db.postgres.storage import PostgresStorage
from server.db.sqlite.store import Store
from server.db.sqlite.tx import WriteTx
from server.outcomes import RequestChanged, Transition
from server.staging import ValidatedRows
from server.types import Source
from tests.conftest import (
    Api,
    claim_without_event,
    make_environment,
    make_stream,
    record,
    wait_until,
)
from tests.db_access import stored_execute, stored_request_row, stored_rows, stored_value
from tests.test_uploads import upload

ApiFactory = Callable[[Settings], Awaitable[Api]]
SERVER = Path(__file__).resolve().parents[1] / "server"


async def outbox(api: Api, request_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await stored_rows(
        api.app[STORE],
        "SELECT event_type, environment_id, payload FROM outbox"
        " WHERE bulk_request_id = ? ORDER BY id",
        request_id,
    )
    events = [(r["event_type"], orjson.loads(r["payload"])) for r in rows]
    # The columns a reader filters on agree with the payload.
    assert [r["environment_id"] for r in rows] == [p["environment_id"] for _t, p in events]
    return events


def types_of(events: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    return [event_type for event_type, _payload in events]


def record_applied(api: Api) -> list[RequestChanged]:
    """Every event the store hands to the app's AfterCommit, in order (it still runs)."""
    store = api.app[STORE]
    applied: list[RequestChanged] = []
    original = store.after_commit
    assert original is not None

    def spy(events: Sequence[RequestChanged]) -> None:
        applied.extend(events)
        original(events)

    store.after_commit = spy
    return applied


def as_stored(applied: Sequence[RequestChanged], request_id: int) -> list[tuple[str, Any]]:
    return [
        (e.transition.value, orjson.loads(orjson.dumps(stored_row(e.row))))
        for e in applied
        if e.request_id == request_id
    ]


async def count(api: Api, sql: str, *params: Any) -> int:
    value: int = await stored_value(api.app[STORE], sql, *params)
    return value


async def test_a_request_processed_in_batches_leaves_each_change_once(
    api: Api,
) -> None:
    applied = record_applied(api)
    await api.create_stream()
    rows = [record(i) for i in range(120)]
    rows[70]["date"] = "nope"
    summary = await api.submit(rows)
    done = await api.wait_terminal(summary["id"])
    events = await outbox(api, summary["id"])
    # Batches of 50 (the test settings): two heartbeats, then the batch that completes.
    assert types_of(events) == ["created", "claimed", "progress", "progress", "completed"]
    assert [p["processed_items"] for _t, p in events] == [0, 0, 50, 100, 120]
    final = events[-1][1]
    assert (
        (final["status"], final["successful_items"], final["failed_items"])
        == (
            done["status"],
            done["successful_items"],
            done["failed_items"],
        )
        == ("completed", 119, 1)
    )
    # Atomic with the change: each event's counters are exactly what its batch stored.
    for _type, payload in events[2:]:
        below = payload["next_row"]
        assert payload["successful_items"] == await count(
            api,
            "SELECT count(*) FROM records WHERE bulk_request_id = ? AND row_index < ?",
            summary["id"],
            below,
        )
        assert payload["failed_items"] == await count(
            api,
            "SELECT count(*) FROM row_errors WHERE bulk_request_id = ? AND row < ?",
            summary["id"],
            below,
        )
    # The hub was fed exactly what the outbox holds, in the same order.
    assert as_stored(applied, summary["id"]) == events


def slow(settings: Settings) -> Settings:
    """One worker that pauses after every 10-row batch: a cancel lands mid-request."""
    return dataclasses.replace(
        settings, workers=1, batch_size=10, batch_pause=0.5, time_slice=1000.0
    )


async def test_cancel_pending_cancel_requested_and_retry(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(slow(settings))
    applied = record_applied(api)
    await api.create_stream()
    big = await api.submit([record(i) for i in range(100)])
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{big['id']}"), lambda r: r["processed_items"] > 0
    )
    waiting = await api.submit([record(1)])

    await api.post(f"/v1/bulk_requests/{waiting['id']}/cancel", expect=200)
    pending = await outbox(api, waiting["id"])
    assert types_of(pending) == ["created", "cancelled"]
    assert pending[1][1]["cancellation_requested_at"] is not None
    # Cancelling again changes nothing, so it leaves nothing.
    await api.post(f"/v1/bulk_requests/{waiting['id']}/cancel", expect=200)
    assert await outbox(api, waiting["id"]) == pending

    await api.post(f"/v1/bulk_requests/{big['id']}/cancel", expect=202)
    requested = await outbox(api, big["id"])
    assert types_of(requested) == ["created", "claimed", "progress", "cancel_requested"]
    assert requested[-1][1]["status"] == "processing"
    assert requested[-1][1]["cancellation_requested_at"] is not None
    done = await api.wait_terminal(big["id"])
    stopped = await outbox(api, big["id"])
    # The worker saw the request at its next heartbeat and stopped there.
    assert types_of(stopped) == [*types_of(requested), "cancelled"]
    assert stopped[-1][1]["processed_items"] == done["processed_items"] == 10

    child = await api.post(f"/v1/bulk_requests/{big['id']}/retry", expect=201)
    created = await outbox(api, child["id"])
    assert types_of(created)[:1] == ["created"]
    assert created[0][1]["parent_bulk_request_id"] == big["id"]
    assert created[0][1]["total_items"] == 90
    # Retrying made no event of its parent.
    assert await outbox(api, big["id"]) == stopped
    for request_id in (waiting["id"], big["id"]):
        assert as_stored(applied, request_id) == await outbox(api, request_id)


async def test_a_rejected_file_leaves_created_claimed_failed(api: Api) -> None:
    applied = record_applied(api)
    await api.create_stream("checking")
    content = b"date,amount,data_stream_key\n2024-01-01,1,checking\n2024-01-02,\xff2,checking\n"
    _, summary = await upload(api, content, format="csv")
    done = await api.wait_terminal(summary["id"])
    events = await outbox(api, summary["id"])
    assert types_of(events) == ["created", "claimed", "failed"]
    assert events[-1][1]["error_message"] == done["error_message"]
    assert as_stored(applied, summary["id"]) == events


async def test_an_upload_parsed_then_processed(api: Api) -> None:
    await api.create_stream("checking")
    content = b"date,amount,data_stream_key\n" + b"2024-01-01,1,checking\n" * 3
    _, summary = await upload(api, content, format="csv")
    await api.wait_terminal(summary["id"])
    events = await outbox(api, summary["id"])
    assert types_of(events) == ["created", "claimed", "parse_progress", "parsed", "completed"]
    assert [p["total_items"] for _t, p in events] == [0, 0, 3, 3, 3]


async def test_crash_recovery_requeue_leaves_a_requeued_event(
    make_api: ApiFactory, settings: Settings
) -> None:
    # No workers: the claim below is one a dead process left behind (on PostgreSQL its
    # heartbeat is past the timeout at once: other processes' claims go by heartbeat).
    api = await make_api(dataclasses.replace(settings, workers=0, heartbeat_timeout=0.001))
    summary = await api.submit([record(1)])
    store = api.app[STORE]
    claimed = await claim_without_event(store, "gone:0:0000")
    assert claimed is not None
    await asyncio.sleep(0.01)
    assert await api.app[POOL].requeue_orphans("process restarted") == [summary["id"]]
    events = await outbox(api, summary["id"])
    # The dead claim made no event (written without one, as by a bare transaction).
    assert types_of(events) == ["created", "requeued"]
    requeued = events[-1][1]
    assert (requeued["recoveries"], requeued["claimed_by"]) == (1, None)
    # The payload is the row as stored: every column in table order with its stored
    # value (JSON columns as JSON text, parsing 0/1), then the joined stream key.
    as_read = await stored_request_row(store, summary["id"])
    assert list(requeued.items()) == list(as_read.items())
    recovery = orjson.loads(requeued["error_details"])["recoveries"][0]
    assert recovery["reason"] == "process restarted"


async def test_a_fenced_out_batch_leaves_neither_records_nor_event(
    make_api: ApiFactory, settings: Settings
) -> None:
    """The batch path itself: a batch whose claim went stale rolls back with its event,
    and the current holder's batch commits both."""
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream()
    # With a key, ordinary rows are staged validated (the accept's fast path; unkeyed
    # they would be staged raw for the worker to prove): bound, not validated.
    keyed = {"Idempotency-Key": "fenced"}
    summary = await api.submit([record(i) for i in range(3)], headers=keyed)
    store = api.app[STORE]
    job = await claim_without_event(store, "holder:0:0000")
    assert job is not None
    chunk = await store.get_chunk_at(summary["id"], 0)
    assert chunk is not None
    rows = chunk.rows()
    assert isinstance(rows, ValidatedRows)
    batch = validated_batch(0, rows.records, rows.streams)
    with pytest.raises(FencedOut):
        await store.commit_batch(job, "zombie:0:0000", batch)
    assert types_of(await outbox(api, summary["id"])) == ["created"]
    assert await count(api, "SELECT count(*) FROM records") == 0
    await store.commit_batch(job, "holder:0:0000", batch)
    events = await outbox(api, summary["id"])
    assert types_of(events) == ["created", "completed"]
    assert events[-1][1]["successful_items"] == await count(api, "SELECT count(*) FROM records")
    assert events[-1][1]["successful_items"] == 3


async def test_a_rolled_back_transaction_leaves_no_event(tmp_path: Path) -> None:
    store = Store(tmp_path / "bulk.db")
    await store.open()
    applied: list[RequestChanged] = []
    store.after_commit = applied.extend
    try:
        environment_id = await store.write(lambda tx: tx.ensure_environment("test"))

        def create(tx: WriteTx, fail: bool) -> None:
            row = tx.insert_bulk_request(
                environment_id=environment_id, source=Source.BULK_API, on_conflict="error"
            )
            tx.emit(row, Transition.CREATED)
            if fail:
                raise RuntimeError("the transaction fails after its event")

        with pytest.raises(RuntimeError):
            await store.write(lambda tx: create(tx, fail=True))
        assert await store.read_value("SELECT count(*) FROM outbox") == 0
        assert await store.read_value("SELECT count(*) FROM bulk_requests") == 0
        assert applied == []

        await store.write(lambda tx: create(tx, fail=False))
        assert await store.read_value("SELECT count(*) FROM outbox") == 1
        assert [e.transition for e in applied] == [Transition.CREATED]
    finally:
        await store.close()


async def test_the_sweeper_prunes_old_events_only(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0, sweep_interval=0.05))
    summary = await api.submit([record(1)])
    old = OUTBOX_PRUNE_BATCH + 3  # more than one pruning transaction's worth

    await stored_execute(
        api.app[STORE],
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO outbox (bulk_request_id, environment_id, event_type, payload,"
        " created_at) SELECT CAST(? AS BIGINT), 1, 'progress', '{}', '2000-01-01T00:00:00Z'"
        " FROM n",
        old,
        summary["id"],
    )
    await wait_until(lambda: count(api, "SELECT count(*) FROM outbox"), lambda n: n < old)
    await wait_until(lambda: count(api, "SELECT count(*) FROM outbox"), lambda n: n == 1)
    assert types_of(await outbox(api, summary["id"])) == ["created"]


# Only server/outcomes.py may follow a commit: these are its side effects.
AFTER_COMMIT_CALLS = {"publish", "wake", "notify_cancel_requested", "log_transition"}


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def test_only_the_after_commit_module_publishes_wakes_or_logs_transitions() -> None:
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        if path == SERVER / "outcomes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _called_name(node) in AFTER_COMMIT_CALLS:
                found.append(f"{path.relative_to(SERVER.parent)}:{node.lineno}")
    assert found == []
    # The check sees calls at all: the one place does make each of them.
    source = ast.parse((SERVER / "outcomes.py").read_text(encoding="utf-8"))
    made = {_called_name(n) for n in ast.walk(source) if isinstance(n, ast.Call)}
    assert {"publish", "log_transition"} <= made


async def test_a_malformed_notified_event_is_logged_and_the_next_ones_still_apply(
    store: Storage, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL hears other processes' events by NOTIFY: an outbox row written behind
    the service's back that does not read as a request is logged and skipped, and the
    listener goes on (it once raised out of its drain task, and out of close())."""
    if backend != "postgres":
        pytest.skip("one SQLite process hears no other process's events")
    assert isinstance(store, PostgresStorage)
    env = await make_environment(store)
    await make_stream(store, env)
    request = (await submit_records(store, env, [record(1)], "error", None, 10))[0]
    payload = orjson.dumps(stored_row(request)).decode()
    applied: list[RequestChanged] = []
    store.after_commit = applied.extend
    insert = (
        "INSERT INTO outbox (bulk_request_id, environment_id, event_type, payload, created_at)"
        " VALUES (?, ?, ?, ?, '2024-01-01T00:00:00Z')"
    )
    # As another process would: the listener does not know these ids as its own.
    await stored_execute(store, insert, request.id, env, "progress", "{}")
    await stored_execute(store, insert, request.id, env, "progress", payload)
    await wait_until(lambda: asyncio.sleep(0, len(applied)), lambda n: n == 1)
    assert applied[0].row == request
    draining = store._draining
    assert draining is not None
    await draining  # did not die of the malformed row
    assert "could not read notified outbox event" in caplog.text
