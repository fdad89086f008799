"""A throwaway PostgreSQL cluster: `python run.py bench --postgres-throwaway` and the tests.

`initdb` + `pg_ctl` from Debian's `postgresql` (the newest /usr/lib/postgresql/*/bin, PATH
as a fallback) in a temporary directory, listening on a free TCP port of 127.0.0.1 and on
a socket in that directory, stopped and removed afterwards whatever happened. PostgreSQL
refuses to run as root, so as root every command runs as the `postgres` user (the
directory is handed to it). The benchmark keeps PostgreSQL's durability defaults (fsync,
synchronous_commit on: it measures the service as documented, every commit flushed);
tests/pg_cluster.py builds its cluster on this class with durability off and its own
per-test databases.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from server.bench.support import BenchError

# Debian's layout: one bin directory per installed major version.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
INSTALL_HINT = "sudo apt-get install postgresql (or sh scripts/install-test-deps.sh)"
COMMAND_TIMEOUT_SECONDS = 60
# A freshly picked port can be taken by someone else before the postmaster binds it.
START_ATTEMPTS = 3


class PostgresBinariesMissing(BenchError):
    pass


@dataclass(frozen=True)
class Binaries:
    initdb: Path
    pg_ctl: Path


def find_binaries(
    bin_glob: str = DEBIAN_BIN_GLOB, path: str | None = None, install_hint: str = INSTALL_HINT
) -> Binaries:
    """initdb and pg_ctl of the newest Debian major version, else the ones on PATH."""

    def version(directory: str) -> tuple[int, ...]:
        name = Path(directory).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for directory in sorted(glob.glob(bin_glob), key=version, reverse=True):
        initdb, pg_ctl = Path(directory, "initdb"), Path(directory, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return Binaries(initdb, pg_ctl)
    initdb_on_path = shutil.which("initdb", path=path)
    pg_ctl_on_path = shutil.which("pg_ctl", path=path)
    if initdb_on_path and pg_ctl_on_path:
        return Binaries(Path(initdb_on_path), Path(pg_ctl_on_path))
    raise PostgresBinariesMissing(
        f"PostgreSQL's initdb and pg_ctl were found neither under {bin_glob} nor on PATH; "
        f"a throwaway cluster needs them: {install_hint}"
    )


def free_port() -> int:
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


@dataclass
class Cluster:
    """One running cluster: `with Cluster(find_binaries()) as cluster:`, `cluster.dsn()`."""

    binaries: Binaries
    # Server settings beyond the address, port and socket (`-c name=value`).
    settings: Mapping[str, str] = field(default_factory=dict)
    # False: initdb --no-sync, for a cluster that dies with its user anyway.
    durable: bool = True
    # `pg_ctl stop -m`: "fast" lets a benchmark's last commits finish, "immediate" does not wait.
    stop_mode: str = "fast"
    directory: Path = field(init=False)
    port: int = field(init=False, default=0)

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
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(SUPERUSER)
            as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(arg) for arg in args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
            cwd=self.directory,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            **as_user,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_file.read_text("utf-8", "replace") if self.log_file.exists() else ""
            raise BenchError(
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
                    *(() if self.durable else ("--no-sync",)),
                    "--no-instructions",
                ),
                "initdb",
            )  # fmt: skip
            for attempt in range(START_ATTEMPTS):
                self.port = free_port()
                options = {
                    **self.settings,
                    "listen_addresses": "127.0.0.1",
                    "port": str(self.port),
                    "unix_socket_directories": str(self.socket_dir),
                }
                result = self._run(
                    self.binaries.pg_ctl,
                    "start", "--wait", "--timeout", str(COMMAND_TIMEOUT_SECONDS),
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
        """Stop the postmaster (SIGKILL if it hangs) and remove the directory; safe twice."""
        if not hasattr(self, "directory") or not self.directory.exists():
            return
        try:
            pid = self.postmaster_pid()
            if pid is not None and pid_is_alive(pid):
                self._run(self.binaries.pg_ctl, "stop", "--wait", "-m", self.stop_mode,
                          "--pgdata", self.data_dir)  # fmt: skip
                deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
                while pid_is_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
