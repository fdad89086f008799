"""kill -9 of a real `run.py` between a bulk request's final state and its webhook: after
the restart the event is still delivered, once (SPEC §13, README "Webhooks").

The two places a kill can land: (1) the delivery exists and its attempt is in flight
(the receiver holds the request unanswered), so no outcome was recorded; (2) the final
state is committed and the dispatcher's transaction (deliveries + cursor) is not. The
second window is milliseconds wide: the test kills as soon as the state is visible and,
if the dispatcher was faster, puts the database back to the state one transaction
earlier — the dispatch is one transaction, so that is exactly what the kill leaves when
it lands first.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.server_process import ServerProcess, read_db
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

API_KEY = "bk_webhook_crash_test_key_0123456789"
T = TypeVar("T")


async def poll(fetch: Callable[[], T], done: Callable[[T], bool], within: float = 20.0) -> T:
    """Like server_process.poll, but waiting on the loop: the receiver runs on it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await asyncio.to_thread(fetch)
        if done(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {within}s; last {value!r}")
        await asyncio.sleep(0.005)


def query(db: Path, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    with read_db(db) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def status_of(db: Path, request_id: int) -> str | None:
    rows = query(db, "SELECT status FROM bulk_requests WHERE id = ?", (request_id,))
    return rows[0]["status"] if rows else None


def rewind_dispatch(db: Path, request_id: int) -> bool:
    """The state a kill just before the dispatch commit leaves: the event past the cursor
    and no delivery for it. True if there was anything to undo."""
    with sqlite3.connect(db) as conn:
        (event_id,) = conn.execute(
            "SELECT id FROM outbox WHERE bulk_request_id = ? AND event_type = 'completed'",
            (request_id,),
        ).fetchone()
        (cursor,) = conn.execute("SELECT outbox_id FROM webhook_cursor").fetchone()
        if cursor < event_id:
            return False
        attempts = conn.execute(
            "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d"
            " ON d.id = a.delivery_id WHERE d.bulk_request_id = ?",
            (request_id,),
        ).fetchone()[0]
        assert attempts == 0  # the receiver never answered
        conn.execute("DELETE FROM webhook_deliveries WHERE bulk_request_id = ?", (request_id,))
        conn.execute("UPDATE webhook_cursor SET outbox_id = ?", (event_id - 1,))
    return True


async def test_a_kill_between_the_final_state_and_the_delivery_still_delivers_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bulk.db"
    receiver = await Receiver().start()
    receiver.hang = True
    servers: list[ServerProcess] = []

    async def start() -> ServerProcess:
        server = ServerProcess(db, api_key=API_KEY, args=["--workers", "1"], log_dir=tmp_path)
        servers.append(server)
        return await asyncio.to_thread(server.start)

    async def submit(server: ServerProcess, n: int) -> int:
        row = {"date": "2024-01-31", "data_stream_key": "bank", "amount": f"{n}.00"}
        answer = await asyncio.to_thread(
            server.post, "/v1/records/bulk", {"records": [row]}, expect=202
        )
        return int(answer["id"])

    try:
        server = await start()
        await asyncio.to_thread(
            server.post, "/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201
        )
        endpoint = await asyncio.to_thread(
            server.post, "/v1/webhook_endpoints", {"url": receiver.url}, expect=201
        )
        receiver.secret = endpoint["secret"]

        # (1) The attempt is in flight (the receiver holds it) when the server dies.
        first = await submit(server, 1)
        await poll(lambda: receiver.hits, lambda n: n >= 1)
        await asyncio.to_thread(server.kill)
        (held,) = query(db, "SELECT * FROM webhook_deliveries")
        assert held["bulk_request_id"] == first
        assert held["status"] == "pending"
        assert query(db, "SELECT * FROM webhook_attempts") == []
        assert receiver.hit_ids == [held["event_id"]]

        # (2) The final state is committed; the dispatch is not.
        server = await start()
        second = await submit(server, 2)
        await poll(lambda: status_of(db, second), lambda s: s == "completed")
        await asyncio.to_thread(server.kill)
        rewind_dispatch(db, second)
        assert query(db, "SELECT bulk_request_id FROM webhook_deliveries") == [
            {"bulk_request_id": first}
        ]

        # After the restart both are delivered, each once, under a stable webhook-id.
        receiver.hang = False
        server = await start()
        await poll(lambda: len(receiver.received), lambda n: n >= 2)
        await asyncio.sleep(0.5)  # anything sent twice would arrive by now
        assert receiver.unverified == []
        assert receiver.duplicates() == []
        by_request = {r.body["data"]["id"]: r for r in receiver.received}
        assert sorted(by_request) == [first, second]
        assert by_request[first].webhook_id == held["event_id"]
        assert {r.body["type"] for r in receiver.received} == {"bulk_request.completed"}
        for delivery in query(db, "SELECT * FROM webhook_deliveries"):
            assert delivery["status"] == "succeeded"
            assert delivery["attempt_count"] == 1
    finally:
        for each in servers:
            each.close()
        await receiver.close()
