"""PostgreSQL rows → the port's typed models (the twin of server/db/sqlite/rows.py).

`bulk_request_from_record` is the one place a `bulk_requests` row read from PostgreSQL
becomes a `BulkRequest`: a column added by a migration gets its line here too (the
outbox payload is written back from the model by server/db/payload.py `stored_row`, which
both adapters share so the payload is the same whichever database wrote it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson

from server.models import BulkRequest
from server.types import Mode, OnConflict, Source, Status, UploadFormat


def bulk_request_from_record(record: asyncpg.Record | Mapping[str, Any]) -> BulkRequest:
    """THE one place a bulk request read from PostgreSQL becomes a `BulkRequest` (the
    twin of server/db/sqlite/rows.py bulk_request_from_row), from any statement that
    returns `bulk_requests.*` (then, optionally, the joined `data_stream_key`).

    By name: asyncpg's Record reads a column by name in C, and a column a migration adds
    without its field here fails at the first read (a missing key), not silently.
    """
    r = record
    nacha_options = r["nacha_options"]
    upload_format = r["upload_format"]
    # The column names, whatever `in` means for the record type passed.
    joined = "data_stream_key" in r.keys()  # noqa: SIM118
    return BulkRequest(
        id=r["id"],
        environment_id=r["environment_id"],
        status=Status(r["status"]),
        source=Source(r["source"]),
        on_conflict=OnConflict(r["on_conflict"]),
        total_items=r["total_items"],
        processed_items=r["processed_items"],
        successful_items=r["successful_items"],
        failed_items=r["failed_items"],
        skipped_items=r["skipped_items"],
        next_row=r["next_row"],
        parsing=bool(r["parsing"]),
        upload_format=UploadFormat(upload_format) if upload_format is not None else None,
        upload_path=r["upload_path"],
        filename=r["filename"],
        default_data_stream_key=r["default_data_stream_key"],
        data_stream_id=r["data_stream_id"],
        parent_bulk_request_id=r["parent_bulk_request_id"],
        created_at=r["created_at"],
        queued_at=r["queued_at"],
        started_at=r["started_at"],
        completed_at=r["completed_at"],
        last_progress_at=r["last_progress_at"],
        cancellation_requested_at=r["cancellation_requested_at"],
        error_message=r["error_message"],
        error_details=r["error_details"],  # jsonb, read back as compact text (storage.py)
        recoveries=r["recoveries"],
        attempt=r["attempt"],
        claimed_by=r["claimed_by"],
        nacha_options=tuple(orjson.loads(nacha_options)) if nacha_options else None,
        csv_options=r["csv_options"],
        run_at=r["run_at"],
        mode=Mode(r["mode"]),
        unpublished=bool(r["unpublished"]),
        data_stream_key=r["data_stream_key"] if joined else None,
        has_data_stream_key=joined,
    )
