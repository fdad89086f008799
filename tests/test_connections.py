"""Connections (SPEC §11, issue 9 item 4, issue 15 item 2), over raw sockets.

The server is the real one `python run.py` serves (server.http.server.HardenedRunner on
a TCP port) with short timeouts; aiohttp's test client would hide what is tested here:
idle and slow connections, heads too large, requests aiohttp cannot parse, clients that
vanish, and what all of that logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web

from server.app import create_app
from server.config import Settings, add_settings_arguments, settings_from
from server.constants import MAX_REQUEST_HEAD_BYTES, PROTOCOL_WARNING_BURST
from server.http.logs import RateLimitedLog
from server.http.server import HardenedRunner
from tests.conftest import API_KEY, Api
from tests.server_process import ServerProcess

KEEPALIVE = 1.0
HEAD_TIMEOUT = 0.5
# Timers never fire early; on a loaded machine they may fire late, hence the slack.
SLACK = 5.0
PROBLEM = "application/problem+json"


@dataclasses.dataclass
class Served:
    host: str
    port: int
    writers: list[asyncio.StreamWriter] = dataclasses.field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.writers.append(writer)
        return reader, writer

    async def close_all(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    fast = dataclasses.replace(settings, keepalive_timeout=KEEPALIVE, head_timeout=HEAD_TIMEOUT)
    runner = HardenedRunner(create_app(fast, bootstrap_api_key=API_KEY), fast)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        served = Served(host, port)
        try:
            yield served
        finally:
            await served.close_all()
    finally:
        await runner.cleanup()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF), failing after `seconds`."""
    began = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), seconds)
    assert rest == b"", rest
    return time.monotonic() - began


async def still_open_after(reader: asyncio.StreamReader, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), seconds)


def assert_problem(status: int, headers: dict[str, str], body: bytes, kind: str) -> Any:
    assert headers["content-type"].startswith(PROBLEM), headers
    problem = orjson.loads(body)
    assert problem["type"] == f"/problems/{kind}", problem
    assert problem["status"] == status
    assert problem["request_id"] == headers["x-request-id"]
    return problem


def get(path: str = "/healthz", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n".encode() + extra + b"\r\n"


def http_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "server.http" and r.levelno >= logging.WARNING]


def assert_no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == [], [(r.name, r.getMessage()) for r in loud]


# --- timeouts -------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    writer.write(get())
    status, _, _ = await read_response(reader)
    assert status == 200
    await still_open_after(reader, KEEPALIVE * 0.6)
    writer.write(get())  # still usable: keep-alive, not a fixed lifetime
    assert (await read_response(reader))[0] == 200
    began = time.monotonic()
    await closed_within(reader, KEEPALIVE + SLACK)
    assert time.monotonic() - began >= KEEPALIVE * 0.9
    writer.close()


async def test_a_connection_that_sends_nothing_is_dropped_after_the_head_timeout(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    assert await closed_within(reader, HEAD_TIMEOUT + SLACK) >= HEAD_TIMEOUT * 0.9
    writer.close()


async def test_a_head_stopped_midway_gets_a_408_problem_and_the_connection_closes(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await served.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # no blank line: never ends
    status, headers, body = await read_response(reader)
    assert status == 408
    assert_problem(status, headers, body, "request-timeout")
    await closed_within(reader, SLACK)
    writer.close()
    [line] = http_warnings(caplog)
    assert line.exc_info is None
    assert_no_errors_logged(caplog)


async def test_the_head_timeout_counts_from_the_first_byte_on_a_reused_connection(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    writer.write(get())
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(HEAD_TIMEOUT * 1.5)  # idle longer than the head timeout: fine
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    began = time.monotonic()
    status, _, _ = await read_response(reader)
    assert status == 408
    assert time.monotonic() - began >= HEAD_TIMEOUT * 0.9
    writer.close()


async def test_a_head_sent_slowly_but_in_time_is_served(served: Served) -> None:
    reader, writer = await served.connect()
    for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: test\r\n", b"Accept: */*\r\n", b"\r\n"):
        writer.write(piece)
        await asyncio.sleep(HEAD_TIMEOUT / 8)
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_slow_body_is_not_cut_by_the_head_timeout(served: Served) -> None:
    reader, writer = await served.connect()
    body = orjson.dumps({"key": "slow", "currency": "EUR"})
    writer.write(
        b"POST /v1/data_streams HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"X-API-KEY: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    for byte in range(len(body)):  # the body takes ~3 head timeouts to arrive
        writer.write(body[byte : byte + 1])
        await asyncio.sleep(HEAD_TIMEOUT * 3 / len(body))
    assert (await read_response(reader))[0] == 201
    writer.close()


# --- heads over 16 KiB ------------------------------------------------------------------

KIB = 1024


def many_headers(total: int) -> bytes:
    """Headers of 1 KiB each, `total` bytes of them: every line is short, the head is not."""
    line = b"X-Filler-%04d: " % 0
    count = total // KIB
    return b"".join(
        b"X-Filler-%04d: %s\r\n" % (n, b"f" * (KIB - len(line) - 2)) for n in range(count)
    )


HEADS_TOO_LARGE: dict[str, Callable[[], list[bytes]]] = {
    "one header line over 16 KiB": lambda: [get(extra=b"X-Big: " + b"a" * 17 * KIB + b"\r\n")],
    "a request line over 16 KiB": lambda: [get("/healthz?" + "q" * 17 * KIB)],
    "short lines, 20 KiB in all, sent at once": lambda: [get(extra=many_headers(20 * KIB))],
    "short lines trickled in, never ending": lambda: [
        b"GET /healthz HTTP/1.1\r\n",
        *[b"X-Filler-%04d: %s\r\n" % (n, b"f" * 1000) for n in range(40)],
    ],
    "more headers than the parser takes": lambda: [
        get(extra=b"".join(b"X-H%d: v\r\n" % n for n in range(300)))
    ],
}


@pytest.mark.parametrize("case", HEADS_TOO_LARGE)
async def test_a_request_head_over_16_kib_is_a_431_problem(
    served: Served, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    reader, writer = await served.connect()
    for piece in HEADS_TOO_LARGE[case]():
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.001)  # in pieces, as a slow client sends them
    status, headers, body = await read_response(reader)
    assert status == 431
    problem = assert_problem(status, headers, body, "request-head-too-large")
    assert "16 KiB" in problem["detail"]
    writer.close()
    assert len(http_warnings(caplog)) <= 1
    assert_no_errors_logged(caplog)


async def test_the_app_refuses_a_complete_head_over_16_kib_before_authenticating(
    api: Api,
) -> None:
    # Whatever runs the app: heads that arrive whole are measured once parsed.
    filler = {f"X-Filler-{n}": "f" * 1000 for n in range(17)}
    async with api.client.get("/v1/data_streams", headers=filler) as resp:  # no key
        assert resp.status == 431
        assert resp.content_type == PROBLEM
        body = await resp.json(content_type=None)
    assert body["type"] == "/problems/request-head-too-large"
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert body["instance"] == "/v1/data_streams"


async def test_a_head_just_under_16_kib_is_served(served: Served) -> None:
    reader, writer = await served.connect()
    request = get(extra=many_headers(14 * KIB))
    assert len(request) < MAX_REQUEST_HEAD_BYTES
    writer.write(request)
    assert (await read_response(reader))[0] == 200
    writer.close()


# --- what aiohttp cannot parse, and clients that go away ---------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(extra=b"X-Probe: \x00\r\n"),  # issue 15 item 2
        b"GET / HTTP/9.9\r\nHost: test\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on the HTTP port
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nBroken header line\r\n\r\n",
    ],
    ids=["nul-in-header", "http-9.9", "tls-hello", "header-without-colon"],
)
async def test_a_malformed_request_is_a_400_problem_logged_once_without_traceback(
    served: Served, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    reader, writer = await served.connect()
    writer.write(request_bytes)
    status, headers, body = await read_response(reader)
    assert status == 400
    assert_problem(status, headers, body, "malformed-request")
    writer.close()
    [line] = http_warnings(caplog)
    assert line.exc_info is None
    assert line.request_id == headers["x-request-id"]  # type: ignore[attr-defined]
    assert_no_errors_logged(caplog)


async def test_a_client_that_disconnects_mid_body_is_one_warning_line(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, writer = await served.connect()
    writer.write(
        b"POST /v1/records/bulk HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"X-API-KEY: {API_KEY}\r\nX-Request-ID: gone-1\r\nContent-Length: 5000\r\n\r\n".encode()
        + b'{"records": ['
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()

    deadline = time.monotonic() + SLACK
    while not http_warnings(caplog) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # anything else it would log, it has logged by now
    [line] = http_warnings(caplog)
    assert "client disconnected during POST /v1/records/bulk" in line.getMessage()
    assert line.request_id == "gone-1"  # type: ignore[attr-defined]
    assert line.exc_info is None
    assert_no_errors_logged(caplog)
    access = [r for r in caplog.records if r.name == "server.access"]
    assert [r.status for r in access] == [499]  # type: ignore[attr-defined]


async def test_protocol_warnings_are_rate_limited(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(PROTOCOL_WARNING_BURST + 5):
        reader, writer = await served.connect()
        writer.write(get(extra=b"X-Probe: \x00\r\n"))
        assert (await read_response(reader))[0] == 400  # every one is still answered
        writer.close()
    assert len(http_warnings(caplog)) == PROTOCOL_WARNING_BURST
    assert_no_errors_logged(caplog)


def test_rate_limited_log_reports_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), 2, 60.0, clock=lambda: now[0])
    logged = [limited.warning("event %d", n) for n in range(5)]
    assert logged == [True, True, False, False, False]
    now[0] = 60.0
    assert limited.warning("event %d", 5)
    lines = [r for r in caplog.records if r.name == "test.limited"]
    assert [r.getMessage() for r in lines] == [
        "event 0",
        "event 1",
        "event 5 (3 similar lines suppressed before this one)",
    ]
    assert lines[-1].suppressed == 3  # type: ignore[attr-defined]


# --- configuration, and `python run.py` itself -------------------------------------------


def test_timeouts_default_to_the_spec_and_are_settable() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    defaults = settings_from(parser.parse_args([]), {})
    assert (defaults.keepalive_timeout, defaults.head_timeout) == (75.0, 30.0)
    env = {"BULK_KEEPALIVE_TIMEOUT": "5", "BULK_HEAD_TIMEOUT": "2.5"}
    configured = settings_from(parser.parse_args([]), env)
    assert (configured.keepalive_timeout, configured.head_timeout) == (5.0, 2.5)
    flagged = settings_from(parser.parse_args(["--head-timeout", "1"]), env)
    assert flagged.head_timeout == 1.0
    with pytest.raises(SystemExit):
        settings_from(parser.parse_args(["--keepalive-timeout", "0"]), {})


@pytest.mark.slow
def test_run_py_answers_protocol_errors_with_problems_and_one_warning_each(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        tmp_path / "bulk.db",
        api_key=API_KEY,
        args=["--head-timeout", "0.5", "--keepalive-timeout", "1"],
        log_dir=tmp_path,
    )
    try:
        server.start()
        address = urlsplit(server.url)
        assert address.hostname is not None
        assert address.port is not None

        def exchange(data: bytes) -> bytes:
            with socket.create_connection((address.hostname, address.port), SLACK) as sock:
                sock.sendall(data)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                return answer

        nul = exchange(get(extra=b"X-Probe: \x00\r\n"))  # issue 15 item 2, verbatim
        assert nul.startswith(b"HTTP/1.0 400 ")
        assert b"application/problem+json" in nul
        assert b"X-Request-ID: " in nul
        began = time.monotonic()
        slow = exchange(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # then nothing
        assert slow.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - began < SLACK
        idle = exchange(b"")  # connects, says nothing: closed, no answer
        assert idle == b""
    finally:
        server.close()
    lines = [orjson.loads(line) for line in server.stderr().splitlines() if line.startswith("{")]
    protocol = [line for line in lines if line["logger"] == "server.http"]
    assert [line["level"] for line in protocol] == ["warning", "warning"], protocol
    assert not [line for line in lines if line["level"] == "error" or "exception" in line]
