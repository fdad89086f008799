"""A throwaway PostgreSQL cluster for the tests (issue 12): no shared or pre-existing server.

The cluster itself is server/bench/pg_cluster.py's (the benchmark's `--postgres-throwaway`
runs the same code): initdb + pg_ctl in a temporary directory on a free port, as the
`postgres` user when the tests are root. Here durability is off (fsync,
synchronous_commit, full_page_writes): the cluster dies with the test run, and the tests
that prove crash safety kill server processes, not the database.

Also a pytest plugin (tests/conftest.py loads it): `pg_cluster` is the session's cluster,
started only when a test asks for it, and stopped (`pg_ctl stop -m immediate`) and removed
afterwards whatever the tests did; `pg_database` is a fresh migrated database per test,
copied from a migrated template (`CREATE DATABASE … TEMPLATE`, a file copy, milliseconds).
Missing binaries FAIL the tests that need them with what to run: CI installs them.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import pytest

from server.bench import pg_cluster as shared
from server.bench.pg_cluster import (
    SUPERUSER,
    Binaries,
    Cluster,
    PostgresBinariesMissing,
    pid_is_alive,
)

__all__ = ["SUPERUSER", "PostgresBinariesMissing", "pid_is_alive"]

# Read at call time (a test points it at a machine without PostgreSQL).
DEBIAN_BIN_GLOB = shared.DEBIAN_BIN_GLOB
INSTALL_HINT = "run `sh scripts/install-test-deps.sh` (it installs Debian's postgresql)"
TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Several test databases and pools at once, plus the multi-process tests' servers.
    "max_connections": "200",
}

T = TypeVar("T")


def find_binaries(bin_glob: str | None = None, path: str | None = None) -> Binaries:
    """initdb and pg_ctl of the newest Debian major version, else the ones on PATH."""
    return shared.find_binaries(bin_glob or DEBIAN_BIN_GLOB, path, INSTALL_HINT)


def port_is_free(port: int) -> bool:
    """Nothing listens on the port (closed connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run_in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own, from synchronous code.

    In a worker thread, so the calling thread's event loop (pytest-asyncio's) is untouched.
    """

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@dataclass
class PgCluster(Cluster):
    """The tests' cluster: durability off, stopped at once, databases made on demand."""

    settings: dict[str, str] = field(default_factory=lambda: dict(TEST_SETTINGS))
    durable: bool = False
    stop_mode: str = "immediate"
    _databases: Iterator[int] = field(init=False, default_factory=itertools.count)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def new_database_name(self) -> str:
        return f"test_{next(self._databases)}"

    async def execute(self, sql: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.dsn(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create_database(self, template: str | None = None) -> str:
        """A new database (empty, or a copy of `template`); returns its DSN."""
        name = self.new_database_name()
        copy = f" TEMPLATE {template}" if template else ""
        await self.execute(f"CREATE DATABASE {name}{copy}")
        return self.dsn(name)

    async def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        await self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


MIGRATED_TEMPLATE = "bulk_migrated_template"


@dataclass
class SessionCluster:
    """The session's cluster and its migrated template database."""

    cluster: PgCluster
    template: str


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[SessionCluster]:
    from server.db.postgres.migrations import migrate

    try:
        binaries = find_binaries()
    except PostgresBinariesMissing as missing:
        pytest.fail(str(missing), pytrace=False)

    async def build_template(cluster: PgCluster) -> None:
        await cluster.execute(f"CREATE DATABASE {MIGRATED_TEMPLATE}")
        conn = await asyncpg.connect(cluster.dsn(MIGRATED_TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    with PgCluster(binaries) as cluster:
        run_in_thread(lambda: build_template(cluster))
        yield SessionCluster(cluster, MIGRATED_TEMPLATE)


@pytest.fixture
def pg_database(pg_cluster: SessionCluster) -> Iterator[str]:
    """The DSN of a fresh database with every migration applied, dropped after the test."""
    cluster = pg_cluster.cluster
    dsn = run_in_thread(lambda: cluster.create_database(template=pg_cluster.template))
    yield dsn
    run_in_thread(lambda: cluster.drop_database(dsn))


@pytest.fixture
def pg_empty_database(pg_cluster: SessionCluster) -> Iterator[str]:
    """The DSN of a fresh database with no schema, for the migration tests."""
    cluster = pg_cluster.cluster
    dsn = run_in_thread(lambda: cluster.create_database())
    yield dsn
    run_in_thread(lambda: cluster.drop_database(dsn))
