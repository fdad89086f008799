"""Bulk requests as the API sees them: submit, cancel, retry.

Each operation is one write transaction, so what a client is told (202, 200, 409) is
exactly what was committed. Idempotency keys are checked and saved inside the same
transaction as the request they protect: with writes serialized, two concurrent calls
with one key cannot both create a request.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from server.constants import PARSE_CHUNK_ROWS
from server.db.store import Store
from server.db.tx import StagedItem, WriteTx, decode_items, encode_items
from server.types import JSON, TERMINAL_STATUSES


class IdempotencyMismatch(Exception):
    """The key was used before for a different request."""


class Conflict(Exception):
    """The request's state does not allow the operation; the message says why."""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    key: str
    fingerprint: str


def fingerprint(operation: str, payload: Any) -> str:
    """Canonical hash of what a request asks for, to recognise an identical retry."""
    canonical = orjson.dumps(
        {"operation": operation, "payload": payload},
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    return hashlib.sha256(canonical).hexdigest()


def _replay(tx: WriteTx, environment_id: int, claim: IdempotencyClaim | None) -> JSON | None:
    if claim is None:
        return None
    seen = tx.get_idempotency_key(environment_id, claim.key)
    if seen is None:
        return None
    if seen["fingerprint"] != claim.fingerprint:
        raise IdempotencyMismatch(claim.key)
    row = tx.get_bulk_request(environment_id, seen["bulk_request_id"])
    assert row is not None
    return row


def _single_stream(tx: WriteTx, environment_id: int, keys: set[Any]) -> JSON | None:
    if len(keys) != 1:
        return None
    (key,) = keys
    return tx.get_data_stream(environment_id, key) if isinstance(key, str) else None


async def submit_records(
    store: Store,
    environment_id: int,
    records: Sequence[Any],
    on_conflict: str,
    claim: IdempotencyClaim | None,
) -> tuple[JSON, bool]:
    """Stage the rows durably and enqueue them; returns (request, replayed)."""
    items: list[StagedItem] = [[None, record, None] for record in records]
    # Before the transaction, so the writer only copies bytes; in a thread, because zlib
    # releases the GIL: the compression runs on the other core, not on the event loop.
    staged = await asyncio.to_thread(encode_items, items)
    # Only text can name a stream; other values (maybe unhashable: {}) count as None.
    keys = {
        key if isinstance(key := r.get("data_stream_key"), str) else None
        for r in records
        if isinstance(r, dict)
    }

    def work(tx: WriteTx) -> tuple[JSON, bool]:
        replayed = _replay(tx, environment_id, claim)
        if replayed is not None:
            return replayed, True
        stream = _single_stream(tx, environment_id, keys)
        row = tx.insert_bulk_request(
            environment_id=environment_id,
            source="bulk_api",
            on_conflict=on_conflict,
            total_items=len(items),
            data_stream_id=stream["id"] if stream else None,
        )
        tx.insert_chunk(row["id"], 0, len(items), staged)
        if claim is not None:
            tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, row["id"])
        row["data_stream_key"] = stream["key"] if stream else None
        return row, False

    # urgent: the client waits for this commit, a worker's next batch can wait 1 ms more.
    return await store.write(work, urgent=True)


async def submit_upload(
    store: Store,
    environment_id: int,
    *,
    upload_format: str,
    upload_path: str,
    filename: str | None,
    data_stream_key: str | None,
    on_conflict: str,
    nacha_options: Sequence[str] | None,
    claim: IdempotencyClaim | None,
) -> tuple[JSON, bool]:
    """Enqueue a stored upload for parsing; returns (request, replayed).

    `nacha_options`: the relaxation names a NACHA file is parsed with (None for CSV).
    On replay the caller deletes its freshly stored copy of the file.
    """
    stored_options = None if nacha_options is None else orjson.dumps(list(nacha_options)).decode()

    def work(tx: WriteTx) -> tuple[JSON, bool]:
        replayed = _replay(tx, environment_id, claim)
        if replayed is not None:
            return replayed, True
        row = tx.insert_bulk_request(
            environment_id=environment_id,
            source=upload_format,
            on_conflict=on_conflict,
            parsing=1,
            upload_format=upload_format,
            upload_path=upload_path,
            filename=filename,
            default_data_stream_key=data_stream_key,
            nacha_options=stored_options,
        )
        if claim is not None:
            tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, row["id"])
        row["data_stream_key"] = None
        return row, False

    return await store.write(work, urgent=True)


async def cancel(store: Store, environment_id: int, request_id: int) -> tuple[JSON, str] | None:
    """Cancel per SPEC §7. Returns (request, outcome) or None when it does not exist.

    outcome: "cancelled" (stopped now), "requested" (the worker stops at its next
    heartbeat), "unchanged" (already cancelled). Raises Conflict for completed/failed.
    """

    def work(tx: WriteTx) -> tuple[JSON, str] | None:
        row = tx.get_bulk_request(environment_id, request_id)
        if row is None:
            return None
        status = row["status"]
        if status == "cancelled":
            return row, "unchanged"
        if status in TERMINAL_STATUSES:
            raise Conflict(f"bulk request {request_id} is {status}; it can no longer be cancelled")
        # A pending request, or a processing one no worker holds right now, has no batch
        # in flight and is cancelled at once; otherwise the holder stops at its heartbeat.
        stopped_now = status == "pending" and tx.cancel_pending(environment_id, request_id)
        if stopped_now or tx.cancel_unclaimed_processing(environment_id, request_id):
            outcome = "cancelled"
        else:
            tx.request_cancellation(environment_id, request_id)
            outcome = "requested"
        updated = tx.get_bulk_request(environment_id, request_id)
        assert updated is not None
        return updated, outcome

    return await store.write(work, urgent=True)


async def retry(
    store: Store, environment_id: int, request_id: int, claim: IdempotencyClaim | None
) -> tuple[JSON, bool] | None:
    """Create a child with exactly the parent's failed and never-processed rows.

    Returns (child, replayed) or None when the parent does not exist.
    """

    def work(tx: WriteTx) -> tuple[JSON, bool] | None:
        replayed = _replay(tx, environment_id, claim)
        if replayed is not None:
            return replayed, True
        parent = tx.get_bulk_request(environment_id, request_id)
        if parent is None:
            return None
        if parent["status"] not in ("failed", "cancelled"):
            raise Conflict(
                f"bulk request {request_id} is {parent['status']}; "
                "only failed or cancelled requests can be retried"
            )
        child = tx.latest_child(request_id)
        if child is not None and (
            child["status"] not in TERMINAL_STATUSES or child["status"] == "completed"
        ):
            raise Conflict(
                f"bulk request {request_id} already has retry {child['id']} "
                f"({child['status']}); retry that one instead"
            )
        common = {
            "environment_id": environment_id,
            "source": "retry",
            "on_conflict": parent["on_conflict"],
            "filename": parent["filename"],
            "data_stream_id": parent["data_stream_id"],
            "parent_bulk_request_id": request_id,
            # A retry parses (or holds rows parsed) under the parent's relaxations.
            "nacha_options": parent["nacha_options"],
        }
        if parent["parsing"]:
            row = _retry_unparsed_upload(tx, parent, common)
        else:
            row = _retry_rows(tx, parent, common)
        if claim is not None:
            tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, row["id"])
        row["data_stream_key"] = parent["data_stream_key"]
        return row, False

    return await store.write(work, urgent=True)


def _retry_unparsed_upload(tx: WriteTx, parent: JSON, common: JSON) -> JSON:
    # The parent stopped before its file was parsed: the child parses the same file.
    if not parent["upload_path"]:
        raise Conflict(
            f"bulk request {parent['id']} was rejected as a whole file "
            f"({parent['error_message']}); upload a corrected file instead"
        )
    row = tx.insert_bulk_request(
        **common,
        parsing=1,
        upload_format=parent["upload_format"],
        upload_path=parent["upload_path"],
        default_data_stream_key=parent["default_data_stream_key"],
    )
    tx.hand_over_upload(parent["id"])
    return row


def _retry_rows(tx: WriteTx, parent: JSON, common: JSON) -> JSON:
    row = tx.insert_bulk_request(**common)
    child_id = row["id"]
    buffer: list[StagedItem] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if buffer:
            tx.insert_chunk(child_id, written, len(buffer), encode_items(buffer))
            written += len(buffer)
            buffer.clear()

    # Failed rows first (all below the checkpoint), then the never-processed rows, so
    # the child keeps the parent's row order.
    after = -1
    while page := tx.list_row_errors(parent["id"], after, PARSE_CHUNK_ROWS):
        for error in page:
            buffer.append(orjson.loads(error["source"]))
        after = page[-1]["row"]
        flush()
    position = parent["next_row"]
    while chunk := tx.next_chunk_from(parent["id"], position):
        items = decode_items(chunk["body"])
        buffer.extend(items[max(0, position - chunk["first_row"]) :])
        position = chunk["first_row"] + chunk["row_count"]
        flush()
    flush()
    if written == 0:
        raise Conflict(f"bulk request {parent['id']} has no failed or unprocessed rows to retry")
    tx.set_total_items(child_id, written)
    row["total_items"] = written
    return row
