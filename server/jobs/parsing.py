"""The parsing phase of an upload: file → staged rows, inside a worker.

Rows are staged in chunks, each chunk one transaction that also writes the heartbeat
(`total_items` so far), so parsing shows progress, honours cancellation and survives a
crash: a resumed parse re-reads the file but stages only rows it had not staged yet.
Nothing reaches the records table until the whole file has parsed; a file rejected as
a whole (bad structure, undecodable) leaves no rows behind.

A CSV row is validated once, here: the rows of a CSV file (on_conflict=skip) that
server/ingest/fast_csv.py proves ordinary are staged as their records (CHECKED_V1
chunks, server/staging.py), which the worker binds without validating them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator, Iterator, Sequence
from typing import Protocol, TypeVar

from server.constants import FILE_READ_BYTES
from server.db.port import Storage, UploadSource
from server.ingest.csv_options import CsvOptions
from server.ingest.csv_reader import iter_csv_rows, iter_csv_rows_lean
from server.ingest.fast_csv import csv_record
from server.ingest.lean_csv import LeanRow
from server.ingest.nacha import iter_nacha_rows
from server.ingest.nacha_codes import NachaOption
from server.ingest.validation import StreamRef, ValidRecord
from server.models import BulkRequest
from server.staging import ChunkFill, StagedItem, encode_checked, encode_items
from server.types import JSON, FileRejected, ParseReport, SourceRow, Status


class ParseHost(Protocol):
    """What the parse job needs from the pool that runs it (WorkerPool is one)."""

    @property
    def store(self) -> Storage: ...

    @property
    def stopping(self) -> bool:
        """The process is shutting down: give the request back, it resumes on restart."""
        ...

    def should_cancel(self, job: BulkRequest) -> bool: ...

    async def finish(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> BulkRequest:
        """The fenced terminal transition, logged and published."""
        ...


log = logging.getLogger("server.parsing")

# A row as the readers yield it: a plain CSV file's rows come lean (server/ingest/lean_csv.py).
ParsedRow = SourceRow | LeanRow
R = TypeVar("R", SourceRow, LeanRow, ParsedRow)


def _file_rows(
    job: BulkRequest, source: UploadSource, report: ParseReport
) -> Generator[ParsedRow, None, None]:
    data_stream_key = job.default_data_stream_key
    chunks = iter(lambda: source.read(FILE_READ_BYTES), b"")
    if job.upload_format == "nacha":
        if not data_stream_key:
            raise FileRejected("data_stream_key is required for NACHA files")
        # Names were checked at upload; a name a later version dropped fails loudly.
        options = [NachaOption(name) for name in job.nacha_options or ()]
        yield from iter_nacha_rows(
            chunks, data_stream_key=data_stream_key, report=report, options=options
        )
    else:
        # A provable file's plain rows come lean (cells, not fields): stage_block proves
        # them from their cells, or makes them the SourceRow they stand for.
        read = iter_csv_rows_lean if _lean(job) else iter_csv_rows
        yield from read(
            chunks,
            data_stream_key=data_stream_key,
            options=CsvOptions.from_stored(job.csv_options),
            report=report,
        )


def take_chunk(rows: Iterator[R]) -> list[R]:
    """The next chunk: PARSE_CHUNK_ROWS rows, or fewer once they hold PARSE_CHUNK_BYTES
    (ChunkFill's rule, counted inline: this runs once per row)."""
    max_rows, max_bytes = ChunkFill.limits()
    block: list[R] = []
    append = block.append
    size = 0
    for row in rows:
        append(row)
        size += row.size
        if len(block) >= max_rows or size >= max_bytes:
            break
    return block


def _staged(row: SourceRow) -> StagedItem:
    problem = row.problem
    return [
        row.line,
        row.fields,
        [problem.code, problem.message, problem.pointer] if problem else None,
    ]


def _take_chunk_and_keys(rows: Iterator[ParsedRow]) -> tuple[list[ParsedRow], set[str]]:
    """The next chunk and the stream keys its rows name (one hop off the event loop)."""
    block = take_chunk(rows)
    keys: set[str] = set()
    for row in block:
        key = (
            row.layout.stream_key(row.values)
            if isinstance(row, LeanRow)
            else row.fields.get("data_stream_key")
        )
        if isinstance(key, str):
            keys.add(key)
    return block, keys


def stage_block(rows: Sequence[ParsedRow], streams: dict[str, StreamRef] | None) -> bytes:
    """The chunk of `rows`: with `streams` (a CSV file, on_conflict=skip) each row the
    parse can prove ordinary is staged as its record (server/ingest/lean_csv.py from a
    lean row's cells, else server/ingest/fast_csv.py from its fields), so the worker
    only binds it; otherwise, and when it proves none, JSON as ever."""
    if streams:
        records: list[ValidRecord] = []
        lines: list[int | None] = []
        others: list[tuple[int, StagedItem]] = []
        for offset, row in enumerate(rows):
            if type(row) is LeanRow:
                record = row.layout.record(row.values, streams)
                if record is not None:
                    records.append(record)
                    lines.append(row.line)
                    continue
                row = row.layout.source_row(row)
            assert isinstance(row, SourceRow)
            record = None if row.problem else csv_record(row.fields, streams)
            if record is None:
                others.append((offset, _staged(row)))
            else:
                records.append(record)
                lines.append(row.line)
        if records:
            return encode_checked(streams, records, lines, others)
    return encode_items([_staged(_source_row(r)) for r in rows])


def _source_row(row: ParsedRow) -> SourceRow:
    return row.layout.source_row(row) if isinstance(row, LeanRow) else row


def _lean(job: BulkRequest) -> bool:
    """Whether the parse reads the file's plain rows lean: only when it proves rows."""
    return _provable(job)


def _provable(job: BulkRequest) -> bool:
    """Whether the parse stages proved records: CSV files, on_conflict=skip (a proved
    row keeps no text for a duplicate_external_id row's source, as in the accept)."""
    return job.upload_format != "nacha" and job.on_conflict == "skip"


async def parse_upload(pool: ParseHost, job: BulkRequest, worker: str) -> BulkRequest | None:
    """Stage every row of the job's file; the updated job, or None when it ended here."""
    store = pool.store
    upload_name: str = job.upload_path or ""
    already_staged = job.total_items
    report = ParseReport()
    try:
        source = await store.open_upload(upload_name)
    except FileNotFoundError:
        await _discard_staged(pool, job)
        await pool.finish(
            job,
            worker,
            Status.FAILED,
            keep_upload=False,
            error_message="the uploaded file is no longer on disk",
        )
        return None
    rows = _file_rows(job, source, report)
    keys: set[str] = set()
    # The environment's streams the rows name, looked up as new keys appear (None: rows
    # are staged as JSON, validated by the worker).
    streams: dict[str, StreamRef] | None = {} if _provable(job) else None
    position = 0
    try:
        while True:
            # Parsing is CPU work: run it off the event loop so the API stays responsive.
            block, block_keys = await asyncio.to_thread(_take_chunk_and_keys, rows)
            if not block:
                break
            keys |= block_keys
            fresh = block[max(0, already_staged - position) :]
            position += len(block)
            if not fresh:
                continue
            if streams is not None and not block_keys <= streams.keys():
                # Streams never change or disappear: a found one holds for the whole file,
                # and an unknown key is asked again (the worker decides its rows).
                streams.update(
                    await store.find_data_streams(job.environment_id, block_keys - streams.keys())
                )
            body = await asyncio.to_thread(stage_block, fresh, streams)
            first = position - len(fresh)
            job = await store.record_parse_progress(
                job, worker, (first, len(fresh), body), position
            )
            if pool.should_cancel(job):
                await _discard_staged(pool, job)
                await pool.finish(job, worker, Status.CANCELLED)
                return None
            if pool.stopping:
                # Shutting down mid-parse: give the request back; it resumes on restart.
                await store.release_request(job, worker)
                return None
    except FileRejected as exc:
        await _discard_staged(pool, job)
        await pool.finish(
            job,
            worker,
            Status.FAILED,
            error_message=exc.message,
            error_details={"file": exc.details},
            keep_upload=False,
        )
        await store.delete_upload(upload_name)
        return None
    finally:
        rows.close()
        source.close()

    stream_id = None
    if len(keys) == 1:
        found = await store.find_data_streams(job.environment_id, keys)
        stream_id = next(iter(found.values())).id if found else None
    details = {k: v for k, v in (("warnings", report.warnings), ("notes", report.notes)) if v}

    done = await store.finish_parsing(
        job,
        worker,
        total_items=position,
        data_stream_id=stream_id,
        error_details=details or None,
    )
    await store.delete_upload(upload_name)
    return done


async def _discard_staged(pool: ParseHost, job: BulkRequest) -> None:
    await pool.store.discard_staged_rows(job.id)


async def remove_unreferenced_uploads(store: Storage) -> int:
    """At start: delete uploads no request needs (a crash between commit and delete, or
    an upload cut off mid-stream)."""
    removed = await store.delete_unreferenced_uploads()
    if removed:
        log.info("removed %d unreferenced upload(s)", removed)
    return removed
