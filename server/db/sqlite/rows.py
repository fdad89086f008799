"""SQLite rows → the port's typed models (the outbox payload form: server/db/payload.py).

`bulk_request_from_row` is the one place a `bulk_requests` row becomes a `BulkRequest`:
a column added by a migration gets its field in server/models.py (after the last column,
as the migration appends it to the table) and its line here and in server/db/payload.py `stored_row`
(tests/test_store.py checks all three against the table).
"""

from __future__ import annotations

import dataclasses
import sqlite3

from server.db.payload import (
    MODES,
    ON_CONFLICTS,
    SOURCES,
    STATUSES,
    UPLOAD_FORMATS,
    nacha_options_of,
)
from server.models import BulkRequest

# The columns of `bulk_requests` in table order, as `BulkRequest` has them (a query that
# selects them otherwise is refused at its first read, not silently misread).
_COLUMNS = [field.name for field in dataclasses.fields(BulkRequest)][:-2]
_TABLE_WIDTH = len(_COLUMNS)


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
        STATUSES[v[2]],
        SOURCES[v[3]],
        ON_CONFLICTS[v[4]],
        v[5],
        v[6],
        v[7],
        v[8],
        v[9],
        v[10],
        bool(v[11]),  # parsing
        UPLOAD_FORMATS[v[12]],
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
        nacha_options_of(v[29]),
        v[30],  # csv_options
        v[31],  # run_at
        MODES[v[32]],
        bool(v[33]),  # unpublished
        # A column a migration adds comes here, as v[34], in the order of the table.
        v[_TABLE_WIDTH] if joined else None,
        joined,
    )
