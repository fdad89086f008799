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

from server.chains import Coverage, RowMap, RunBuilder, handled_rows, identity_runs, remainder_runs
from server.constants import PARSE_CHUNK_BYTES
from server.db.store import Store
from server.db.tx import StagedItem, WriteTx, decode_items, encode_items
from server.models import DataStream
from server.outcomes import Transition
from server.staging import ChunkWriter, encode_in_chunks
from server.types import JSON, TERMINAL_STATUSES, Source

# SPEC §7: only a request that ended without completing can be retried.
RETRYABLE_STATUSES = frozenset({"failed", "cancelled"})
# SPEC §7: only a request that has not ended can be cancelled.
CANCELLABLE_STATUSES = frozenset({"pending", "processing"})


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


def _single_stream(tx: WriteTx, environment_id: int, keys: set[Any]) -> DataStream | None:
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
    body_bytes: int,
) -> tuple[JSON, bool]:
    """Stage the rows durably and enqueue them; returns (request, replayed).

    `body_bytes`: the size of the request body the records came from.
    """
    items: list[StagedItem] = [[None, record, None] for record in records]
    # Before the transaction, so the writer only copies bytes; in a thread, because zlib
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

    def work(tx: WriteTx) -> tuple[JSON, bool]:
        replayed = _replay(tx, environment_id, claim)
        if replayed is not None:
            return replayed, True
        stream = _single_stream(tx, environment_id, keys)
        row = tx.insert_bulk_request(
            environment_id=environment_id,
            source=Source.BULK_API,
            on_conflict=on_conflict,
            total_items=len(records),
            data_stream_id=stream.id if stream else None,
        )
        for first_row, row_count, body in staged:
            tx.insert_chunk(row["id"], first_row, row_count, body)
        if claim is not None:
            tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, row["id"])
        row["data_stream_key"] = stream.key if stream else None
        tx.emit(row, Transition.CREATED)
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
    csv_options: JSON | None = None,
    claim: IdempotencyClaim | None,
) -> tuple[JSON, bool]:
    """Enqueue a stored upload for parsing; returns (request, replayed).

    `nacha_options`: the relaxation names a NACHA file is parsed with (None for CSV);
    `csv_options`: the CSV options (SPEC §15) a CSV file is parsed with (None for NACHA).
    On replay the caller deletes its freshly stored copy of the file.
    """
    stored_options = None if nacha_options is None else orjson.dumps(list(nacha_options)).decode()
    stored_csv = None if csv_options is None else orjson.dumps(csv_options).decode()

    def work(tx: WriteTx) -> tuple[JSON, bool]:
        replayed = _replay(tx, environment_id, claim)
        if replayed is not None:
            return replayed, True
        row = tx.insert_bulk_request(
            environment_id=environment_id,
            source=Source(upload_format),
            on_conflict=on_conflict,
            parsing=1,
            upload_format=upload_format,
            upload_path=upload_path,
            filename=filename,
            default_data_stream_key=data_stream_key,
            nacha_options=stored_options,
            csv_options=stored_csv,
        )
        if claim is not None:
            tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, row["id"])
        row["data_stream_key"] = None
        tx.emit(row, Transition.CREATED)
        return row, False

    return await store.write(work, urgent=True)


def can_cancel(row: JSON) -> bool:
    """The payload's `can_cancel`: cancelling would change something (not when it has
    ended, nor when its cancellation is already requested and the worker is stopping)."""
    return row["status"] in CANCELLABLE_STATUSES and row["cancellation_requested_at"] is None


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
        if status not in CANCELLABLE_STATUSES:
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
        if outcome == "cancelled":
            tx.emit(updated, Transition.CANCELLED, by="api")
        else:
            tx.emit(updated, Transition.CANCEL_REQUESTED)
        return updated, outcome

    return await store.write(work, urgent=True)


async def retry(
    store: Store, environment_id: int, request_id: int, claim: IdempotencyClaim | None
) -> tuple[JSON, bool] | None:
    """Retry per SPEC §7 "Chains": the new request holds exactly the rows no member of
    the request's chain stored or skipped, and becomes the child of its latest member.

    Decided and created in one write transaction, so concurrent retries (of any
    members) and cancels are serialized: no chain ever gets two live children.
    Returns (child, replayed) or None when the request does not exist.
    """

    def work(tx: WriteTx) -> tuple[JSON, bool] | None:
        replayed = _replay(tx, environment_id, claim)
        if replayed is not None:
            return replayed, True
        chain = tx.list_chain(environment_id, request_id)
        if not chain:
            return None
        refusal = retry_refusal(request_id, chain)
        if refusal is not None:
            raise Conflict(refusal)
        latest = chain[-1]
        common = {
            "environment_id": environment_id,
            "source": Source.RETRY,
            "on_conflict": latest["on_conflict"],
            "filename": latest["filename"],
            "data_stream_id": latest["data_stream_id"],
            "parent_bulk_request_id": latest["id"],
            # A retry parses (or holds rows parsed) under the chain's relaxations.
            "nacha_options": latest["nacha_options"],
            # …and its CSV options (SPEC §15): a retry of an unparsed file reads it the same way.
            "csv_options": latest["csv_options"],
        }
        if latest["parsing"]:
            row = _retry_unparsed_upload(tx, latest, common)
        else:
            row = _retry_rows(tx, chain, common)
        if claim is not None:
            tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, row["id"])
        row["data_stream_key"] = latest["data_stream_key"]
        tx.emit(row, Transition.CREATED)
        return row, False

    return await store.write(work, urgent=True)


def retry_refusal(request_id: int, chain: Sequence[JSON]) -> str | None:
    """Why member `request_id` of `chain` (oldest first) cannot be retried now, or None.

    SPEC §7's retry rule, stated once: `retry` answers 409 with this reason, and the
    payload's `can_retry` is "no reason". It reads only the members' rows: a retry holds
    exactly the rows no earlier member stored or skipped, so what the chain has left
    to retry is what its latest member did not handle (its failed rows and the rows it
    never reached); `_retry_rows` builds exactly those from the chain's coverage.
    """
    requested = next(member for member in chain if member["id"] == request_id)
    if requested["status"] not in RETRYABLE_STATUSES:
        return (
            f"bulk request {request_id} is {requested['status']}; "
            "only failed or cancelled requests can be retried"
        )
    for member in chain:
        if member["status"] not in TERMINAL_STATUSES:
            return (
                f"bulk request {member['id']} of this chain of retries is {member['status']}; "
                "wait for it to end (or cancel it), then retry"
            )
        if member["status"] == "completed":
            return (
                f"bulk request {member['id']} of this chain of retries completed, so every "
                f"row has been processed; its failed rows are at "
                f"/v1/bulk_requests/{member['id']}/errors: fix them and submit them again"
            )
    latest = chain[-1]
    if latest["parsing"]:
        # The chain stopped before its file was parsed: a retry parses the file again,
        # unless the file was rejected as a whole (then it was deleted).
        if not latest["upload_path"]:
            return (
                f"bulk request {latest['id']} was rejected as a whole file "
                f"({latest['error_message']}); upload a corrected file instead"
            )
        return None
    if latest["failed_items"] == 0 and latest["next_row"] >= latest["total_items"]:
        origin = next(member for member in chain if not member["parsing"])
        return f"the chain of bulk request {origin['id']} has no failed or unprocessed rows"
    return None


async def retryable_requests(store: Store, environment_id: int, rows: Sequence[JSON]) -> set[int]:
    """The ids among `rows` that `retry` would accept now (the payload's `can_retry`).

    Only a failed or cancelled request can be, so only those chains are read: one query
    however many rows, none while every row is live or completed.
    """
    candidates = [row["id"] for row in rows if row["status"] in RETRYABLE_STATUSES]
    if not candidates:
        return set()
    wanted = set(candidates)
    retryable: set[int] = set()
    for chain in await store.list_chains(environment_id, candidates):
        for member in chain:
            if member["id"] in wanted and retry_refusal(member["id"], chain) is None:
                retryable.add(member["id"])
    return retryable


def _retry_unparsed_upload(tx: WriteTx, latest: JSON, common: JSON) -> JSON:
    # The chain stopped before its file was parsed (so it stored nothing): the child
    # parses the same file (retry_refusal checked that the file is still there).
    row = tx.insert_bulk_request(
        **common,
        parsing=1,
        upload_format=latest["upload_format"],
        upload_path=latest["upload_path"],
        default_data_stream_key=latest["default_data_stream_key"],
    )
    tx.hand_over_upload(latest["id"])
    return row


def _chain_coverage(tx: WriteTx, staged: Sequence[JSON]) -> Coverage:
    """Which origin rows the chain stored or skipped, from what each member processed.

    `staged` are the members that staged rows, oldest first: the origin, then retries.
    """
    origin = staged[0]
    coverage = Coverage(origin["total_items"])
    maps: dict[int, RowMap] = {}
    errors: dict[int, list[int]] = {}
    for member in staged:
        errors[member["id"]] = tx.row_error_rows(member["id"])
        if member is origin:
            runs = identity_runs(origin["total_items"])
        else:
            runs = tx.retry_row_runs(member["id"])
            if not runs:  # a retry made before runs were recorded
                parent = next(m for m in staged if m["id"] == member["parent_bulk_request_id"])
                runs = remainder_runs(
                    maps[parent["id"]],
                    parent["next_row"],
                    parent["total_items"],
                    errors[parent["id"]],
                )
        row_map = maps[member["id"]] = RowMap(runs)
        for start, end in handled_rows(member["next_row"], errors[member["id"]]):
            for origin_start, origin_end in row_map.to_origin(start, end):
                coverage.mark(origin_start, origin_end)
    return coverage


def _retry_rows(tx: WriteTx, chain: Sequence[JSON], common: JSON) -> JSON:
    # Members still parsing their file when they ended staged no rows; the first member
    # that staged rows is the origin, the later ones are retries of its rows.
    staged = [member for member in chain if not member["parsing"]]
    origin_id = staged[0]["id"]
    coverage = _chain_coverage(tx, staged)
    row = tx.insert_bulk_request(**common)
    child_id = row["id"]
    runs = RunBuilder()
    # Chunks close by the same rule as parsing (a buffer of 2000 rows of 64 KiB peaked
    # at 537 MB).
    writer = ChunkWriter()
    written = 0

    def flush() -> None:
        nonlocal written
        if writer.rows:
            row_count, body = writer.take()
            tx.insert_chunk(child_id, written, row_count, body)
            written += row_count

    # The child holds the rows in the origin's order, copied from the origin's chunks
    # (kept until a request completes, and no member of a retried chain has).
    # One origin chunk is decoded at a time, once, however many gaps fall into it.
    first_row = 0
    items: list[StagedItem] = []
    for start, end in coverage.gaps():
        runs.add(start, end)
        position = start
        while position < end:
            if not first_row <= position < first_row + len(items):
                found = tx.next_chunk_from(origin_id, position)
                if found is None or found["first_row"] > position:
                    raise RuntimeError(f"staged rows of bulk request {origin_id} are missing")
                first_row, items = found["first_row"], decode_items(found["body"])
            stop = min(end, first_row + len(items))
            for item in items[position - first_row : stop - first_row]:
                if writer.add(item):
                    flush()
            position = stop
    flush()
    if written == 0:
        # retry_refusal found rows the latest member did not handle: the chain's
        # bookkeeping disagrees with itself. Roll back rather than create an empty retry.
        raise RuntimeError(f"the chain of bulk request {origin_id} has no rows to retry")
    tx.insert_retry_row_runs(child_id, runs.runs)
    tx.set_total_items(child_id, written)
    row["total_items"] = written
    return row
