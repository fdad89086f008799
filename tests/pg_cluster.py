"""A throwaway PostgreSQL cluster for the tests (issue 12): no shared or pre-existing server.

`initdb` + `pg_ctl` from Debian's `postgresql` (the newest /usr/lib/postgresql/*/bin, PATH
as a fallback) in a temporary directory, listening on a free TCP port on 127.0.0.1 and on a
socket in that directory. Durability is off (fsync, synchronous_commit, full_page_writes):
the cluster dies with the test run, and the tests that prove crash safety kill server
processes, not the database. PostgreSQL refuses to run as root, so when the tests are root
every command runs as the `postgres` user (the directory is handed to it).

Also a pytest plugin (tests/conftest.py loads it): `pg_cluster` is the session's cluster,
started only when a test asks for it, and stopped (`pg_ctl stop -m immediate`) and removed
afterwards whatever the tests did; `pg_database` is a fresh migrated database per test,
copied from a migrated template (`CREATE DATABASE … TEMPLATE`, a file copy, milliseconds).
Missing binaries FAIL the tests that need them with what to run: CI installs them.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

# Debian's layout: one bin directory per installed major version.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
INSTALL_HINT = "run `sh scripts/install-test-deps.sh` (it installs Debian's postgresql)"
START_TIMEOUT_SECONDS = 60
# A freshly picked port can be taken by someone else before the postmaster binds it.
START_ATTEMPTS = 3
TEST_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Several test databases and pools at once, plus the multi-process tests' servers.
    "max_connections": "200",
}

T = TypeVar("T")


class PostgresBinariesMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    initdb: Path
    pg_ctl: Path


def find_binaries(bin_glob: str | None = None, path: str | None = None) -> Binaries:
    """initdb and pg_ctl of the newest Debian major version, else the ones on PATH."""
    # Read at call time, so a test can point the fixture at a machine without PostgreSQL.
    bin_glob = bin_glob or DEBIAN_BIN_GLOB

    def version(directory: str) -> tuple[int, ...]:
        name = Path(directory).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates = sorted(glob.glob(bin_glob), key=version, reverse=True)
    for directory in candidates:
        initdb, pg_ctl = Path(directory, "initdb"), Path(directory, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return Binaries(initdb, pg_ctl)
    initdb_on_path = shutil.which("initdb", path=path)
    pg_ctl_on_path = shutil.which("pg_ctl", path=path)
    if initdb_on_path and pg_ctl_on_path:
        return Binaries(Path(initdb_on_path), Path(pg_ctl_on_path))
    raise PostgresBinariesMissing(
        f"PostgreSQL's initdb and pg_ctl were found neither under {bin_glob} nor on PATH; "
        f"the PostgreSQL tests need them: {INSTALL_HINT}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Nothing listens on the port (closed connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
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
class PgCluster:
    """One running cluster; `start()` then `stop()` (or use it as a context manager)."""

    binaries: Binaries
    directory: Path = field(init=False)
    port: int = field(init=False, default=0)
    _databases: Iterator[int] = field(init=False, default_factory=itertools.count)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first_line)

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        # As root, drop to the postgres user: initdb and the postmaster refuse root.
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(SUPERUSER)
            as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(arg) for arg in args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS,
            check=False,
            cwd=self.directory,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            **as_user,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(
                f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}"
            )

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bulk-pg-"))
        try:
            self.socket_dir.mkdir()
            if os.geteuid() == 0:
                account = pwd.getpwnam(SUPERUSER)
                for path in (self.directory, self.socket_dir):
                    os.chown(path, account.pw_uid, account.pw_gid)
            self._check(
                self._run(
                    self.binaries.initdb,
                    "--pgdata", self.data_dir,
                    "--username", SUPERUSER,
                    "--auth", "trust",
                    "--encoding", "UTF8",
                    "--locale", "C.UTF-8",
                    "--no-sync",
                    "--no-instructions",
                ),
                "initdb",
            )  # fmt: skip
            for attempt in range(START_ATTEMPTS):
                self.port = free_port()
                options = {**TEST_SETTINGS, "port": str(self.port)}
                options["unix_socket_directories"] = str(self.socket_dir)
                result = self._run(
                    self.binaries.pg_ctl,
                    "start", "--wait", "--timeout", str(START_TIMEOUT_SECONDS),
                    "--pgdata", self.data_dir,
                    "--log", self.log_file,
                    "-o", " ".join(f"-c {name}={value}" for name, value in options.items()),
                )  # fmt: skip
                if result.returncode == 0:
                    return
                if attempt == START_ATTEMPTS - 1:
                    self._check(result, "pg_ctl start")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the postmaster at once and remove the directory; safe to call twice."""
        if not hasattr(self, "directory") or not self.directory.exists():
            return
        try:
            pid = self.postmaster_pid()
            if pid is not None:
                self._run(self.binaries.pg_ctl, "stop", "--wait", "-m", "immediate",
                          "--pgdata", self.data_dir)  # fmt: skip
                deadline = time.monotonic() + START_TIMEOUT_SECONDS
                while pid_is_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
