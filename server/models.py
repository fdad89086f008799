"""Typed rows: what the store hands out instead of dicts (issue 11.1, in progress).

Frozen and slotted: a row read from the database is a fact, and the store builds each
one from exactly the columns its query selects (a column added to a query without a
field here fails at the first read, in every test that reads it). Rendering to JSON
happens in server/api/render.py.

Bulk requests are still dicts (JSON) for now; see the README's
Design section for what is typed and what is not yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class DataStream:
    id: int
    key: str
    name: str | None
    currency: str
    created_at: str


@dataclass(frozen=True, slots=True)
class Record:
    """One stored record as listed: the amount in integer minor units of its currency."""

    id: int
    data_stream_key: str
    date: str
    amount_minor: int
    currency: str
    description: str | None
    external_id: str | None
    metadata: str | None  # as stored: JSON text (decoded only when rendered)
    bulk_request_id: int
    created_at: str


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one row of a bulk request did not become a record."""

    row: int
    line: int | None
    external_id: str | None
    code: str
    message: str
    pointer: str
    # The row as it was staged, JSON text of [line, fields, problem] (server/staging.py's
    # staged format): kept for the CSV export and for retries.
    source: str

    def submitted_fields(self) -> Any:
        """The row's fields as submitted (any JSON value: a record may not be an object)."""
        return orjson.loads(self.source)[1]


@dataclass(frozen=True, slots=True)
class ActiveApiKey:
    """A key that authenticates: found by its hash, not revoked."""

    id: int
    environment_id: int
    environment: str
    key_hash: str
    last_used_at: str | None


@dataclass(frozen=True, slots=True)
class ApiKeyListing:
    """One line of `run.py keys list` (never the key or its hash)."""

    id: int
    public_id: str | None
    environment: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
