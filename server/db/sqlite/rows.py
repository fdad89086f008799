"""SQLite rows → the port's typed models, and back to the row as stored (the outbox payload).

`bulk_request_from_row` is the one place a `bulk_requests` row becomes a `BulkRequest`:
a column added by a migration gets its field in server/models.py and its line here.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from server.models import BulkRequest, ChainMember
from server.types import JSON, OnConflict, Source, Status, UploadFormat


def _nacha_options(text: str | None) -> tuple[str, ...] | None:
    return tuple(orjson.loads(text)) if text else None


def stored_nacha_options(options: tuple[str, ...] | None) -> str | None:
    """As the column holds them: JSON text of their names (the text the upload wrote)."""
    return orjson.dumps(list(options)).decode() if options is not None else None


def bulk_request_from_row(row: sqlite3.Row) -> BulkRequest:
    """From any query that selects `bulk_requests.*` (with or without the joined
    `data_stream_key`)."""
    upload_format = row["upload_format"]
    joined = "data_stream_key" in row.keys()  # noqa: SIM118 (a Row is not a mapping)
    return BulkRequest(
        id=row["id"],
        environment_id=row["environment_id"],
        status=Status(row["status"]),
        source=Source(row["source"]),
        on_conflict=OnConflict(row["on_conflict"]),
        total_items=row["total_items"],
        processed_items=row["processed_items"],
        successful_items=row["successful_items"],
        failed_items=row["failed_items"],
        skipped_items=row["skipped_items"],
        next_row=row["next_row"],
        parsing=bool(row["parsing"]),
        upload_format=UploadFormat(upload_format) if upload_format is not None else None,
        upload_path=row["upload_path"],
        filename=row["filename"],
        default_data_stream_key=row["default_data_stream_key"],
        data_stream_id=row["data_stream_id"],
        parent_bulk_request_id=row["parent_bulk_request_id"],
        created_at=row["created_at"],
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        last_progress_at=row["last_progress_at"],
        cancellation_requested_at=row["cancellation_requested_at"],
        error_message=row["error_message"],
        error_details=row["error_details"],
        recoveries=row["recoveries"],
        attempt=row["attempt"],
        claimed_by=row["claimed_by"],
        nacha_options=_nacha_options(row["nacha_options"]),
        data_stream_key=row["data_stream_key"] if joined else None,
        has_data_stream_key=joined,
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
    }
    if request.has_data_stream_key:
        row["data_stream_key"] = request.data_stream_key
    return row


def chain_member_from_row(row: sqlite3.Row) -> ChainMember:
    """From list_chains_of, which selects only these columns."""
    return ChainMember(
        id=row["id"],
        status=Status(row["status"]),
        parsing=bool(row["parsing"]),
        upload_path=row["upload_path"],
        error_message=row["error_message"],
        failed_items=row["failed_items"],
        next_row=row["next_row"],
        total_items=row["total_items"],
        parent_bulk_request_id=row["parent_bulk_request_id"],
    )
