"""Typed models → the JSON shapes of the API (SPEC §5, §7)."""

from __future__ import annotations

import orjson

from server.bulk_requests import can_cancel
from server.clock import parse_rfc3339, utc_now
from server.models import BulkRequest, DataStream, Record, RowError
from server.money import currency_exponent, format_major_units
from server.scheduling import is_scheduled
from server.types import JSON, TERMINAL_STATUSES

SUMMARY_FIELDS = (
    "id",
    "status",
    "total_items",
    "processed_items",
    "successful_items",
    "failed_items",
    "skipped_items",
    "url",
)


def bulk_request_url(request_id: int) -> str:
    return f"/v1/bulk_requests/{request_id}"


def is_stuck(row: BulkRequest, stuck_after: float) -> bool:
    beat = row.last_progress_at
    if row.status != "processing" or beat is None:
        return False
    return (utc_now() - parse_rfc3339(beat)).total_seconds() > stuck_after


def is_parsing(row: BulkRequest) -> bool:
    """The payload's `parsing`: a worker is parsing the file, or will.

    The stored flag means "the file's rows are not staged yet" and stays set when an
    upload ends before its file was parsed (cancelled, rejected, file gone): retrying it
    parses the same file again. A terminal request parses nothing, so it says false.
    """
    return bool(row.parsing) and row.status not in TERMINAL_STATUSES


def render_bulk_request(row: BulkRequest, stuck_after: float, *, can_retry: bool) -> JSON:
    """The full payload. `can_retry` depends on the request's whole chain of retries, so
    the caller reads it (server.bulk_requests.retryable_requests)."""
    total = row.total_items
    processed = row.processed_items
    if total:
        progress = processed * 100 // total
    else:
        progress = 100 if row.status == "completed" else 0
    url = bulk_request_url(row.id)
    return {
        "id": row.id,
        "status": row.status.value,
        "source": row.source.value,
        "total_items": total,
        "processed_items": processed,
        "successful_items": row.successful_items,
        "failed_items": row.failed_items,
        "skipped_items": row.skipped_items,
        "progress": progress,
        "filename": row.filename,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "completed_at": row.completed_at,
        "last_progress_at": row.last_progress_at,
        "cancellation_requested_at": row.cancellation_requested_at,
        # SPEC §12: when it runs (null: at once), and whether it still waits for that.
        "run_at": row.run_at,
        "scheduled": is_scheduled(row, utc_now()),
        "parsing": is_parsing(row),
        "stuck": is_stuck(row, stuck_after),
        "error_message": row.error_message,
        "error_details": orjson.loads(row.error_details) if row.error_details else {},
        "recoveries": row.recoveries,
        "parent_bulk_request_id": row.parent_bulk_request_id,
        "on_conflict": row.on_conflict.value,
        # SPEC §14: "atomic" stores all rows or none; "partial" every valid row.
        "mode": row.mode.value,
        # NACHA uploads (and their retries): the relaxations named at upload, [] for none.
        "nacha_options": list(row.nacha_options) if row.nacha_options is not None else None,
        # CSV uploads (and their retries): the options the file is read with (SPEC §15).
        "csv_options": orjson.loads(row.csv_options) if row.csv_options else None,
        "data_stream_id": row.data_stream_id,
        "data_stream_key": row.data_stream_key,
        # What the API would accept now, so that clients (the dashboard) need not
        # re-derive SPEC §7's rules: POST …/cancel would change something, POST …/retry
        # would create a retry.
        "can_cancel": can_cancel(row),
        "can_retry": can_retry,
        "url": url,
        "errors_url": f"{url}/errors",
    }


def render_summary(row: BulkRequest) -> JSON:
    summary = {name: getattr(row, name) for name in SUMMARY_FIELDS if name != "url"}
    summary["url"] = bulk_request_url(row.id)
    return summary


def render_record(record: Record) -> JSON:
    exponent = currency_exponent(record.currency)
    amount = format_major_units(record.amount_minor, exponent if exponent is not None else 0)
    return {
        "id": record.id,
        "data_stream_key": record.data_stream_key,
        "date": record.date,
        # Emitted as a JSON number with exactly these digits (no float in between).
        "amount": orjson.Fragment(amount.encode()),
        "currency": record.currency,
        "description": record.description,
        "external_id": record.external_id,
        "metadata": orjson.loads(record.metadata) if record.metadata else None,
        "bulk_request_id": record.bulk_request_id,
        "created_at": record.created_at,
    }


def render_data_stream(stream: DataStream) -> JSON:
    return {
        "id": stream.id,
        "key": stream.key,
        "name": stream.name,
        "currency": stream.currency,
        "created_at": stream.created_at,
    }


def render_row_error(error: RowError) -> JSON:
    return {
        "row": error.row,
        "line": error.line,
        "external_id": error.external_id,
        "code": error.code,
        "message": error.message,
        "pointer": error.pointer,
    }
