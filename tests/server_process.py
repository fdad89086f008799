"""A real `python run.py` server in a subprocess, for crash and shutdown tests.

The crash tests must kill the actual process a user runs (not an in-process app), so
this starts `run.py` with its own flags, talks to it over loopback HTTP with the
standard library, and always reaps it: `close()` kills whatever is still running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SERVING = re.compile(r"Serving on (http://\S+)")
START_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.005
# A proxy from the caller's environment must never see loopback test traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

T = TypeVar("T")


class ServerFailed(AssertionError):
    """The server did not do what the test needed; the message carries its output."""


def poll(fetch: Callable[[], T], done: Callable[[T], bool], within: float, what: str) -> T:
    """Call fetch until done(value) holds; fail with the last value after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s; last {value!r}")
        time.sleep(POLL_INTERVAL_SECONDS)


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one `file` part."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/csv\r\n\r\n".encode()
    )
    body = b"".join(parts) + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@contextmanager
def read_db(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Read-only, so inspecting a killed server's database changes nothing the restart
    sees (a read-write close would checkpoint the WAL into the main file)."""
    with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


class ServerProcess:
    """`python run.py` on the given database, on a port of its own choosing (--port 0:
    the kernel picks a free one, with no window for another process to take it)."""

    _count = 0

    def __init__(
        self, db_path: Path, *, api_key: str | None, args: Sequence[str] = (), log_dir: Path
    ) -> None:
        ServerProcess._count += 1
        self.db_path = db_path
        self.api_key = api_key
        self.args = list(args)
        self.name = f"server{ServerProcess._count}"
        self.stdout_path = log_dir / f"{self.name}.out"
        self.stderr_path = log_dir / f"{self.name}.err"
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    # --- process ------------------------------------------------------------------------

    def spawn(self) -> None:
        # Only our flags and key configure the server, whatever the caller's shell holds.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULK_")}
        if self.api_key is not None:
            env["BULK_API_KEY"] = self.api_key
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "run.py", "--db", str(self.db_path), "--port", "0"]
        # Output goes to files, so no pipe can fill up and stall the server.
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*command, *self.args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def start(self) -> ServerProcess:
        """Spawn and return once the server answers /healthz with its workers running."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + START_SECONDS
        while not self.url:
            found = SERVING.search(self.stdout())
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.proc.returncode}{self.tail()}")
            elif time.monotonic() > deadline:
                raise ServerFailed(f"{self.name} did not start in {START_SECONDS}s{self.tail()}")
            else:
                time.sleep(POLL_INTERVAL_SECONDS)
        poll(
            lambda: self.call("GET", "/healthz", key=None),
            lambda answer: answer[0] == 200 and answer[1]["status"] == "ok",
            START_SECONDS,
            f"{self.name} healthy",
        )
        return self

    def wait_exit(self, within: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise ServerFailed(f"{self.name} still running after {within}s{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or released."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> tuple[int, float]:
        """Send sig; return the exit code and the seconds until the process was gone."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(sig)
        code = self.wait_exit(within)
        return code, time.monotonic() - began

    def close(self) -> None:
        """Teardown: never leave a server behind, whatever the test did or failed to do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stdout(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    def tail(self) -> str:
        return f"\n--- stdout\n{self.stdout()[-2000:]}\n--- stderr\n{self.stderr()[-4000:]}"

    # --- HTTP ---------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        content_type: str = "application/json",
        key: str | None = "",
    ) -> tuple[int, Any]:
        """One request; `key=""` means the server's own key, None sends no key."""
        headers = {"Content-Type": content_type}
        key = self.api_key if key == "" else key
        if key is not None:
            headers["X-API-KEY"] = key
        if body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT_SECONDS) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _decode(exc.read())

    def get(self, path: str, *, key: str | None = "") -> Any:
        status, answer = self.call("GET", path, key=key)
        assert status == 200, (path, status, answer)
        return answer

    def post(self, path: str, body: Any, *, expect: int) -> Any:
        status, answer = self.call("POST", path, body=body)
        assert status == expect, (path, status, answer)
        return answer

    def upload(self, content: bytes, fields: dict[str, str]) -> Any:
        data, content_type = multipart(fields, "crash.csv", content)
        status, answer = self.call("POST", "/v1/uploads", data=data, content_type=content_type)
        assert status == 202, (status, answer)
        return answer

    def begin_upload(self, content: bytes, fields: dict[str, str]) -> socket.socket:
        """Send the headers and the first half of an upload, then nothing more: the
        server is left mid-receive. The caller closes the socket."""
        body, content_type = multipart(fields, "partial.csv", content)
        address = urlsplit(self.url)
        assert address.hostname is not None
        assert address.port is not None
        head = (
            f"POST /v1/uploads HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"X-API-KEY: {self.api_key}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock = socket.create_connection((address.hostname, address.port), HTTP_TIMEOUT_SECONDS)
        try:
            sock.sendall(head.encode() + body[: len(body) // 2])
        except BaseException:
            sock.close()
            raise
        return sock

    def open_event_stream(self, path: str) -> socket.socket:
        """Subscribe to a Server-Sent Events stream and return once its headers have
        arrived, leaving the connection open. The caller closes the socket."""
        address = urlsplit(self.url)
        assert address.hostname is not None
        assert address.port is not None
        sock = socket.create_connection((address.hostname, address.port), HTTP_TIMEOUT_SECONDS)
        try:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {address.netloc}\r\nX-API-KEY: {self.api_key}"
                "\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, f"stream closed before its headers: {head!r}"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200 "), head
        except BaseException:
            sock.close()
            raise
        return sock

    def bulk_requests(self) -> list[Any]:
        data: list[Any] = self.get("/v1/bulk_requests?limit=200")["data"]
        return data


def _decode(raw: bytes) -> Any:
    return json.loads(raw) if raw else None
