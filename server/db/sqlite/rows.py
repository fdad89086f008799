"""SQLite rows → the port's typed models, and back to the row as stored (the outbox payload).

`bulk_request_from_row` is the one place a `bulk_requests` row becomes a `BulkRequest`:
a column added by a migration gets its field in server/models.py (after the last column,
as the migration appends it to the table) and its line here and in `stored_row`
(tests/test_store.py checks all three against the table).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import orjson

from server.models import BulkRequest, ChainMember
from server.types import JSON, Mode, OnConflict, Source, Status, UploadFormat


def _nacha_options(text: str | None) -> tuple[str, ...] | None:
    return tuple(orjson.loads(text)) if text else None


def stored_nacha_options(options: tuple[str, ...] | None) -> str | None:
    """As the column holds them: JSON text of their names (the text the upload wrote)."""
    return orjson.dumps(list(options)).decode() if options is not None else None


# The columns of `bulk_requests` in table order, as `BulkRequest` has them (a query that
# selects them otherwise is refused at its first read, not silently misread).
_COLUMNS = [field.name for field in dataclasses.fields(BulkRequest)][:-2]
_TABLE_WIDTH = len(_COLUMNS)
# Enum members by their stored text: a dict lookup, several times cheaper than Status(text).
_STATUSES = {member.value: member for member in Status}
_SOURCES = {member.value: member for member in Source}
_ON_CONFLICTS = {member.value: member for member in OnConflict}
_MODES = {member.value: member for member in Mode}
_UPLOAD_FORMATS: dict[str | None, UploadFormat | None] = {None: None}
_UPLOAD_FORMATS.update({member.value: member for member in UploadFormat})


def bulk_request_from_row(row: sqlite3.Row) -> BulkRequest:
    """From any query that selects `bulk_requests.*` (then, optionally, the joined
    `data_stream_key`).

    Read by position (the columns are checked, in order, first): reading 34 columns by
    name cost ~10 µs a row, which a 200-request page of GET /v1/bulk_requests felt.
    """
    names = row.keys()
    if names[:_TABLE_WIDTH] != _COLUMNS:
        raise ValueError(f"not a bulk_requests.* row: {names}")
    joined = len(names) > _TABLE_WIDTH and names[_TABLE_WIDTH] == "data_stream_key"
    v = tuple(row)
    return BulkRequest(
        v[0],
        v[1],
        _STATUSES[v[2]],
        _SOURCES[v[3]],
        _ON_CONFLICTS[v[4]],
        v[5],
        v[6],
        v[7],
        v[8],
        v[9],
        v[10],
        bool(v[11]),  # parsing
        _UPLOAD_FORMATS[v[12]],
        v[13],  # upload_path
        v[14],  # filename
        v[15],  # default_data_stream_key
        v[16],  # data_stream_id
        v[17],  # parent_bulk_request_id
        v[18],  # created_at
        v[19],  # queued_at
        v[20],  # started_at
        v[21],  # completed_at
        v[22],  # last_progress_at
        v[23],  # cancellation_requested_at
        v[24],  # error_message
        v[25],  # error_details
        v[26],  # recoveries
        v[27],  # attempt
        v[28],  # claimed_by
        _nacha_options(v[29]),
        v[30],  # csv_options
        v[31],  # run_at
        _MODES[v[32]],
        bool(v[33]),  # unpublished
        # A column a migration adds comes here, as v[34], in the order of the table.
        v[_TABLE_WIDTH] if joined else None,
        joined,
    )


def bulk_request_from_stored(row: JSON) -> BulkRequest:
    """The inverse of `stored_row`: a request from its stored row as a dict (an outbox
    payload). By name, not by position: an outbox row may be older than a column, which
    then reads as absent (None)."""
    fields = dataclasses.fields(BulkRequest)
    values: dict[str, Any] = {field.name: row.get(field.name) for field in fields[:-2]}
    return BulkRequest(
        **{
            **values,
            "status": _STATUSES[row["status"]],
            "source": _SOURCES[row["source"]],
            "on_conflict": _ON_CONFLICTS[row["on_conflict"]],
            "parsing": bool(row["parsing"]),
            # An outbox row written before atomic requests existed: partial.
            "mode": _MODES[row.get("mode") or "partial"],
            "unpublished": bool(row.get("unpublished")),
            "upload_format": _UPLOAD_FORMATS[row.get("upload_format")],
            "nacha_options": _nacha_options(row.get("nacha_options")),
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
        mode=_MODES[row["mode"]],
    )
