"""Scheduled requests (SPEC §12): what a valid `run_at` is, and when a request waits.

Pure functions of values and the current time; the handlers validate with them, the
payload and the pool's sleep are computed with them. A request with a `run_at` is staged
at once like any other, but no worker claims it before that instant (the storage's
claim skips it; server/jobs/worker.py sleeps until the earliest one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.clock import parse_rfc3339, to_rfc3339
from server.constants import MAX_SCHEDULE_AHEAD_DAYS, MIN_RUN_AT_YEAR
from server.models import BulkRequest
from server.types import Status

# RFC 3339 `date-time`, with its offset required (a time without one names no instant).
# Fractions past microseconds are accepted and truncated; at most 9 digits keeps the
# input bounded.
_RFC3339 = re.compile(
    r"(?P<body>\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)


@dataclass(frozen=True, slots=True)
class RunAtProblem:
    """Why a `run_at` was refused: a problem's field-error code and message."""

    code: str
    message: str


def parse_run_at(value: object, now: datetime) -> datetime | RunAtProblem:
    """The instant `value` names (aware, UTC), or why it is not an acceptable `run_at`.

    In the past is fine (the request runs at once); more than MAX_SCHEDULE_AHEAD_DAYS
    ahead, without an offset, or not RFC 3339 is not.
    """
    if not isinstance(value, str):
        return RunAtProblem("invalid_type", "run_at must be an RFC 3339 date-time string")
    match = _RFC3339.fullmatch(value)
    if match is None:
        return RunAtProblem(
            "invalid_format",
            "run_at must be an RFC 3339 date-time with an offset, e.g. 2026-12-24T09:00:00Z",
        )
    if match["offset"] is None:
        return RunAtProblem(
            "missing_offset",
            "run_at has no UTC offset: add Z or ±HH:MM, e.g. 2026-12-24T09:00:00Z",
        )
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    try:
        moment = datetime.fromisoformat(
            f"{match['body'][:10]}T{match['body'][11:]}.{fraction}{offset}"
        )
    except ValueError:
        return RunAtProblem("invalid_value", "run_at is not a real date and time")
    try:
        instant = moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        instant = datetime.min.replace(tzinfo=UTC)
    if instant.year < MIN_RUN_AT_YEAR:
        return RunAtProblem("out_of_range", f"run_at must be in {MIN_RUN_AT_YEAR} or later")
    if instant > now + timedelta(days=MAX_SCHEDULE_AHEAD_DAYS):
        return RunAtProblem(
            "too_far_ahead",
            f"run_at may be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead",
        )
    return instant


def run_at_text(run_at: datetime | None) -> str | None:
    """As stored and shown: RFC 3339 UTC with `Z` (sortable as text)."""
    return None if run_at is None else to_rfc3339(run_at)


def is_scheduled(request: BulkRequest, now: datetime) -> bool:
    """The payload's `scheduled`: pending and waiting for a `run_at` still ahead."""
    run_at = request.run_at
    return request.status == Status.PENDING and run_at is not None and parse_rfc3339(run_at) > now
