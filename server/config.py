"""Settings: one dataclass, filled from flags, then `BULK_<NAME>` variables, then defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import constants as C

DEFAULT_DB_PATH = Path("data") / "bulk.db"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: Path = DEFAULT_DB_PATH
    workers: int = C.DEFAULT_WORKERS
    batch_size: int = C.DEFAULT_BATCH_SIZE
    stuck_after: float = C.DEFAULT_STUCK_AFTER_SECONDS
    max_upload_mb: int = C.DEFAULT_MAX_UPLOAD_MB
    log_level: str = "INFO"
    synchronous: str = "NORMAL"
    sweep_interval: float = C.SWEEPER_INTERVAL_SECONDS
    time_slice: float = C.WORKER_TIME_SLICE_SECONDS
    batch_pause: float = C.DEFAULT_BATCH_PAUSE_SECONDS
    keepalive_timeout: float = C.KEEPALIVE_TIMEOUT_SECONDS
    head_timeout: float = C.REQUEST_HEAD_TIMEOUT_SECONDS
    # PostgreSQL instead of the SQLite file (README, "Running on PostgreSQL").
    database_url: str | None = None
    heartbeat_timeout: float = C.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
    webhook_retry_base: float = C.DEFAULT_WEBHOOK_RETRY_BASE_SECONDS
    webhook_deny_private: bool = False
    webhook_circuit_cooldown: float = C.WEBHOOK_CIRCUIT_COOLDOWN_SECONDS
    # Off: events still become deliveries (pending), nothing is sent (README "Webhooks").
    webhook_delivery: bool = True

    @property
    def data_dir(self) -> Path:
        """Uploads and the lock file live beside the database."""
        return self.db_path.parent

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text}")
    return value


def _database_url(text: str) -> str:
    if not text.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError("must be a postgresql://… URL")
    return text


def _synchronous(text: str) -> str:
    value = text.upper()
    if value not in {"NORMAL", "FULL"}:
        raise argparse.ArgumentTypeError("must be NORMAL or FULL")
    return value


def _log_level(text: str) -> str:
    value = text.upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise argparse.ArgumentTypeError("must be DEBUG, INFO, WARNING or ERROR")
    return value


def _on_off(text: str) -> bool:
    value = text.lower()
    if value not in {"on", "off", "true", "false", "1", "0", "yes", "no"}:
        raise argparse.ArgumentTypeError("must be on or off")
    return value in {"on", "true", "1", "yes"}


# flag, settings field, parser, help. The environment variable is BULK_<FIELD>.
_OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--host", "host", str, "interface to listen on"),
    ("--port", "port", _port, "TCP port (0 picks a free one)"),
    ("--db", "db_path", Path, "SQLite database file; uploads are kept beside it"),
    (
        "--workers",
        "workers",
        non_negative_int,
        "asyncio worker tasks processing bulk requests (0: serve the API only, as a "
        "PostgreSQL process whose work other processes do)",
    ),
    ("--batch-size", "batch_size", positive_int, "rows per batch (one transaction each)"),
    (
        "--stuck-after",
        "stuck_after",
        positive_float,
        "seconds without a heartbeat before a processing request is reported stuck",
    ),
    ("--max-upload-mb", "max_upload_mb", positive_int, "largest accepted upload, in MiB"),
    ("--log-level", "log_level", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    (
        "--synchronous",
        "synchronous",
        _synchronous,
        "SQLite synchronous mode: NORMAL survives process crashes, FULL also power loss",
    ),
    (
        "--sweep-interval",
        "sweep_interval",
        positive_float,
        "seconds between sweeps for orphaned requests",
    ),
    (
        "--time-slice",
        "time_slice",
        positive_float,
        "seconds a worker keeps one request before yielding to waiting ones",
    ),
    (
        "--batch-pause",
        "batch_pause",
        non_negative_float,
        "seconds a worker waits after each batch, to throttle ingestion (0 = none)",
    ),
    (
        "--keepalive-timeout",
        "keepalive_timeout",
        positive_float,
        "seconds an idle keep-alive connection stays open",
    ),
    (
        "--database-url",
        "database_url",
        _database_url,
        "PostgreSQL database (postgresql://user@host/db) instead of the SQLite file; "
        "any number of server processes may share it",
    ),
    (
        "--heartbeat-timeout",
        "heartbeat_timeout",
        positive_float,
        "PostgreSQL: seconds without a heartbeat before another process resumes a claim",
    ),
    (
        "--head-timeout",
        "head_timeout",
        positive_float,
        "seconds a client has to send a whole request head before it is dropped",
    ),
    (
        "--webhook-retry-base",
        "webhook_retry_base",
        positive_float,
        "seconds before a failed webhook is first retried (doubling, 8 attempts)",
    ),
    (
        "--webhook-deny-private",
        "webhook_deny_private",
        _on_off,
        "on: refuse webhook URLs on loopback, private or link-local addresses",
    ),
    (
        "--webhook-circuit-cooldown",
        "webhook_circuit_cooldown",
        positive_float,
        "seconds nothing is sent to an endpoint after 5 failed attempts in a row",
    ),
    (
        "--webhook-delivery",
        "webhook_delivery",
        _on_off,
        "off: record webhook deliveries but send nothing (a restored copy of a database)",
    ),
]


def env_name(field: str) -> str:
    return "BULK_" + {"db_path": "DB"}.get(field, field).upper()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for flag, field, convert, help_text in _OPTIONS:
        # A switch may stand alone (`--webhook-deny-private`) or say on/off.
        switch: dict[str, Any] = {"nargs": "?", "const": True} if convert is _on_off else {}
        parser.add_argument(
            flag,
            dest=field,
            type=convert,
            default=None,
            help=f"{help_text} (env {env_name(field)}, default {getattr(defaults, field)})",
            **switch,
        )


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for _flag, field, convert, _help in _OPTIONS:
        given = getattr(args, field, None)
        if given is None and env_name(field) in environ:
            try:
                given = convert(environ[env_name(field)])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"error: {env_name(field)}: {exc}") from None
        if given is not None:
            values[field] = given
    return Settings(**values)
