"""The throwaway PostgreSQL cluster of tests/pg_cluster.py: it starts, serves, and leaves
nothing behind; missing binaries are a clear failure, not a silent skip."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from tests.pg_cluster import (
    INSTALL_HINT,
    PgCluster,
    PostgresBinariesMissing,
    SessionCluster,
    find_binaries,
    pid_is_alive,
    port_is_free,
    run_in_thread,
)

ROOT = Path(__file__).resolve().parents[1]


async def test_the_session_cluster_runs_queries_on_a_fresh_migrated_database(
    pg_cluster: SessionCluster, pg_database: str
) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert await conn.fetchval("SELECT count(*) FROM bulk_requests") == 0
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "listen_addresses")
        }
        assert settings == {
            "fsync": "off",
            "synchronous_commit": "off",
            "listen_addresses": "127.0.0.1",
        }
        assert await conn.fetchval("SELECT current_user") == "postgres"
    finally:
        await conn.close()
    assert pg_database.startswith(f"postgresql://postgres@127.0.0.1:{pg_cluster.cluster.port}/")


async def test_each_test_gets_its_own_database(pg_cluster: SessionCluster) -> None:
    cluster = pg_cluster.cluster
    first = await cluster.create_database(template=pg_cluster.template)
    second = await cluster.create_database(template=pg_cluster.template)
    try:
        assert first != second
        conn = await asyncpg.connect(first)
        try:
            await conn.execute(
                "INSERT INTO environments (name, created_at) VALUES ('only-here', 'now')"
            )
        finally:
            await conn.close()
        conn = await asyncpg.connect(second)
        try:
            assert await conn.fetchval("SELECT count(*) FROM environments") == 0
        finally:
            await conn.close()
    finally:
        await cluster.drop_database(first)
        await cluster.drop_database(second)


def test_a_cluster_stops_and_leaves_nothing_behind() -> None:
    cluster = PgCluster(find_binaries())
    with cluster:
        pid = cluster.postmaster_pid()
        assert pid is not None
        assert pid_is_alive(pid)
        assert not port_is_free(cluster.port)
        directory = cluster.directory
        data_owner = cluster.data_dir.stat().st_uid
        if os.geteuid() == 0:
            assert data_owner != 0, "the cluster must not run as root"

        async def answer() -> int:
            conn = await asyncpg.connect(cluster.dsn())
            try:
                return int(await conn.fetchval("SELECT 1"))
            finally:
                await conn.close()

        assert run_in_thread(answer) == 1
    assert not pid_is_alive(pid)
    assert port_is_free(cluster.port)
    assert not directory.exists()
    cluster.stop()  # a second stop is harmless


def test_a_cluster_whose_start_fails_is_cleaned_up() -> None:
    # An initdb that fails: the directory created for the cluster is removed all the same.
    # Not in tmp_path: as root, the postgres user must be able to run the stand-ins.
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)
        fake_bin = Path(scratch)
        start_with_failing_binaries(fake_bin)


def start_with_failing_binaries(fake_bin: Path) -> None:
    for name in ("initdb", "pg_ctl"):
        tool = fake_bin / name
        tool.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    cluster = PgCluster(find_binaries(bin_glob=str(fake_bin / "none" / "*"), path=str(fake_bin)))
    with pytest.raises(RuntimeError, match="initdb failed"):
        cluster.start()
    assert not cluster.directory.exists()


def test_missing_binaries_are_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(PostgresBinariesMissing) as missing:
        find_binaries(bin_glob=str(tmp_path / "lib" / "*" / "bin"), path=str(tmp_path))
    assert "initdb and pg_ctl" in str(missing.value)
    assert INSTALL_HINT in str(missing.value)


def test_without_binaries_the_postgresql_tests_fail_and_say_what_to_run(tmp_path: Path) -> None:
    # A real pytest run of a PostgreSQL test on a machine "without PostgreSQL": the Debian
    # directory points nowhere and PATH holds only Python. It must fail, not skip.
    # At session start: the conftest has loaded (and assertion-rewritten) tests.pg_cluster.
    (tmp_path / "no_postgres.py").write_text(
        "def pytest_sessionstart(session):\n"
        "    import tests.pg_cluster\n"
        f"    tests.pg_cluster.DEBIAN_BIN_GLOB = {str(tmp_path / 'none' / '*' / 'bin')!r}\n"
    )
    test = "tests/test_pg_cluster.py::test_each_test_gets_its_own_database"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no_postgres", test],
        cwd=ROOT,
        env={**os.environ, "PATH": str(Path(sys.executable).parent),
             "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "skipped" not in result.stdout
    assert INSTALL_HINT in result.stdout


def test_the_newest_debian_version_is_preferred_over_path(tmp_path: Path) -> None:
    for version in ("13", "15", "9.6"):
        bin_dir = tmp_path / "lib" / version / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl"):
            (bin_dir / name).write_text("#!/bin/sh\n")
            (bin_dir / name).chmod(0o755)
    found = find_binaries(bin_glob=str(tmp_path / "lib" / "*" / "bin"), path="/usr/bin")
    assert found.initdb == tmp_path / "lib" / "15" / "bin" / "initdb"
    assert found.pg_ctl == tmp_path / "lib" / "15" / "bin" / "pg_ctl"
