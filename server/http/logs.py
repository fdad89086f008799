"""Structured logs: one JSON object per line, and one line per HTTP request.

API keys never reach a log line: the access log names the environment, not the key.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from server.http.auth import CALLER
from server.http.errors import request_id_of

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours (and has no request id).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


access_log = logging.getLogger("server.access")


def log_access(request: web.Request, status: int, seconds: float) -> None:
    """The access-log line of one request (timed by server.http.metrics' middleware)."""
    resource = request.match_info.route.resource
    caller = request.get(CALLER)
    access_log.info(
        "%s %s %s",
        request.method,
        request.path,
        status,
        extra={
            "method": request.method,
            "route": resource.canonical if resource is not None else None,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "request_id": request_id_of(request),
            "environment": caller.environment if caller is not None else None,
        },
    )


class RateLimitedLog:
    """At most `burst` lines per `window` seconds; the rest are only counted, and the
    next line let through carries `suppressed` (how many were dropped before it).

    For events any client can cause at will (malformed requests, disconnects): one
    line each is useful, ten thousand a minute would drown everything else.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._window_start = -window  # the first line always opens a window
        self._sent = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object, **fields: Any) -> bool:
        """Log one WARNING line (no traceback) unless over the rate; True if logged."""
        now = self._clock()
        if now - self._window_start >= self._window:
            self._window_start = now
            self._sent = 0
        if self._sent >= self._burst:
            self._suppressed += 1
            return False
        self._sent += 1
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            message += " (%d similar lines suppressed before this one)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.warning(message, *args, extra=fields)
        return True
