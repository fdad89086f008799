"""Unit tests of server/jobs/parsing.py: chunking, and a parse job run on the fast store.

The job runs against `Host`, a small real ParseHost (the module's Protocol): the real
store, flags a test sets, and the same fenced terminal transition as the worker pool.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.bulk_requests import submit_upload
from server.constants import PARSE_CHUNK_BYTES, PARSE_CHUNK_ROWS
from server.db.port import Storage as Store
from server.jobs.parsing import ParseHost, parse_upload, take_chunk
from server.models import BulkRequest
from server.staging import StagedItem
from server.types import JSON, SourceRow, Status
from tests.conftest import claim_next, make_environment, make_stream
from tests.db_access import store_upload, stored_uploads
from tests.nacha_builder import build, encode, sample_batches

WORKER = "unit-parser-1"
CSV_HEADER = b"date,data_stream_key,amount,external_id\n"


class Host:
    """What the parse job needs of the pool that runs it, and nothing more."""

    def __init__(self, store: Store, *, cancel: bool = False, stopping: bool = False) -> None:
        self._store = store
        self.cancel = cancel
        self._stopping = stopping
        self.finished: list[Status] = []
        self.staged_totals: list[int] = []  # total_items after each staged chunk

    @property
    def store(self) -> Store:
        return self._store

    @property
    def stopping(self) -> bool:
        return self._stopping

    def should_cancel(self, job: BulkRequest) -> bool:
        # The job asks after each chunk it staged: a place to watch its progress.
        self.staged_totals.append(job.total_items)
        return self.cancel

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
        # The same fenced terminal write as the worker pool's (event included).
        row = await self._store.finish_request(
            job,
            worker,
            status,
            error_message=error_message,
            error_details=error_details,
            keep_upload=keep_upload,
        )
        self.finished.append(status)
        return row


def _is_parse_host(host: Host) -> ParseHost:
    return host  # mypy checks Host against the Protocol here


async def claimed_upload(
    store: Store, path: Path, body: bytes, upload_format: str = "csv"
) -> tuple[int, BulkRequest]:
    """A stream, the upload stored, its request claimed by WORKER: (env, job)."""
    env = await make_environment(store)
    await make_stream(store, env)
    name = await store_upload(store, body, upload_format)
    await submit_upload(
        store,
        env,
        upload_format=upload_format,
        upload_path=name,
        filename=path.name,
        data_stream_key="bank",
        on_conflict="error",
        nacha_options=[] if upload_format == "nacha" else None,
        claim=None,
    )
    job = await claim_next(store, WORKER)
    assert job is not None
    return env, job


async def staged_chunks(store: Store, request_id: int) -> list[tuple[int, list[StagedItem]]]:
    """Every staged chunk of the request, in row order: (first row, its rows)."""
    chunks: list[tuple[int, list[StagedItem]]] = []
    row = 0
    while True:
        found = await store.get_chunk_at(request_id, row)
        if found is None or found.first_row + found.row_count <= row:
            return chunks
        items = found.items()
        assert len(items) == found.row_count
        chunks.append((found.first_row, items))
        row = found.first_row + found.row_count


async def upload_kept(store: Store, job: BulkRequest) -> bool:
    return job.upload_path in await stored_uploads(store)


def csv_rows(count: int) -> bytes:
    return CSV_HEADER + b"".join(f"2024-01-31,bank,{n}.00,e{n}\n".encode() for n in range(count))


# --- take_chunk ------------------------------------------------------------------------


def test_take_chunk_closes_a_chunk_at_the_row_limit() -> None:
    rows = iter([SourceRow({"n": n}) for n in range(2 * PARSE_CHUNK_ROWS + 3)])
    sizes = [len(take_chunk(rows)) for _ in range(4)]
    assert sizes == [PARSE_CHUNK_ROWS, PARSE_CHUNK_ROWS, 3, 0]


def test_take_chunk_closes_a_chunk_once_its_rows_hold_the_byte_limit() -> None:
    third = PARSE_CHUNK_BYTES // 3
    # Three rows of a third are one byte short; the fourth fills the chunk.
    rows = iter([SourceRow({"n": n}, size=third) for n in range(6)])
    first = take_chunk(rows)
    assert [r.fields["n"] for r in first] == [0, 1, 2, 3]
    assert [r.fields["n"] for r in take_chunk(rows)] == [4, 5]
    big = iter([SourceRow({"n": 0}, size=PARSE_CHUNK_BYTES), SourceRow({"n": 1})])
    assert len(take_chunk(big)) == 1  # one row at the byte limit is a chunk by itself


# --- parse_upload ----------------------------------------------------------------------


async def test_a_small_csv_is_staged_with_its_lines_and_the_file_removed(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "small.csv"
    body = CSV_HEADER + b"2024-01-31,bank,1.00,a\n2024-01-31,bank,2.00,b,extra\n"
    _env, job = await claimed_upload(store, path, body)
    host = Host(store)

    done = await parse_upload(_is_parse_host(host), job, WORKER)

    assert done is not None
    assert (done.total_items, done.parsing, done.status) == (2, 0, "processing")
    assert done.data_stream_id is not None  # one stream named: the request's
    [(first_row, items)] = await staged_chunks(store, job.id)
    assert first_row == 0
    assert items[0] == [
        2,
        {"date": "2024-01-31", "data_stream_key": "bank", "amount": "1.00", "external_id": "a"},
        None,
    ]
    line, _fields, problem = items[1]
    assert line == 3
    assert problem is not None  # the parser's own finding, staged for the worker to report
    assert not await upload_kept(store, job)
    assert host.finished == []


async def test_a_parse_stages_chunks_cut_by_the_row_limit(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.staging.PARSE_CHUNK_ROWS", 2)
    _env, job = await claimed_upload(store, tmp_path / "five.csv", csv_rows(5))

    done = await parse_upload(Host(store), job, WORKER)

    assert done is not None
    assert done.total_items == 5
    chunks = await staged_chunks(store, job.id)
    assert [(first, len(items)) for first, items in chunks] == [(0, 2), (2, 2), (4, 1)]
    assert [item[1]["external_id"] for _f, items in chunks for item in items] == [
        f"e{n}" for n in range(5)
    ]


async def test_a_small_nacha_file_stages_one_row_per_entry(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "sample.ach"
    _env, job = await claimed_upload(store, path, encode(build(sample_batches())), "nacha")

    done = await parse_upload(Host(store), job, WORKER)

    assert done is not None
    assert done.total_items == 5
    [(first_row, items)] = await staged_chunks(store, job.id)
    assert first_row == 0
    assert len(items) == 5
    line, fields, problem = items[0]
    assert line == 3  # file header, batch header, then the first entry
    assert problem is None
    assert fields["data_stream_key"] == "bank"
    assert (fields["amount"], fields["currency"]) == ("2500.00", "USD")
    assert fields["metadata"]["trace_number"] == "091000010000001"
    assert not await upload_kept(store, job)


async def test_a_rejected_file_leaves_nothing_staged(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks and small reads, so rows are staged (and committed) before the bad
    # bytes are even read.
    monkeypatch.setattr("server.staging.PARSE_CHUNK_ROWS", 2)
    monkeypatch.setattr("server.jobs.parsing.FILE_READ_BYTES", 64)
    path = tmp_path / "bad.csv"
    _env, job = await claimed_upload(store, path, csv_rows(6) + b"2024-01-31,bank,\xff\n")
    host = Host(store)

    assert await parse_upload(host, job, WORKER) is None

    assert host.finished == [Status.FAILED]
    assert host.staged_totals == [2, 4, 6]
    assert await staged_chunks(store, job.id) == []
    row = await store.get_bulk_request(job.environment_id, job.id)
    assert row is not None
    assert row.status == "failed"
    assert row.error_message
    assert not await upload_kept(store, job)


async def test_a_cancelled_parse_discards_what_it_staged(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "cancel.csv"
    _env, job = await claimed_upload(store, path, csv_rows(3))
    host = Host(store, cancel=True)

    assert await parse_upload(host, job, WORKER) is None

    assert host.finished == [Status.CANCELLED]
    assert host.staged_totals == [3]  # it had staged the rows before it stopped
    assert await staged_chunks(store, job.id) == []


async def test_a_stopped_parse_resumes_staging_only_the_rows_it_had_not(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.staging.PARSE_CHUNK_ROWS", 2)
    path = tmp_path / "resume.csv"
    _env, job = await claimed_upload(store, path, csv_rows(5))

    # Shutting down: one chunk staged, then the request is given back.
    assert await parse_upload(Host(store, stopping=True), job, WORKER) is None
    assert [(f, len(i)) for f, i in await staged_chunks(store, job.id)] == [(0, 2)]
    assert await upload_kept(store, job)

    resumed = await claim_next(store, WORKER)
    assert resumed is not None
    assert resumed.id == job.id
    assert resumed.total_items == 2
    done = await parse_upload(Host(store), resumed, WORKER)

    assert done is not None
    assert done.total_items == 5
    chunks = await staged_chunks(store, job.id)
    assert [(first, len(items)) for first, items in chunks] == [(0, 2), (2, 2), (4, 1)]
    assert [item[1]["external_id"] for _f, items in chunks for item in items] == [
        f"e{n}" for n in range(5)
    ]
