"""A throwaway PostgreSQL cluster for `python run.py bench --postgres-throwaway`.

`initdb` + `pg_ctl` from Debian's `postgresql` (the newest /usr/lib/postgresql/*/bin, PATH
as a fallback) in a temporary directory, on a free port of 127.0.0.1, stopped and removed
afterwards whatever happened. Unlike the tests' cluster (tests/pg_cluster.py) it keeps
PostgreSQL's durability defaults (fsync, synchronous_commit on): the benchmark measures
the service as documented, every commit flushed. PostgreSQL refuses to run as root, so
as root every command runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from server.bench.support import BenchError

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
INSTALL_HINT = "sudo apt-get install postgresql (or sh scripts/install-test-deps.sh)"
COMMAND_TIMEOUT_SECONDS = 60
STOP_WAIT_SECONDS = 30


def find_bin_dir() -> Path:
    """The bin directory holding initdb and pg_ctl: newest Debian major, else PATH."""

    def version(directory: str) -> tuple[int, ...]:
        name = Path(directory).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for directory in sorted(glob.glob(DEBIAN_BIN_GLOB), key=version, reverse=True):
        if all(os.access(Path(directory, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(directory)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    raise BenchError(f"--postgres-throwaway needs PostgreSQL's initdb and pg_ctl: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ThrowawayCluster:
    """`with ThrowawayCluster() as cluster:` — a running cluster; `cluster.url` to connect."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.directory = Path(tempfile.mkdtemp(prefix="bulk-bench-pg-"))
        self.port = 0
        self.postmaster_pid: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def _data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def _log(self) -> Path:
        return self.directory / "postgres.log"

    def _run(self, tool: str, *args: str | Path) -> None:
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(SUPERUSER)
            as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin_dir / tool), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
            cwd=self.directory,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            **as_user,
        )
        if result.returncode != 0:
            log = self._log.read_text("utf-8", "replace") if self._log.exists() else ""
            raise BenchError(f"{tool} failed ({result.returncode}): {result.stderr}\n{log}")

    def start(self) -> None:
        socket_dir = self.directory / "socket"
        socket_dir.mkdir()
        if os.geteuid() == 0:
            account = pwd.getpwnam(SUPERUSER)
            for path in (self.directory, socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run(
            "initdb", "--pgdata", self._data_dir, "--username", SUPERUSER, "--auth", "trust",
            "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-instructions",
        )  # fmt: skip
        self.port = _free_port()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(socket_dir),
        }
        self._run(
            "pg_ctl", "start", "--wait", "--timeout", str(COMMAND_TIMEOUT_SECONDS),
            "--pgdata", self._data_dir, "--log", self._log,
            "-o", " ".join(f"-c {name}={value}" for name, value in options.items()),
        )  # fmt: skip
        self.postmaster_pid = int((self._data_dir / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop the postmaster (fast shutdown, SIGKILL if it hangs), remove the directory."""
        try:
            pid = self.postmaster_pid
            if pid is not None and pid_is_alive(pid):
                try:
                    self._run("pg_ctl", "stop", "--wait", "-m", "fast", "--pgdata", self._data_dir)
                except BenchError:
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_WAIT_SECONDS
                while pid_is_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ThrowawayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
