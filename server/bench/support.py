"""Benchmark plumbing: the server subprocess, an HTTP client, test data, statistics.

The benchmark drives the real server as a user would (a `python run.py` subprocess
over loopback HTTP), so everything it measures includes the HTTP stack, the worker
pool and SQLite, exactly as deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Container, Iterable
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from server.types import JSON

ROOT = Path(__file__).resolve().parents[2]  # server/bench/support.py → the checkout
SERVING = re.compile(r"Serving on (http://\S+)")
STREAM_KEY = "bench"
STREAM_CURRENCY = "USD"
CSV_COLUMNS = ["date", "amount", "currency", "description", "external_id", "data_stream_key"]
RSS_SAMPLE_SECONDS = 0.1
SERVER_START_SECONDS = 30.0
SERVER_STOP_SECONDS = 20.0
_EPOCH = date(2024, 1, 1)


class BenchError(RuntimeError):
    """The benchmark could not run (server died, unexpected answer); the message says why."""


# --- statistics -----------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile: always one of the measured values, never interpolated."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def rate(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else 0.0


def timed_executemany(
    conn: sqlite3.Connection,
    insert: str,
    rows: int,
    tx_rows: int,
    values_of: Callable[[range], list[Any]],
    label: str,
) -> JSON:
    """Insert `rows` rows with plain executemany, `tx_rows` per transaction, timing only
    SQLite's work: each transaction's values are made (`values_of` its row numbers) off
    the clock, so memory stays flat however many rows are asked for. Every row must be
    stored (the table is counted), else BenchError names `label`."""
    seconds = 0.0
    for start in range(0, rows, tx_rows):
        values = values_of(range(start, min(start + tx_rows, rows)))
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, values)
        conn.execute("COMMIT")
        seconds += time.perf_counter() - started
    stored = conn.execute("SELECT count(*) FROM records").fetchone()[0]
    if stored != rows:
        raise BenchError(f"{label}: {stored} records stored, expected {rows}")
    return {
        "rows": rows,
        "rows_per_transaction": tx_rows,
        "seconds": round(seconds, 3),
        "rows_per_s": rate(rows, seconds),
    }


def latency_summary(seconds: list[float]) -> JSON:
    """p50/p99/max in milliseconds, rounded for display and JSON alike."""
    if not seconds:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2),
    }


LagBuckets = dict[str, float]  # bulk_event_loop_lag_seconds: cumulative count by `le`
# The lags a summary reports the share of samples over (bucket bounds of LOOP_LAG_BUCKETS).
LAG_SHARES_OVER = {"over_5ms": "0.005", "over_20ms": "0.02", "over_100ms": "0.1"}


def loop_lag_summary(before: LagBuckets, after: LagBuckets) -> JSON:
    """The server's event-loop lag samples taken between two scrapes, and the share of
    them later than 5, 20 and 100 ms (server/http/loop_lag.py: the share of the time the
    loop was that far behind)."""
    samples = after["+Inf"] - before["+Inf"]
    shares = {
        name: round((samples - (after[le] - before[le])) / samples, 3) if samples else None
        for name, le in LAG_SHARES_OVER.items()
    }
    return {"samples": int(samples), **shares}


def wall_seconds(rfc3339: str) -> float:
    """A server timestamp as epoch seconds: client and server share the machine's clock."""
    from server.clock import parse_rfc3339

    return parse_rfc3339(rfc3339).timestamp()


# --- test data --------------------------------------------------------------------------


def record_fields(n: int, prefix: str) -> JSON:
    """Row n of a data set: deterministic, varied, always valid, unique external_id."""
    cents = (n * 7919) % 2_000_000 - 1_000_000
    sign = "-" if cents < 0 else ""
    description = f"bench payment {n}" + (f", ref {n % 97}" if n % 10 == 0 else "")
    return {
        "date": (_EPOCH + timedelta(days=n % 366)).isoformat(),
        "amount": f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}",
        "currency": STREAM_CURRENCY,
        "description": description,
        "external_id": f"{prefix}-{n:09d}",
        "data_stream_key": STREAM_KEY,
    }


def bulk_body(start: int, count: int, prefix: str) -> bytes:
    """A `POST /v1/records/bulk` body; amounts go out as JSON numbers, as clients send them."""
    records = []
    for n in range(start, start + count):
        fields = record_fields(n, prefix)
        fields["amount"] = orjson.Fragment(fields["amount"].encode())
        records.append(fields)
    return orjson.dumps({"records": records})


def write_csv(path: Path, rows: int, prefix: str) -> int:
    """Write the upload file row by row (never whole in memory); returns its size."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for n in range(rows):
            fields = record_fields(n, prefix)
            writer.writerow([fields[c] for c in CSV_COLUMNS])
    return path.stat().st_size


# --- the server subprocess -----------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far; None once it is gone.

    Unlike wall time it barely moves when other programs share the machine, so it
    tells whether a change made the server do less work.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            # Fields after the parenthesised command name; utime and stime are 14 and 15.
            fields = handle.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """`python run.py serve` on a fresh database in its own directory, on a free port.

    With `database_url` the database is that PostgreSQL database (several processes may
    share it); the directory then only holds the server's output."""

    def __init__(
        self,
        name: str,
        directory: Path,
        api_key: str,
        *,
        workers: int,
        batch_size: int,
        database_url: str | None = None,
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.directory = directory
        self.api_key = api_key
        self.workers = workers
        self.batch_size = batch_size
        self.url = ""
        self.rss_max_kb = 0
        self.hwm_kb: int | None = None
        self.exit_code: int | None = None
        self.cpu_seconds: float | None = None  # user + system, read just before stopping
        self._proc: asyncio.subprocess.Process | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def _stdout(self) -> Path:
        return self.directory / "server.out"

    @property
    def _stderr(self) -> Path:
        return self.directory / "server.err"

    def command(self) -> list[str]:
        if self.database_url is not None:
            database = ["--database-url", self.database_url]
        else:
            database = ["--db", str(self.directory / "bench.db")]
        return [
            sys.executable,
            str(ROOT / "run.py"),
            *database,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            str(self.workers),
            "--batch-size",
            str(self.batch_size),
            "--log-level",
            "WARNING",
        ]

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Only our flags configure the server: a BULK_* variable in the caller's shell
        # (another time slice, FULL sync…) would silently change what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULK_")}
        env["BULK_API_KEY"] = self.api_key
        env["PYTHONUNBUFFERED"] = "1"
        # Output goes to files, not pipes: nothing has to drain them while we measure,
        # and no pipe can fill up and stall the server.
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not self.url:
            found = SERVING.search(self._stdout.read_text("utf-8", "replace"))
            if found:
                self.url = found.group(1)
            elif self._proc.returncode is not None:
                raise BenchError(
                    f"the {self.name} server exited with {self._proc.returncode} before "
                    f"serving:\n{self.log_tail()}"
                )
            elif time.monotonic() > deadline:
                raise BenchError(f"the {self.name} server did not start:\n{self.log_tail()}")
            else:
                await asyncio.sleep(0.02)
        self._sampler = asyncio.create_task(self._sample_rss(), name=f"rss-{self.name}")

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            raise BenchError(
                f"the {self.name} server died (exit {self._proc.returncode}):\n{self.log_tail()}"
            )

    async def _sample_rss(self) -> None:
        while True:
            rss = _status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            self.rss_max_kb = max(self.rss_max_kb, rss)
            await asyncio.sleep(RSS_SAMPLE_SECONDS)

    async def stop(self) -> None:
        """SIGTERM (a graceful shutdown, as the spec asks), SIGKILL only if it hangs."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # The high-water mark and CPU time are only readable while the process lives.
            self.hwm_kb = _status_kb(proc.pid, "VmHWM")
            self.cpu_seconds = process_cpu_seconds(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), SERVER_STOP_SECONDS)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.exit_code = proc.returncode
        self._proc = None

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self._stdout, self._stderr):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def memory(self) -> JSON:
        return {
            "vm_hwm_mb": round(self.hwm_kb / 1024, 1) if self.hwm_kb is not None else None,
            "vm_rss_sampled_max_mb": round(self.rss_max_kb / 1024, 1),
            "exit_code": self.exit_code,
            "cpu_seconds": round(self.cpu_seconds, 2) if self.cpu_seconds is not None else None,
        }


# --- the HTTP client -------------------------------------------------------------------------


class Api:
    """A keep-alive aiohttp session against one server; JSON answers parsed with orjson."""

    def __init__(self, server: ServerProcess, connections: int = 32) -> None:
        self.server = server
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            base_url=self.server.url,
            headers={"X-API-KEY": self.server.api_key},
            connector=aiohttp.TCPConnector(limit=self._connections),
            # No total timeout: a 1M-row upload legitimately takes a while; a dead
            # server is noticed by the socket timeouts and check_alive().
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, method: str, path: str, *, expect: Container[int], **kwargs: Any
    ) -> tuple[int, Any]:
        assert self._session is not None
        try:
            async with self._session.request(method, path, **kwargs) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            self.server.check_alive()
            raise BenchError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if status not in expect:
            raise BenchError(
                f"{method} {path} answered {status}: {raw[:600].decode(errors='replace')}"
            )
        return status, orjson.loads(raw) if raw else None

    async def get(self, path: str) -> Any:
        return (await self.call("GET", path, expect=(200,)))[1]

    async def post_json(self, path: str, body: bytes, expect: Container[int] = (202,)) -> Any:
        headers = {"Content-Type": "application/json"}
        return (await self.call("POST", path, expect=expect, data=body, headers=headers))[1]

    async def loop_lag(self) -> LagBuckets:
        """The server's bulk_event_loop_lag_seconds histogram, as it stands now."""
        assert self._session is not None
        async with self._session.get("/metrics") as resp:
            text = await resp.text()
        return {
            sample.labels["le"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "bulk_event_loop_lag_seconds"
            for sample in family.samples
            if sample.name.endswith("_bucket")
        }

    async def create_stream(self) -> None:
        body = orjson.dumps({"key": STREAM_KEY, "currency": STREAM_CURRENCY})
        await self.post_json("/v1/data_streams", body, expect=(201,))

    async def bulk_request(self, request_id: int) -> JSON:
        result: JSON = await self.get(f"/v1/bulk_requests/{request_id}")
        return result
