"""Fixtures: the real app on a real database, driven over HTTP; and, for domain tests that
need no HTTP server, the real storage alone (`store`).

Every one runs on both backends (`backend`: `sqlite`, a file in tmp_path; `postgres`, a
fresh migrated database of the session's throwaway cluster, tests/pg_cluster.py). A test
that is about SQLite by nature (the writer thread, WAL, flock, PRAGMAs, the file's bytes)
is marked `@pytest.mark.sqlite_only("why")` and runs on SQLite alone."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from server.app import create_app
from server.config import Settings
from server.db.port import Storage
from server.db.postgres.storage import PostgresStorage
from server.db.sqlite.store import Store
from server.models import BulkRequest, DataStream
from server.types import TERMINAL_STATUSES
from tests.server_process import ServerProcess
from tests.webhook_receiver import Receiver

# The throwaway PostgreSQL cluster's fixtures (pg_cluster, pg_database): started only by a
# test that asks for them.
pytest_plugins = ["tests.pg_cluster"]

# Property tests: the normal suite runs a bounded, reproducible profile (fixed seed, so a
# red CI is the same red on a laptop); `BULK_FUZZ=long python -m pytest -m "not browser"`
# runs the opt-in long profile, random seed (hypothesis prints it on failure).
hypothesis_settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
hypothesis_settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
hypothesis_settings.load_profile("long" if os.environ.get("BULK_FUZZ") == "long" else "ci")

API_KEY = "bk_test_key_for_the_default_environment_0123456789"
SHARED = Path(__file__).resolve().parents[2] / "shared"


class Api:
    """A test client that sends the API key and answers parsed JSON."""

    def __init__(
        self, client: TestClient[web.Request, web.Application], key: str = API_KEY
    ) -> None:
        self.client = client
        self.key = key
        self.app = client.app

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-API-KEY": self.key, **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        *,
        expect: int | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        async with self.client.request(
            method, path, headers=self.headers(headers), **kwargs
        ) as resp:
            body = await resp.json(content_type=None) if await resp.read() else None
            if expect is not None:
                assert resp.status == expect, (resp.status, body)
            return resp.status, body

    async def get(self, path: str, **kw: Any) -> Any:
        return (await self.call("GET", path, expect=kw.pop("expect", 200), **kw))[1]

    async def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return (await self.call("POST", path, json=body, expect=kw.pop("expect", None), **kw))[1]

    async def create_stream(self, key: str = "bank", currency: str = "USD") -> Any:
        return await self.post("/v1/data_streams", {"key": key, "currency": currency}, expect=201)

    async def submit(
        self,
        records: list[Any],
        *,
        on_conflict: str | None = None,
        expect: int = 202,
        headers: dict[str, str] | None = None,
    ) -> Any:
        body: dict[str, Any] = {"records": records}
        if on_conflict is not None:
            body["on_conflict"] = on_conflict
        return await self.post("/v1/records/bulk", body, expect=expect, headers=headers)

    async def wait_terminal(self, request_id: int, within: float = 20.0) -> Any:
        return await wait_until(
            lambda: self.get(f"/v1/bulk_requests/{request_id}"),
            lambda r: r["status"] in TERMINAL_STATUSES,
            within,
        )

    async def all_pages(self, path: str, limit: int = 200) -> list[Any]:
        items: list[Any] = []
        cursor = None
        sep = "&" if "?" in path else "?"
        while True:
            url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = await self.get(url)
            items.extend(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items


async def wait_until(
    fetch: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], within: float = 20.0
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within}s; last value {value!r}")
        await asyncio.sleep(0.02)


def record(n: int, stream: str = "bank", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "date": "2024-01-31",
        "data_stream_key": stream,
        "amount": f"{n}.25",
        "description": f"row {n}",
    }
    row.update(overrides)
    return row


BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about SQLite itself; not run on PostgreSQL"
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A local webhook receiver (tests/webhook_receiver.py), closed after the test."""
    started = await Receiver().start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """The `run.py` servers a test starts (it appends each), closed after the test
    whatever happened to it."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("sqlite_only")
    if request.param == "postgres" and marker is not None:
        pytest.skip(f"SQLite only: {marker.args[0] if marker.args else ''}")
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None on SQLite; on PostgreSQL a fresh migrated database, dropped after the test."""
    if backend != "postgres":
        return None
    dsn: str = request.getfixturevalue("pg_database")
    return dsn


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        db_path=tmp_path / "bulk.db",
        database_url=database_url,
        workers=2,
        batch_size=50,
        sweep_interval=3600,
        time_slice=0.25,
    )


@pytest.fixture
async def make_api(aiohttp_client: Any) -> Callable[..., Awaitable[Api]]:
    async def make(settings: Settings) -> Api:
        client = await aiohttp_client(create_app(settings, bootstrap_api_key=API_KEY))
        return Api(client)

    return make


@pytest.fixture
async def api(make_api: Callable[..., Awaitable[Api]], settings: Settings) -> Api:
    return await make_api(settings)


# --- the fast store: a real Store on a SQLite file, no aiohttp app ---------------------


@pytest.fixture
async def store(tmp_path: Path, database_url: str | None) -> AsyncIterator[Storage]:
    """The real storage of the backend (migrations, pools), closed after: SQLite on
    tmp_path, or a fresh PostgreSQL database.

    No app and no workers run: nothing claims a request unless the test does, so a
    domain test drives each step itself and sees exactly what that step committed.
    """
    opened: Storage
    if database_url is None:
        opened = Store(tmp_path / "unit.db")
    else:
        # Heartbeat timeout 0: requeue_orphans takes back every claim, as SQLite's does
        # for a store that is the only process (the tests drive each step themselves).
        opened = PostgresStorage(database_url, pool_size=4, heartbeat_timeout=0)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def make_environment(store: Storage, name: str = "default") -> int:
    """The id of environment `name`, created through the store's own operation."""
    return await store.ensure_environment(name)


async def make_stream(
    store: Storage, environment_id: int, key: str = "bank", currency: str = "USD"
) -> DataStream:
    stream = await store.create_data_stream(environment_id, key, None, currency)
    assert stream is not None, f"stream {key!r} already exists"
    return stream


async def claim_next(store: Storage, worker: str) -> BulkRequest | None:
    """Claim the next runnable request for `worker`, as a worker does."""
    return await store.claim_next_request(worker)


async def claim_without_event(store: Storage, worker: str) -> BulkRequest | None:
    """A claim as a process that then died left it: written without its outbox event
    (a bare transaction of the adapter's own)."""
    if isinstance(store, PostgresStorage):
        return await store.write(lambda tx: tx.claim_next_request(worker))
    assert isinstance(store, Store)
    return await store.write(lambda tx: tx.claim_next_request(worker))
