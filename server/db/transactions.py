"""Every write operation of the storage port, once: `async def` functions of a `Tx`.

Each is one transaction body; server/db/writes.py picks it for a port operation and
the adapter's `transaction` runs it: SQLite's `Store` on its writer thread in one
`BEGIN IMMEDIATE` hop, through the never-suspending `AsyncWriteTx` and
server/db/drive.py's `run_to_completion` (server/db/sqlite/store.py), PostgreSQL's
`PostgresStorage` awaiting it on a pooled connection (server/db/postgres/storage.py).
A change to what an operation does lands here, for both.

What they decide comes from the domain's pure functions (server/rules.py,
server/chains.py, server/batches.py). Where several PostgreSQL processes change what one
SQLite writer serialized, a step says so (a lock per Idempotency-Key, a row lock on a
chain's origin, a second look for reserved external_ids): `Tx` (server/db/tx_port.py)
has them on both, doing nothing on SQLite. A body never awaits anything but its `tx`:
on SQLite it must not suspend.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from server.batches import (
    Batch,
    atomic_failure_message,
    candidate_pairs,
    external_id_of,
    source_item,
    split_duplicates,
    withhold_reserved,
)
from server.chains import RowRun, RunBuilder, chain_coverage
from server.db.payload import stored_nacha_options
from server.db.port import (
    CancelOutcome,
    Conflict,
    FencedOut,
    IdempotencyClaim,
    IdempotencyMismatch,
    NewUpload,
)
from server.db.tx_port import Tx
from server.models import BulkRequest, ChainMember, DataStream
from server.outcomes import Transition, terminal_transition
from server.rules import cancel_refusal, retry_refusal
from server.scheduling import run_at_text
from server.staging import (
    ChunkWriter,
    EncodedChunk,
    StagedItem,
    ValidatedRows,
    ValidatedWriter,
    decode_chunk,
)
from server.types import JSON, Mode, RowProblem, Source, Status

# --- client-facing ------------------------------------------------------------------------


async def _replay(
    tx: Tx, environment_id: int, claim: IdempotencyClaim | None
) -> BulkRequest | None:
    if claim is None:
        return None
    # Two processes sending the same key at once: the second waits here for the first's
    # commit and replays its request (exactly one request per key).
    await tx.lock_idempotency_key(environment_id, claim.key)
    seen = await tx.get_idempotency_key(environment_id, claim.key)
    if seen is None:
        return None
    if seen["fingerprint"] != claim.fingerprint:
        raise IdempotencyMismatch(claim.key)
    row = await tx.get_bulk_request(environment_id, seen["bulk_request_id"])
    assert row is not None
    return row


async def _save_claim(
    tx: Tx, environment_id: int, claim: IdempotencyClaim | None, request_id: int
) -> None:
    if claim is not None:
        await tx.save_idempotency_key(environment_id, claim.key, claim.fingerprint, request_id)


async def create_records_request(
    tx: Tx,
    environment_id: int,
    on_conflict: str,
    mode: Mode,
    total_items: int,
    chunks: Sequence[EncodedChunk],
    data_stream_key: str | None,
    claim: IdempotencyClaim | None,
    run_at: datetime | None,
) -> tuple[BulkRequest, bool]:
    replayed = await _replay(tx, environment_id, claim)
    if replayed is not None:
        return replayed, True
    stream: DataStream | None = None
    if data_stream_key is not None:
        stream = await tx.get_data_stream(environment_id, data_stream_key)
    row = await tx.insert_bulk_request(
        environment_id=environment_id,
        source=Source.BULK_API,
        on_conflict=on_conflict,
        mode=mode,
        total_items=total_items,
        data_stream_id=stream.id if stream else None,
        run_at=run_at_text(run_at),
    )
    for first_row, row_count, body in chunks:
        await tx.insert_chunk(row.id, first_row, row_count, body)
    await _save_claim(tx, environment_id, claim, row.id)
    row = dataclasses.replace(
        row, data_stream_key=stream.key if stream else None, has_data_stream_key=True
    )
    await tx.emit(row, Transition.CREATED)
    return row, False


async def create_upload_request(
    tx: Tx, environment_id: int, upload: NewUpload, claim: IdempotencyClaim | None
) -> tuple[BulkRequest, bool]:
    replayed = await _replay(tx, environment_id, claim)
    if replayed is not None:
        return replayed, True
    # Complete in the request's transaction: the sweep never sees it unreferenced.
    if not await tx.complete_upload(upload.upload_path):
        raise RuntimeError(f"upload {upload.upload_path!r} is not stored")
    row = await tx.insert_bulk_request(
        environment_id=environment_id,
        source=Source(upload.upload_format),
        on_conflict=upload.on_conflict,
        mode=upload.mode,
        parsing=1,
        upload_format=upload.upload_format,
        upload_path=upload.upload_path,
        filename=upload.filename,
        default_data_stream_key=upload.data_stream_key,
        nacha_options=upload.nacha_options,
        csv_options=upload.csv_options,
        run_at=run_at_text(upload.run_at),
    )
    await _save_claim(tx, environment_id, claim, row.id)
    row = dataclasses.replace(row, data_stream_key=None, has_data_stream_key=True)
    await tx.emit(row, Transition.CREATED)
    return row, False


async def cancel_request(
    tx: Tx, environment_id: int, request_id: int
) -> tuple[BulkRequest, CancelOutcome] | None:
    row = await tx.get_bulk_request(environment_id, request_id)
    if row is None:
        return None
    refusal = cancel_refusal(row)
    if refusal is not None:
        raise Conflict(refusal)
    status = row.status
    if status == "cancelled":
        return row, CancelOutcome.UNCHANGED
    # A pending request, or a processing one no worker holds right now, has no batch
    # in flight and is cancelled at once; otherwise the holder stops at its heartbeat.
    stopped_now = status == "pending" and await tx.cancel_pending(environment_id, request_id)
    if stopped_now or await tx.cancel_unclaimed_processing(environment_id, request_id):
        outcome = CancelOutcome.CANCELLED
    else:
        await tx.request_cancellation(environment_id, request_id)
        outcome = CancelOutcome.REQUESTED
    updated = await tx.get_bulk_request(environment_id, request_id)
    assert updated is not None
    if outcome is CancelOutcome.CANCELLED:
        await tx.emit(updated, Transition.CANCELLED, by="api")
    else:
        await tx.emit(updated, Transition.CANCEL_REQUESTED)
    return updated, outcome


async def create_retry(
    tx: Tx, environment_id: int, request_id: int, claim: IdempotencyClaim | None
) -> tuple[BulkRequest, bool] | None:
    """Decided and created in one write transaction, so concurrent retries (of any
    members) and cancels are serialized: no chain ever gets two live children."""
    replayed = await _replay(tx, environment_id, claim)
    if replayed is not None:
        return replayed, True
    chain = await tx.list_chain(environment_id, request_id)
    if not chain:
        return None
    # Concurrent retries or cancels of any members of one chain, from any process, queue
    # on its origin's row lock; the chain is read again under the lock.
    await tx.lock_request(chain[0].id)
    chain = await tx.list_chain(environment_id, request_id)
    refusal = retry_refusal(request_id, [ChainMember.of(member) for member in chain])
    if refusal is not None:
        raise Conflict(refusal)
    latest = chain[-1]
    common: dict[str, Any] = {
        "environment_id": environment_id,
        "source": Source.RETRY,
        "on_conflict": latest.on_conflict,
        # An atomic chain stays atomic; its failed members stored nothing (chain_coverage),
        # so its retry holds every row again.
        "mode": latest.mode,
        "filename": latest.filename,
        "data_stream_id": latest.data_stream_id,
        "parent_bulk_request_id": latest.id,
        # A retry parses (or holds rows parsed) under the chain's relaxations.
        "nacha_options": stored_nacha_options(latest.nacha_options),
        # …and its CSV options (SPEC §15): a retry of an unparsed file reads it the same way.
        "csv_options": latest.csv_options,
    }
    if latest.parsing:
        row = await _retry_unparsed_upload(tx, latest, common)
    else:
        row = await _retry_rows(tx, chain, common)
    await _save_claim(tx, environment_id, claim, row.id)
    row = dataclasses.replace(row, data_stream_key=latest.data_stream_key, has_data_stream_key=True)
    await tx.emit(row, Transition.CREATED)
    return row, False


async def _retry_unparsed_upload(
    tx: Tx, latest: BulkRequest, common: dict[str, Any]
) -> BulkRequest:
    # The chain stopped before its file was parsed (so it stored nothing): the child
    # parses the same file (retry_refusal checked that the file is still there).
    row = await tx.insert_bulk_request(
        **common,
        parsing=1,
        upload_format=latest.upload_format,
        upload_path=latest.upload_path,
        default_data_stream_key=latest.default_data_stream_key,
    )
    await tx.hand_over_upload(latest.id)
    return row


async def _retry_rows(tx: Tx, chain: Sequence[BulkRequest], common: dict[str, Any]) -> BulkRequest:
    # Members still parsing their file when they ended staged no rows; the first member
    # that staged rows is the origin, the later ones are retries of its rows.
    staged = [ChainMember.of(member) for member in chain if not member.parsing]
    origin_id = staged[0].id
    error_rows = {member.id: await tx.row_error_rows(member.id) for member in staged}
    recorded: dict[int, list[RowRun]] = {
        member.id: await tx.retry_row_runs(member.id) for member in staged[1:]
    }
    coverage = chain_coverage(staged, error_rows, recorded)
    row = await tx.insert_bulk_request(**common)
    child_id = row.id
    runs = RunBuilder()
    # Chunks close by the same rule as parsing (a buffer of 2000 rows of 64 KiB peaked
    # at 537 MB).
    writer = ChunkWriter()
    # Rows the origin staged validated are copied validated (never re-validated: streams
    # never change); a chunk holds one encoding, so switching flushes the other writer.
    validated = ValidatedWriter()
    written = 0

    async def flush() -> None:
        nonlocal written
        for filled in (writer, validated):
            if filled.rows:
                row_count, body = filled.take()
                await tx.insert_chunk(child_id, written, row_count, body)
                written += row_count

    # The child holds the rows in the origin's order, copied from the origin's chunks
    # (kept until a request completes, and no member of a retried chain has).
    # One origin chunk is decoded at a time, once, however many gaps fall into it.
    first_row = 0
    rows: list[StagedItem] | ValidatedRows = []
    for start, end in coverage.gaps():
        runs.add(start, end)
        position = start
        while position < end:
            if not first_row <= position < first_row + _row_count(rows):
                found = await tx.next_chunk_from(origin_id, position)
                if found is None or found["first_row"] > position:
                    raise RuntimeError(f"staged rows of bulk request {origin_id} are missing")
                first_row, rows = found["first_row"], decode_chunk(found["body"])
            stop = min(end, first_row + _row_count(rows))
            if isinstance(rows, list):
                if validated.rows:
                    await flush()
                for item in rows[position - first_row : stop - first_row]:
                    if writer.add(item):
                        await flush()
            else:
                if writer.rows:
                    await flush()
                for record in rows.records[position - first_row : stop - first_row]:
                    if validated.add(record, rows.streams):
                        await flush()
            position = stop
    await flush()
    if written == 0:
        # retry_refusal found rows the latest member did not handle: the chain's
        # bookkeeping disagrees with itself. Roll back rather than create an empty retry.
        raise RuntimeError(f"the chain of bulk request {origin_id} has no rows to retry")
    await tx.insert_retry_row_runs(child_id, runs.runs)
    await tx.set_total_items(child_id, written)
    return dataclasses.replace(row, total_items=written)


def _row_count(rows: list[StagedItem] | ValidatedRows) -> int:
    return len(rows) if isinstance(rows, list) else len(rows.records)


# --- the worker side ------------------------------------------------------------------------


async def claim_next_request(tx: Tx, worker: str, sliced: frozenset[int]) -> BulkRequest | None:
    job = await tx.claim_next_request(worker)
    if job is not None:
        await tx.emit(
            job,
            Transition.RESUMED if job.attempt > 1 else Transition.CLAIMED,
            log_level=logging.DEBUG if job.id in sliced else logging.INFO,
            worker=worker,
            next_row=job.next_row,
        )
    return job


async def commit_batch(
    tx: Tx,
    job: BulkRequest,
    worker: str,
    batch: Batch,
    candidates: list[tuple[Any, ...]],
) -> BulkRequest:
    """`candidates`: the batch's candidates as insert rows, shaped before the transaction."""
    request_id = job.id
    start = batch.start_row
    problems = list(batch.problems)
    # Hidden records of another atomic request hold these external_ids: refused whatever
    # on_conflict says, as neither storing (a duplicate if that request completes) nor
    # skipping (a lost row if it fails) is safe. The row can be retried once it has ended.
    others_hidden = await tx.others_unpublished(request_id)
    if others_hidden:
        reserved = await tx.find_reserved_external_ids(request_id, candidate_pairs(batch))
        if reserved:
            candidates = withhold_reserved(batch, candidates, reserved, problems)
    if job.on_conflict == "skip":
        # The unique index decides; only the count of skipped rows is needed.
        inserted = await tx.insert_records_skipping_duplicates(candidates) if candidates else 0
        skipped = len(candidates) - inserted
        if others_hidden and skipped:
            # On PostgreSQL another process's atomic batch may have held an external_id
            # uncommitted when we looked: ON CONFLICT waited for its commit and skipped
            # the row. Looked up again, such a row is external_id_reserved, not a skip.
            late = await tx.find_reserved_external_ids_again(request_id, candidate_pairs(batch))
            if late:
                held = len(batch.candidates)
                withhold_reserved(batch, candidates, late, problems)
                skipped -= held - len(batch.candidates)
    else:
        pairs = candidate_pairs(batch)
        existing = await tx.find_existing_external_ids(pairs) if pairs else set()
        inserts = split_duplicates(batch, candidates, existing, problems)
        if inserts:
            await tx.insert_records(inserts)
        inserted, skipped = len(inserts), 0
    if problems:
        await tx.insert_row_errors(_row_errors(request_id, batch, problems))
    updated = await tx.record_batch(
        job,
        worker,
        next_row=start + len(batch.items),
        successful=inserted,
        failed=len(problems),
        skipped=skipped,
    )
    if updated is None:
        raise FencedOut(request_id)
    if updated.status == "completed" and updated.unpublished:
        # An atomic request's last batch, with failed rows: it fails, storing nothing
        # (its records stay hidden; the sweeper purges them). Its staged rows are kept
        # for a retry.
        failed = await tx.fail_atomic_request(request_id, atomic_failure_message(updated))
        assert failed is not None
        await tx.emit(failed, Transition.FAILED, error=failed.error_message)
        return failed
    if updated.status == "completed":
        await tx.delete_chunks(request_id)
        await tx.emit(updated, Transition.COMPLETED)
    else:
        await tx.emit(updated, Transition.PROGRESS)
    return updated


def _row_errors(
    request_id: int, batch: Batch, problems: Sequence[tuple[int, RowProblem]]
) -> list[tuple[Any, ...]]:
    start = batch.start_row
    errors = []
    for offset, p in problems:
        line, fields, _problem = item = source_item(batch, offset)
        errors.append(
            (
                request_id,
                start + offset,
                line,
                external_id_of(fields),
                p.code,
                p.message,
                f"/records/{start + offset}{p.pointer}",
                orjson.dumps(item).decode(),
            )
        )
    return errors


def _keeping_stream_key(updated: BulkRequest, job: BulkRequest) -> BulkRequest:
    """A write's returned row (no join) with the stream key the job was read with."""
    return dataclasses.replace(
        updated,
        data_stream_key=job.data_stream_key,
        has_data_stream_key=job.has_data_stream_key,
    )


async def release_request(tx: Tx, job: BulkRequest, worker: str) -> None:
    released = await tx.release_request(job, worker)
    if released is not None:
        await tx.emit(_keeping_stream_key(released, job), Transition.RELEASED)


async def finish_request(
    tx: Tx,
    job: BulkRequest,
    worker: str,
    status: Status,
    error_message: str | None,
    error_details: JSON | None,
    keep_upload: bool,
) -> BulkRequest:
    row = await tx.finish_request(
        job,
        worker,
        status,
        error_message=error_message,
        error_details=error_details,
        keep_upload=keep_upload,
    )
    if row is None:
        raise FencedOut(job.id)
    extra: dict[str, Any] = {"error": error_message} if error_message else {}
    await tx.emit(row, terminal_transition(status), **extra)
    return row


async def purge_hidden_records(tx: Tx, limit: int) -> int | None:
    """Delete up to `limit` hidden records of one failed or cancelled atomic request;
    its id, or None when none has any left. Once a pass deletes fewer than `limit`, its
    last record is gone: it is marked purged, with an event (a retry of it may run now)."""
    request_id = await tx.next_request_to_purge()
    if request_id is None:
        return None
    if await tx.purge_request_records(request_id, limit) < limit:
        row = await tx.mark_purged(request_id)
        assert row is not None
        await tx.emit(row, Transition.RECORDS_PURGED)
    return request_id


async def record_parse_progress(
    tx: Tx, job: BulkRequest, worker: str, chunk: EncodedChunk, total_items: int
) -> BulkRequest:
    first_row, row_count, body = chunk
    await tx.insert_chunk(job.id, first_row, row_count, body)
    progress = await tx.record_parse_progress(job, worker, total_items)
    if progress is None:
        raise FencedOut(job.id)
    # The job keeps what the claim read with it (the joined stream key) under the new state.
    job = _keeping_stream_key(progress, job)
    await tx.emit(job, Transition.PARSE_PROGRESS)
    return job


async def finish_parsing(
    tx: Tx,
    job: BulkRequest,
    worker: str,
    total_items: int,
    data_stream_id: int | None,
    error_details: JSON | None,
) -> BulkRequest:
    done = await tx.finish_parsing(
        job,
        worker,
        total_items=total_items,
        data_stream_id=data_stream_id,
        error_details=error_details,
    )
    if done is None:
        raise FencedOut(job.id)
    await tx.emit(done, Transition.PARSED, rows=total_items)
    return done


async def requeue_orphans(
    tx: Tx, live_workers: Iterable[str], reason: str, stale_before: str | None
) -> list[int]:
    """Claims held by workers no longer alive, and (`stale_before`: PostgreSQL) any
    process's claim whose heartbeat is older (its process died or hangs)."""
    ids = await tx.requeue_orphaned_claims(sorted(set(live_workers)), reason, stale_before)
    for request_id in ids:
        # Rare (a dead process or task): one read each for the event's row.
        row = await tx.get_bulk_request_any_environment(request_id)
        if row is not None:
            await tx.emit(row, Transition.REQUEUED, log_level=logging.WARNING, reason=reason)
    return ids
