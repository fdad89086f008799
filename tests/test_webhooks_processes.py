"""Webhooks with several processes on one PostgreSQL database (SPEC §16, README "Webhooks").

Every process runs a dispatcher. Two apps (each with its own pool, LISTEN connection,
workers and dispatcher, as two `run.py` processes have) share one database here: each
event is delivered once, never sent by both at once, and an event whose transaction
commits after a later one's is still delivered. PostgreSQL only: one process owns a
SQLite file (the flock), so there is no second dispatcher there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import orjson
import pytest

from server.clock import now_rfc3339
from server.config import Settings
from server.db.payload import stored_row
from server.db.postgres.storage import PostgresStorage
from server.db.postgres.tx import PgTx
from server.models import BulkRequest
from server.outcomes import Transition
from server.types import JSON, Source
from server.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import Api, make_environment, record, wait_until
from tests.server_process import ServerProcess, poll
from tests.webhook_receiver import Receiver, ThreadedReceiver

ApiFactory = Callable[[Settings], Awaitable[Api]]
API_KEY = "bk_webhook_processes_test_key_0123456789"
ALL_TYPES = ["bulk_request.completed", "bulk_request.failed", "bulk_request.cancelled"]


@pytest.fixture
def pg_settings(tmp_path: Path, pg_database: str) -> Settings:
    return Settings(
        db_path=tmp_path / "unused.db",
        database_url=pg_database,
        workers=2,
        batch_size=50,
        sweep_interval=3600,
        time_slice=0.25,
        webhook_retry_base=0.05,
    )


async def test_two_processes_dispatchers_deliver_each_event_once_and_never_send_it_twice(
    make_api: ApiFactory, pg_settings: Settings, receiver: Receiver
) -> None:
    first = await make_api(pg_settings)
    second = await make_api(dataclasses.replace(pg_settings))
    await first.create_stream()
    endpoint = await first.post("/v1/webhook_endpoints", {"url": receiver.url}, expect=201)
    receiver.secret = endpoint["secret"]
    # Each terminal commit nudges both dispatchers at once (its own process directly, the
    # other through LISTEN/NOTIFY): both look for due deliveries at the same moment.
    ids = []
    for n in range(12):
        summary = await (first, second)[n % 2].submit([record(n)])
        ids.append(summary["id"])
    for request_id in ids:
        await first.wait_terminal(request_id)

    async def listed() -> list[JSON]:
        page = await second.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries?limit=100")
        return list(page["data"])

    found = await wait_until(
        listed,
        lambda found: len(found) == len(ids) and all(d["status"] != "pending" for d in found),
    )
    await asyncio.sleep(0.5)  # a second send of anything would have arrived by now
    assert receiver.unverified == []
    assert receiver.duplicates() == []
    assert receiver.hits == len(ids)
    assert sorted(r.body["data"]["id"] for r in receiver.received) == sorted(ids)
    assert sorted(d["bulk_request_id"] for d in found) == sorted(ids)
    assert all(d["status"] == "succeeded" and len(d["attempts"]) == 1 for d in found)


async def _just_the_id(request: BulkRequest) -> JSON:
    return {"id": request.id}


async def test_an_event_committed_after_a_newer_one_is_still_delivered(
    pg_database: str, tmp_path: Path
) -> None:
    storage = PostgresStorage(pg_database, pool_size=4, heartbeat_timeout=60)
    await storage.open()
    raw = await asyncpg.connect(pg_database)
    try:
        env = await make_environment(storage)
        endpoint = await storage.webhooks.create_endpoint(
            env, url="http://127.0.0.1:9/hook", events=ALL_TYPES, description=None, secret="w"
        )

        async def new_request(tx: PgTx) -> BulkRequest:
            return await tx.insert_bulk_request(
                environment_id=env, status="completed", source=Source.BULK_API, on_conflict="skip"
            )

        early = await storage.write(new_request)
        late = await storage.write(new_request)
        # Another process's transaction takes an outbox id and is still open...
        open_tx = raw.transaction()
        await open_tx.start()
        early_event = await raw.fetchval(
            "INSERT INTO outbox (bulk_request_id, environment_id, event_type, payload,"
            " created_at) VALUES ($1, $2, 'completed', $3, $4) RETURNING id",
            early.id,
            env,
            orjson.dumps(stored_row(early)).decode(),
            now_rfc3339(),
        )

        # ... when a later one, with a higher id, commits.
        async def finish_late(tx: PgTx) -> None:
            await tx.emit(late, Transition.COMPLETED)

        await storage.write(finish_late)
        dispatcher = WebhookDispatcher(
            storage.webhooks, Settings(db_path=tmp_path / "unused.db"), _just_the_id
        )
        round_ = asyncio.create_task(dispatcher.dispatch_once())
        await asyncio.sleep(0.3)
        # The round waits for the open writer: moving the cursor past its id now would
        # skip its event for ever once it commits.
        assert not round_.done()
        await open_tx.commit()
        await asyncio.wait_for(round_, timeout=10)
        await dispatcher.dispatch_once()
        found = await storage.webhooks.list_deliveries(
            endpoint.id, status=None, before_id=2**62, limit=10
        )
        assert sorted(d.bulk_request_id for d in found) == [early.id, late.id]
        assert early_event in {d.outbox_id for d in found}
    finally:
        await raw.close()
        await storage.close()


@pytest.mark.slow
def test_three_run_py_processes_on_one_database_deliver_each_event_once(
    pg_database: str, tmp_path: Path
) -> None:
    threaded = ThreadedReceiver()
    receiver = threaded.receiver
    servers = [
        ServerProcess(
            tmp_path / f"unused-{n}.db",
            api_key=API_KEY,
            args=["--database-url", pg_database, "--workers", "1", "--log-level", "WARNING"],
            log_dir=tmp_path,
        )
        for n in range(3)
    ]
    try:
        for server in servers:
            server.start()
        servers[0].post("/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201)
        endpoint = servers[1].post("/v1/webhook_endpoints", {"url": receiver.url}, expect=201)
        receiver.secret = endpoint["secret"]
        ids = [
            servers[n % 3].post("/v1/records/bulk", {"records": [record(n)]}, expect=202)["id"]
            for n in range(15)
        ]
        poll(lambda: len(receiver.received), lambda n: n >= len(ids), 30, "every delivery")
        time.sleep(1.0)  # a second send of anything would have arrived by now
        assert receiver.unverified == []
        assert receiver.duplicates() == []
        assert receiver.hits == len(ids)
        assert sorted(r.body["data"]["id"] for r in receiver.received) == sorted(ids)
        listed = servers[2].get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries?limit=100")
        assert all(len(d["attempts"]) == 1 for d in listed["data"])
    finally:
        for server in servers:
            server.close()
        threaded.close()
