"""Bulk requests as the API sees them: submit, cancel, retry.

Each operation is one storage operation, one transaction (server/db/port.py), so what
a client is told (202, 200, 409) is exactly what was committed. Idempotency keys are
checked and saved inside the same transaction as the request they protect, so two
concurrent calls with one key cannot both create a request. What is done here is what
happens before the transaction: the rows staged (encoded off the event loop) and the
one stream they name found.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from server.constants import PARSE_CHUNK_BYTES
from server.db.port import (
    CancelOutcome,
    IdempotencyClaim,
    NewUpload,
    Storage,
)
from server.ingest.fast_records import DeferrableBody
from server.ingest.validation import StreamRef, ValidRecord
from server.models import BulkRequest
from server.rules import CANCELLABLE_STATUSES, RETRYABLE_STATUSES, retry_refusal
from server.staging import (
    StagedItem,
    ValidatedRows,
    encode_in_chunks,
    encode_items,
    encode_raw_body,
    encode_validated_in_chunks,
)
from server.types import JSON, Mode


def fingerprint(operation: str, payload: Any) -> str:
    """Canonical hash of what a request asks for, to recognise an identical retry."""
    canonical = orjson.dumps(
        {"operation": operation, "payload": payload},
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    return hashlib.sha256(canonical).hexdigest()


async def submit_records(
    storage: Storage,
    environment_id: int,
    records: Sequence[Any],
    on_conflict: str,
    claim: IdempotencyClaim | None,
    body_bytes: int,
    run_at: datetime | None = None,
    mode: Mode = Mode.PARTIAL,
) -> tuple[BulkRequest, bool]:
    """Stage the rows durably and enqueue them; returns (request, replayed).

    `body_bytes`: the size of the request body the records came from. `run_at`: staged
    now, claimed from then on (server/scheduling.py).
    """
    items: list[StagedItem] = [[None, record, None] for record in records]
    # Before the transaction, so the writer only copies bytes; in a thread, because zstd
    # releases the GIL: the compression runs on the other core, not on the event loop.
    # A body of at most PARSE_CHUNK_BYTES is one chunk (every usual POST: one encoding);
    # a larger one is cut like a file's rows, so no worker decodes it whole.
    if body_bytes <= PARSE_CHUNK_BYTES:
        staged = [(0, len(items), await asyncio.to_thread(encode_items, items))]
    else:
        staged = await asyncio.to_thread(encode_in_chunks, items)
    del items
    # Only text can name a stream; other values (maybe unhashable: {}) count as None.
    keys = {
        key if isinstance(key := r.get("data_stream_key"), str) else None
        for r in records
        if isinstance(r, dict)
    }
    # When every row names one and the same stream, the request belongs to it.
    single_key = next(iter(keys)) if len(keys) == 1 else None
    return await storage.create_records_request(
        environment_id,
        on_conflict=on_conflict,
        mode=mode,
        total_items=len(records),
        chunks=staged,
        data_stream_key=single_key,
        claim=claim,
        run_at=run_at,
    )


async def submit_validated_records(
    storage: Storage,
    environment_id: int,
    records: list[ValidRecord],
    streams: dict[str, StreamRef],
    claim: IdempotencyClaim | None,
) -> tuple[BulkRequest, bool]:
    """Like submit_records, for rows the accept's fast path proved valid (always
    on_conflict=skip): staged as validated records, which the worker only binds.
    `streams`: the streams the rows name, as they were proved against."""
    staged = await asyncio.to_thread(encode_validated_in_chunks, ValidatedRows(streams, records))
    return await storage.create_records_request(
        environment_id,
        on_conflict="skip",
        total_items=len(records),
        chunks=staged,
        data_stream_key=next(iter(streams)) if len(streams) == 1 else None,
        claim=claim,
    )


async def submit_raw_body(
    storage: Storage, environment_id: int, text: bytes, body: DeferrableBody
) -> BulkRequest:
    """Like submit_records, for a body whose rows the worker finishes (unkeyed,
    on_conflict=skip, at most one chunk): staged as its text (RAW_BODY_V1).
    Compressed on the event loop: ~0.4 ms per 1000-row body, where a thread hop cost
    the accept several milliseconds of waiting for the GIL and the loop (README,
    Performance, fourth wave)."""
    keys = body.stream_keys
    row, _replayed = await storage.create_records_request(
        environment_id,
        on_conflict="skip",
        total_items=body.rows,
        chunks=[(0, body.rows, encode_raw_body(text))],
        data_stream_key=next(iter(keys)) if len(keys) == 1 else None,
        claim=None,
    )
    return row


async def submit_upload(
    storage: Storage,
    environment_id: int,
    *,
    upload_format: str,
    upload_path: str,
    filename: str | None,
    data_stream_key: str | None,
    on_conflict: str,
    nacha_options: Sequence[str] | None,
    csv_options: JSON | None = None,
    claim: IdempotencyClaim | None,
    run_at: datetime | None = None,
    mode: Mode = Mode.PARTIAL,
) -> tuple[BulkRequest, bool]:
    """Enqueue a stored upload for parsing; returns (request, replayed).

    `nacha_options`: the relaxation names a NACHA file is parsed with (None for CSV);
    `csv_options`: the CSV options (SPEC §15) a CSV file is parsed with (None for NACHA).
    On replay the caller deletes its freshly stored copy of the file.
    """
    stored_options = None if nacha_options is None else orjson.dumps(list(nacha_options)).decode()
    upload = NewUpload(
        upload_format=upload_format,
        upload_path=upload_path,
        filename=filename,
        data_stream_key=data_stream_key,
        on_conflict=on_conflict,
        nacha_options=stored_options,
        csv_options=None if csv_options is None else orjson.dumps(csv_options).decode(),
        run_at=run_at,
        mode=mode,
    )
    return await storage.create_upload_request(environment_id, upload, claim)


def can_cancel(row: BulkRequest) -> bool:
    """The payload's `can_cancel`: cancelling would change something (not when it has
    ended, nor when its cancellation is already requested and the worker is stopping)."""
    return row.status in CANCELLABLE_STATUSES and row.cancellation_requested_at is None


async def cancel(
    storage: Storage, environment_id: int, request_id: int
) -> tuple[BulkRequest, CancelOutcome] | None:
    """Cancel per SPEC §7. Returns (request, outcome) or None when it does not exist.

    outcome: cancelled (stopped now), requested (the worker stops at its next
    heartbeat), unchanged (already cancelled). Raises Conflict for completed/failed.
    """
    return await storage.cancel_request(environment_id, request_id)


async def retry(
    storage: Storage, environment_id: int, request_id: int, claim: IdempotencyClaim | None
) -> tuple[BulkRequest, bool] | None:
    """Retry per SPEC §7 "Chains": the new request holds exactly the rows no member of
    the request's chain stored or skipped, and becomes the child of its latest member.

    Decided and created in one write transaction (server/rules.py `retry_refusal` and
    server/chains.py decide), so concurrent retries and cancels are serialized.
    Returns (child, replayed) or None when the request does not exist.
    """
    return await storage.create_retry(environment_id, request_id, claim)


async def retryable_requests(
    storage: Storage, environment_id: int, rows: Sequence[BulkRequest]
) -> set[int]:
    """The ids among `rows` that `retry` would accept now (the payload's `can_retry`).

    Only a failed or cancelled request can be, so only those chains are read: one query
    however many rows, none while every row is live or completed.
    """
    candidates = [row.id for row in rows if row.status in RETRYABLE_STATUSES]
    if not candidates:
        return set()
    wanted = set(candidates)
    retryable: set[int] = set()
    for chain in await storage.list_chains(environment_id, candidates):
        for member in chain:
            if member.id in wanted and retry_refusal(member.id, chain) is None:
                retryable.add(member.id)
    return retryable
