"""Typed rows: what the store hands out instead of dicts (issue 11.1, in progress).

Frozen and slotted: a row read from the database is a fact, and the store builds each
one from exactly the columns its query selects (a column added to a query without a
field here fails at the first read, in every test that reads it). Rendering to JSON
happens in server/api/render.py.

What stays JSON: user data (`Record.metadata`, a request's `error_details`) is kept as the
JSON text it is stored as, and decoded only when rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from server.types import Mode, OnConflict, Source, Status, UploadFormat


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """One bulk request as stored: every column of `bulk_requests`, in table order.

    Built only by the adapter's row→model function (SQLite: `bulk_request_from_row` in
    server/db/sqlite/rows.py): a new column is a field here and a line there. Changed
    copies are made with `dataclasses.replace`.
    """

    id: int
    environment_id: int
    status: Status
    source: Source
    on_conflict: OnConflict
    total_items: int
    processed_items: int
    successful_items: int
    failed_items: int
    skipped_items: int
    next_row: int  # checkpoint: the first row not processed yet
    # The file's rows are not staged yet (see render.is_parsing for the payload's meaning).
    parsing: bool
    upload_format: UploadFormat | None
    upload_path: str | None
    filename: str | None
    default_data_stream_key: str | None  # the upload form's field
    data_stream_id: int | None
    parent_bulk_request_id: int | None
    # Timestamps as stored (RFC 3339 text).
    created_at: str
    queued_at: str
    started_at: str | None
    completed_at: str | None
    last_progress_at: str | None
    cancellation_requested_at: str | None
    error_message: str | None
    error_details: str | None  # as stored: JSON text of an object (decoded when rendered)
    recoveries: int
    attempt: int  # fences the writes of an older claim
    claimed_by: str | None
    # The NACHA relaxations named at upload (() for none); None for every other request.
    nacha_options: tuple[str, ...] | None
    # As stored: JSON text of the CSV options object (SPEC §15); None for other requests.
    csv_options: str | None
    # SPEC §12: not claimable before this instant (RFC 3339 UTC text); None runs at once.
    run_at: str | None
    # SPEC §14: all rows or none. `unpublished`: an atomic request's records are hidden
    # from every read (until it completes; then purged if it did not).
    mode: Mode
    unpublished: bool
    # Joined from data_streams by the reads; a write's returned row does not join, so
    # there it is None even when data_stream_id is set, and `has_data_stream_key` is
    # False (the outbox payload then omits the key, as it always has).
    data_stream_key: str | None
    has_data_stream_key: bool


@dataclass(frozen=True, slots=True)
class ChainMember:
    """What the retry rule and the chain arithmetic read of one member of a chain of
    retries (server/rules.py, server/chains.py)."""

    id: int
    status: Status
    parsing: bool
    upload_path: str | None
    error_message: str | None
    failed_items: int
    next_row: int
    total_items: int
    parent_bulk_request_id: int | None
    mode: Mode

    @classmethod
    def of(cls, request: BulkRequest) -> ChainMember:
        return cls(
            id=request.id,
            status=request.status,
            parsing=request.parsing,
            upload_path=request.upload_path,
            error_message=request.error_message,
            failed_items=request.failed_items,
            next_row=request.next_row,
            total_items=request.total_items,
            parent_bulk_request_id=request.parent_bulk_request_id,
            mode=request.mode,
        )


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


# --- webhooks (SPEC §13) -----------------------------------------------------------------


class WebhookEventType(StrEnum):
    """What a webhook endpoint can subscribe to: a bulk request reaching a final state."""

    COMPLETED = "bulk_request.completed"
    FAILED = "bulk_request.failed"
    CANCELLED = "bulk_request.cancelled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: int
    environment_id: int
    url: str
    events: str  # as stored: a JSON array of WebhookEventType values
    description: str | None
    enabled: int
    secret: str
    created_at: str
    consecutive_failures: int
    circuit_open_until: str | None

    def event_types(self) -> list[str]:
        types: list[str] = orjson.loads(self.events)
        return types


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    delivery_id: int
    number: int
    at: str
    http_status: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: int
    endpoint_id: int
    outbox_id: int
    event_id: str
    event_type: str
    bulk_request_id: int
    body: str
    status: str
    next_attempt_at: str | None
    attempt_count: int
    created_at: str
    leased_until: str | None  # while a dispatcher is sending it (README "Webhooks")


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A pending delivery whose time has come, with what sending it needs."""

    id: int
    endpoint_id: int
    event_id: str
    body: str
    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one send of a delivery came to."""

    delivery_id: int
    at: str
    http_status: int | None
    error: str | None  # None: the receiver answered 2xx in time
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.error is None
