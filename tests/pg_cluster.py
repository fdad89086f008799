"""A throwaway PostgreSQL cluster for the tests (issue 12): no shared or pre-existing server.

`initdb` + `pg_ctl` from Debian's `postgresql` (the newest /usr/lib/postgresql/*/bin, PATH
as a fallback) in a temporary directory, listening on a free TCP port on 127.0.0.1 and on a
socket in that directory. Durability is off (fsync, synchronous_commit, full_page_writes):
the cluster dies with the test run, and the tests that prove crash safety kill server
processes, not the database. PostgreSQL refuses to run as root, so when the tests are root
every command runs as the `postgres` user (the directory is handed to it).

Also a pytest plugin (tests/conftest.py loads it): `pg_cluster` is the session's cluster,
started only when a test asks for it, and stopped (`pg_ctl stop -m immediate`) and removed
afterwards whatever the tests did; `pg_database` is a migrated database that no other test
is using, in the state of a fresh copy of the migrated template: a copy (`CREATE DATABASE …
TEMPLATE`) when none is free, else one an earlier test used and `DatabasePool` emptied back
to the template's state (see there). Missing binaries FAIL the tests that need them with
what to run: CI installs them.
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
# A test's other connections (a server it started, a pool it did not close) are ended
# before its database is emptied; this long for them to be gone, else the database is
# dropped instead.
RESET_SECONDS = 10.0

# What a test could change besides rows and sequences, read from the catalogs: relations
# and their columns, indexes, constraints, triggers (and whether enabled), functions,
# types, and the database's own settings. Equal to the template's: only rows can differ.
SCHEMA_FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
    SELECT concat_ws(':', 'rel', c.relname, c.relkind, c.relpersistence, a.attname,
                     format_type(a.atttypid, a.atttypmod), a.attnotnull,
                     pg_get_expr(d.adbin, d.adrelid), a.attidentity)
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND c.relpersistence <> 't'
    UNION ALL
    SELECT concat_ws(':', 'index', indexrelid::regclass, pg_get_indexdef(indexrelid))
      FROM pg_index WHERE indrelid::regclass::text NOT LIKE 'pg_%'
    UNION ALL
    SELECT concat_ws(':', 'constraint', conrelid::regclass, conname, pg_get_constraintdef(oid))
      FROM pg_constraint
     WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    UNION ALL
    SELECT concat_ws(':', 'trigger', tgrelid::regclass, tgname, tgenabled, pg_get_triggerdef(oid))
      FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT concat_ws(':', 'function', p.oid::regprocedure, md5(p.prosrc))
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT concat_ws(':', 'type', t.oid::regtype)
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL
    SELECT concat_ws(':', 'setting', s.setrole, array_to_string(s.setconfig, ','))
      FROM pg_db_role_setting s JOIN pg_database db ON db.oid = s.setdatabase
     WHERE db.datname = current_database()
) AS schema(item)
"""


@dataclass(frozen=True)
class TemplateState:
    """What a database copied from the migrated template holds besides its schema."""

    fingerprint: str
    # Tables that hold rows in the template (the migrations' version table): their
    # content is part of the state, compared, not emptied.
    seeded: dict[str, str]
    # The other tables, emptied between tests.
    emptied: tuple[str, ...]
    # Each sequence's (last_value, is_called), restored with setval.
    sequences: dict[str, tuple[int, bool]]

    @staticmethod
    async def read(conn: asyncpg.Connection) -> TemplateState:
        tables = [
            row[0]
            for row in await conn.fetch(
                "SELECT format('%I', tablename) FROM pg_tables WHERE schemaname = 'public'"
                " ORDER BY tablename"
            )
        ]
        seeded: dict[str, str] = {}
        for table in tables:
            if await conn.fetchval(f"SELECT EXISTS (SELECT FROM {table})"):
                seeded[table] = await _content_digest(conn, table)
        sequences: dict[str, tuple[int, bool]] = {}
        for (sequence,) in await conn.fetch(
            "SELECT format('%I', sequencename) FROM pg_sequences WHERE schemaname = 'public'"
        ):
            row = await conn.fetchrow(f"SELECT last_value, is_called FROM {sequence}")
            sequences[sequence] = (row["last_value"], row["is_called"])
        return TemplateState(
            fingerprint=await conn.fetchval(SCHEMA_FINGERPRINT),
            seeded=seeded,
            emptied=tuple(table for table in tables if table not in seeded),
            sequences=sequences,
        )


async def _content_digest(conn: asyncpg.Connection, table: str) -> str:
    digest: str = await conn.fetchval(
        f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
    )
    return digest


class DatabasePool:
    """Migrated databases handed to one test at a time, emptied for the next, not dropped.

    A copy of the template costs a CREATE DATABASE (8 MB written through the WAL: 120 ms
    on an idle 2-core machine, up to a second under load) and a DROP; emptying a used
    one costs one transaction of DELETEs (~25 ms). A used database comes back only in
    the template's exact state: no other connection left (any is terminated, as DROP
    … WITH (FORCE) would), no prepared transaction, a schema fingerprint equal to the
    template's (a test that altered a table, a trigger or a setting has its database
    dropped), the seeded tables' content unchanged, every other table empty, every
    sequence where the template has it. Anything else, or any error: dropped, and the
    next test gets a new copy.
    """

    def __init__(self, cluster: PgCluster, template: str, state: TemplateState) -> None:
        self.cluster = cluster
        self.template = template
        self.state = state
        self._used: list[str] = []

    async def take(self) -> str:
        """A used database emptied, else a new copy. Emptied here, not when the test
        that used it ended: by now every fixture of that test is torn down, so no server
        it started can still be writing."""
        while self._used:
            dsn = self._used.pop()
            try:
                clean = await self._empty(dsn)
            except (asyncpg.PostgresError, OSError):
                clean = False
            if clean:
                return dsn
            await self.cluster.drop_database(dsn)
        return await self.cluster.create_database(template=self.template)

    def give_back(self, dsn: str) -> None:
        self._used.append(dsn)

    async def _empty(self, dsn: str) -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            if not await self._alone(conn):
                return False
            if await conn.fetchval(SCHEMA_FINGERPRINT) != self.state.fingerprint:
                return False
            for table, digest in self.state.seeded.items():
                if await _content_digest(conn, table) != digest:
                    return False
            async with conn.transaction():
                # Superuser: no trigger fires (the outbox NOTIFY) and no foreign key is
                # checked while every table is emptied.
                await conn.execute("SET LOCAL session_replication_role = replica")
                for table in self.state.emptied:
                    await conn.execute(f"DELETE FROM {table}")
                for sequence, (last_value, is_called) in self.state.sequences.items():
                    await conn.execute("SELECT setval($1::regclass, $2, $3)",
                                       sequence, last_value, is_called)  # fmt: skip
            return True
        finally:
            await conn.close()

    @staticmethod
    async def _alone(conn: asyncpg.Connection) -> bool:
        """End every other session on this database; False if one outlives RESET_SECONDS
        or a prepared transaction is left."""
        others = """SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()"""
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + RESET_SECONDS
        while await conn.fetchval(others):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        prepared = await conn.fetchval(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        )
        return prepared == 0


@dataclass
class SessionCluster:
    """The session's cluster, its migrated template database, and the pool of its copies."""

    cluster: PgCluster
    template: str
    databases: DatabasePool


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[SessionCluster]:
    from server.db.postgres.migrations import migrate

    try:
        binaries = find_binaries()
    except PostgresBinariesMissing as missing:
        pytest.fail(str(missing), pytrace=False)

    async def build_template(cluster: PgCluster) -> TemplateState:
        await cluster.execute(f"CREATE DATABASE {MIGRATED_TEMPLATE}")
        conn = await asyncpg.connect(cluster.dsn(MIGRATED_TEMPLATE))
        try:
            await migrate(conn)
            return await TemplateState.read(conn)
        finally:
            await conn.close()

    with PgCluster(binaries) as cluster:
        state = run_in_thread(lambda: build_template(cluster))
        pool = DatabasePool(cluster, MIGRATED_TEMPLATE, state)
        yield SessionCluster(cluster, MIGRATED_TEMPLATE, pool)


@pytest.fixture
def pg_database(pg_cluster: SessionCluster) -> Iterator[str]:
    """The DSN of a database with every migration applied and nothing else, that no other
    test uses (a used one emptied back to that state, or a new copy: DatabasePool)."""
    pool = pg_cluster.databases
    dsn = run_in_thread(pool.take)
    yield dsn
    pool.give_back(dsn)


@pytest.fixture
def pg_empty_database(pg_cluster: SessionCluster) -> Iterator[str]:
    """The DSN of a fresh database with no schema, for the migration tests."""
    cluster = pg_cluster.cluster
    dsn = run_in_thread(lambda: cluster.create_database())
    yield dsn
    run_in_thread(lambda: cluster.drop_database(dsn))
