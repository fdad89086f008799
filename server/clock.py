"""Timestamps: RFC 3339 UTC with a `Z`, microsecond precision, sortable as text."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    return to_rfc3339(utc_now())


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text)
