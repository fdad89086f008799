"""A bulk request as its row is stored, the outbox payload's form, for both adapters.

Every adapter writes the outbox payload with `stored_row` and reads it back with
`bulk_request_from_stored` (event streams, webhooks, other processes' notifications),
so a payload reads the same whichever database wrote it. Each adapter's row → model
function stays beside its driver (server/db/sqlite/rows.py, server/db/postgres/rows.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from server.models import BulkRequest
from server.types import JSON, Mode, OnConflict, Source, Status, UploadFormat

# Enum members by their stored text: a dict lookup, several times cheaper than Status(text).
STATUSES = {member.value: member for member in Status}
SOURCES = {member.value: member for member in Source}
ON_CONFLICTS = {member.value: member for member in OnConflict}
MODES = {member.value: member for member in Mode}
UPLOAD_FORMATS: dict[str | None, UploadFormat | None] = {None: None}
UPLOAD_FORMATS.update({member.value: member for member in UploadFormat})


def nacha_options_of(text: str | None) -> tuple[str, ...] | None:
    return tuple(orjson.loads(text)) if text else None


def stored_nacha_options(options: tuple[str, ...] | None) -> str | None:
    """As the column holds them: JSON text of their names (the text the upload wrote)."""
    return orjson.dumps(list(options)).decode() if options is not None else None


def bulk_request_from_stored(row: JSON) -> BulkRequest:
    """The inverse of `stored_row`: a request from its stored row as a dict (an outbox
    payload). By name, not by position: an outbox row may be older than a column, which
    then reads as absent (None)."""
    fields = dataclasses.fields(BulkRequest)
    values: dict[str, Any] = {field.name: row.get(field.name) for field in fields[:-2]}
    return BulkRequest(
        **{
            **values,
            "status": STATUSES[row["status"]],
            "source": SOURCES[row["source"]],
            "on_conflict": ON_CONFLICTS[row["on_conflict"]],
            "parsing": bool(row["parsing"]),
            # An outbox row written before atomic requests existed: partial.
            "mode": MODES[row.get("mode") or "partial"],
            "unpublished": bool(row.get("unpublished")),
            "upload_format": UPLOAD_FORMATS[row.get("upload_format")],
            "nacha_options": nacha_options_of(row.get("nacha_options")),
            "data_stream_key": row.get("data_stream_key"),
            "has_data_stream_key": "data_stream_key" in row,
        }
    )


def stored_row(request: BulkRequest) -> JSON:
    """The request as its row is stored (the outbox payload): the table's columns in
    table order with their stored values (parsing 0/1, JSON columns as JSON text), then
    `data_stream_key` when it was read."""
    row: dict[str, Any] = {
        "id": request.id,
        "environment_id": request.environment_id,
        "status": request.status.value,
        "source": request.source.value,
        "on_conflict": request.on_conflict.value,
        "total_items": request.total_items,
        "processed_items": request.processed_items,
        "successful_items": request.successful_items,
        "failed_items": request.failed_items,
        "skipped_items": request.skipped_items,
        "next_row": request.next_row,
        "parsing": int(request.parsing),
        "upload_format": request.upload_format.value if request.upload_format else None,
        "upload_path": request.upload_path,
        "filename": request.filename,
        "default_data_stream_key": request.default_data_stream_key,
        "data_stream_id": request.data_stream_id,
        "parent_bulk_request_id": request.parent_bulk_request_id,
        "created_at": request.created_at,
        "queued_at": request.queued_at,
        "started_at": request.started_at,
        "completed_at": request.completed_at,
        "last_progress_at": request.last_progress_at,
        "cancellation_requested_at": request.cancellation_requested_at,
        "error_message": request.error_message,
        "error_details": request.error_details,
        "recoveries": request.recoveries,
        "attempt": request.attempt,
        "claimed_by": request.claimed_by,
        "nacha_options": stored_nacha_options(request.nacha_options),
        "csv_options": request.csv_options,
        "run_at": request.run_at,
        "mode": request.mode.value,
        "unpublished": int(request.unpublished),
    }
    if request.has_data_stream_key:
        row["data_stream_key"] = request.data_stream_key
    return row
