"""Per-row errors as CSV, streamed page by page (never built in memory).

The columns are the upload columns plus the error, so a user can fix the rows in a
spreadsheet and upload the file again: the CSV reader ignores the extra columns.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from aiohttp import web

from server.api.common import STORE
from server.types import JSON

PAGE_ROWS = 1000
ERROR_COLUMNS = ["row", "line", "error_code", "error_message", "error_pointer"]
RECORD_COLUMNS = ["date", "amount", "currency", "description", "external_id", "data_stream_key"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


async def _pages(request: web.Request, request_id: int) -> Any:
    store = request.app[STORE]
    after = -1
    while page := await store.list_row_errors(request_id, after, PAGE_ROWS):
        yield page
        after = page[-1]["row"]


async def stream_errors_csv(request: web.Request, bulk_request: JSON) -> web.StreamResponse:
    request_id = bulk_request["id"]
    # First pass: the metadata keys, so every metadata.<name> gets its own column.
    metadata_keys: set[str] = set()
    async for page in _pages(request, request_id):
        for error in page:
            fields = orjson.loads(error["source"])[1]
            if isinstance(fields, dict) and isinstance(fields.get("metadata"), dict):
                metadata_keys.update(fields["metadata"])
    meta_columns = sorted(metadata_keys)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="bulk-request-{request_id}-errors.csv"',
        }
    )
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ERROR_COLUMNS + RECORD_COLUMNS + [f"metadata.{k}" for k in meta_columns])
    # The header goes out even when there are no errors: an empty body is not a CSV file.
    await response.write(buffer.getvalue().encode())
    buffer.seek(0)
    buffer.truncate()
    async for page in _pages(request, request_id):
        for error in page:
            fields = orjson.loads(error["source"])[1]
            fields = fields if isinstance(fields, dict) else {}
            metadata = fields.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else {}
            writer.writerow(
                [
                    error["row"],
                    _cell(error["line"]),
                    error["code"],
                    error["message"],
                    error["pointer"],
                ]
                + [_cell(fields.get(c)) for c in RECORD_COLUMNS]
                + [_cell(metadata.get(k)) for k in meta_columns]
            )
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
    await response.write_eof()
    return response
