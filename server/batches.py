"""One batch of rows: validate it, and the pure rules of how its transaction writes it.

A storage adapter's `commit_batch` (server/db/port.py) inserts the records, records the
row errors, advances the counters and the checkpoint and writes the heartbeat, all
fenced by the worker's claim, so a batch is either wholly applied exactly once or not
at all. What it decides — which candidates are duplicates to report, which external_id
a row error keeps — is decided here, the same for every adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.ingest.validation import StreamRef, ValidRecord, validate_row
from server.models import BulkRequest
from server.staging import StagedItem, record_source
from server.types import RowProblem

T = TypeVar("T")


@dataclass(slots=True)
class Batch:
    start_row: int
    # The staged rows (a validated or checked batch: records among them, which make a
    # row error only when another atomic request holds their external_id: see
    # `source_item`).
    items: Sequence[StagedItem | ValidRecord]
    candidates: list[tuple[int, ValidRecord]] = field(default_factory=list)
    problems: list[tuple[int, RowProblem]] = field(default_factory=list)
    # A batch holding records: their streams' keys by id, to rebuild a row's fields.
    stream_keys: dict[int, str] = field(default_factory=dict)
    # A checked batch (a parsed file's): each row's line, for a record's row error.
    lines: Sequence[int | None] = ()


def _validate_item(
    batch: Batch, offset: int, item: StagedItem, streams: dict[str, StreamRef]
) -> None:
    _line, fields, problem = item
    if problem is not None:
        batch.problems.append((offset, RowProblem(*problem)))
        return
    result = validate_row(fields, streams)
    if isinstance(result, RowProblem):
        batch.problems.append((offset, result))
    else:
        batch.candidates.append((offset, result))


def validate_batch(
    start_row: int, items: Sequence[StagedItem], streams: dict[str, StreamRef]
) -> Batch:
    batch = Batch(start_row, items)
    for offset, item in enumerate(items):
        _validate_item(batch, offset, item, streams)
    return batch


def validated_batch(
    start_row: int, records: Sequence[ValidRecord], streams: Mapping[str, StreamRef]
) -> Batch:
    """A batch of rows the accept proved valid (server/staging.py ValidatedRows): every
    row is a candidate, nothing is validated again. `streams`: those they were proved
    against."""
    keys = {ref.id: key for key, ref in streams.items()}
    return Batch(start_row, records, candidates=list(enumerate(records)), stream_keys=keys)


def checked_batch(
    start_row: int,
    rows: Sequence[ValidRecord | StagedItem],
    lines: Sequence[int | None],
    proved: Mapping[str, StreamRef],
    streams: dict[str, StreamRef],
) -> Batch:
    """A batch of a parsed file's rows (server/staging.py CheckedRows): a record the
    parse proved (against `proved`) is a candidate as it is, any other row is validated
    against `streams` as in validate_batch."""
    keys = {ref.id: key for key, ref in proved.items()}
    batch = Batch(start_row, rows, stream_keys=keys, lines=lines)
    candidates = batch.candidates
    for offset, row in enumerate(rows):
        if isinstance(row, ValidRecord):  # a tuple; a staged item is a list
            candidates.append((offset, row))
        else:
            _validate_item(batch, offset, row, streams)
    return batch


def source_item(batch: Batch, offset: int) -> StagedItem:
    """The staged row a row error keeps as its `source` (line, fields, problem).

    A record kept no text: the accept (or the parse) proved it ordinary (no metadata,
    plain amounts, every value stored as sent), so the fields it was sent with are
    rebuilt from it (server/staging.py record_source), with its line when it has one.
    """
    item = batch.items[offset]
    if not isinstance(item, ValidRecord):
        return item
    line = batch.lines[offset] if batch.lines else None
    return record_source(item, batch.stream_keys[item.data_stream_id], line)


def stream_keys_of(items: Sequence[StagedItem]) -> set[str]:
    keys: set[str] = set()
    for _line, fields, _problem in items:
        if isinstance(fields, dict):
            key = fields.get("data_stream_key")
            if isinstance(key, str):
                keys.add(key)
    return keys


def external_id_of(fields: Any) -> str | None:
    """The external_id a row error keeps for a staged row's fields."""
    value = fields.get("external_id") if isinstance(fields, dict) else None
    # Like records (validation refuses a NUL in external_id), row errors hold no NUL in
    # this column; the row's `source` keeps the original id whole.
    return value if isinstance(value, str) and "\x00" not in value else None


def candidate_pairs(batch: Batch) -> list[tuple[int, str]]:
    """The (data_stream_id, external_id) pairs the batch's candidates would take."""
    return [
        (rec.data_stream_id, rec.external_id)
        for _o, rec in batch.candidates
        if rec.external_id is not None
    ]


def split_duplicates(
    batch: Batch,
    rows: Sequence[T],
    existing: set[tuple[int, str]],
    problems: list[tuple[int, RowProblem]],
) -> list[T]:
    """on_conflict=error: which candidates to insert, given the pairs already stored.

    `rows` are the candidates as the adapter inserts them (one per candidate, in order).
    A candidate whose (stream, external_id) is stored, or taken earlier in this batch,
    becomes a duplicate_external_id problem appended to `problems`; the rest are returned.
    """
    seen = set(existing)
    inserts: list[T] = []
    for (offset, rec), row in zip(batch.candidates, rows, strict=True):
        if rec.external_id is not None:
            pair = (rec.data_stream_id, rec.external_id)
            if pair in seen:
                problems.append(
                    (
                        offset,
                        RowProblem(
                            "duplicate_external_id",
                            f"a record with external_id {rec.external_id!r} already exists "
                            "in this data stream",
                            "/external_id",
                        ),
                    )
                )
                continue
            seen.add(pair)
        inserts.append(row)
    return inserts


def withhold_reserved(
    batch: Batch,
    rows: Sequence[T],
    reserved: set[tuple[int, str]],
    problems: list[tuple[int, RowProblem]],
) -> list[T]:
    """Candidates whose (stream, external_id) hidden records of another atomic request
    hold (SPEC §14) become external_id_reserved problems, whatever on_conflict says; the
    batch keeps the other candidates, and their rows are returned (aligned with them)."""
    kept: list[tuple[int, ValidRecord]] = []
    kept_rows: list[T] = []
    for (offset, rec), row in zip(batch.candidates, rows, strict=True):
        if rec.external_id is not None and (rec.data_stream_id, rec.external_id) in reserved:
            problems.append(
                (
                    offset,
                    RowProblem(
                        "external_id_reserved",
                        f"external_id {rec.external_id!r} is held by an atomic bulk request "
                        "of this data stream that has not completed; retry this row once "
                        "that request has ended",
                        "/external_id",
                    ),
                )
            )
            continue
        kept.append((offset, rec))
        kept_rows.append(row)
    batch.candidates = kept
    return kept_rows


def atomic_failure_message(request: BulkRequest) -> str:
    """The error_message of an atomic request that ended with failed rows (SPEC §14)."""
    return (
        f"atomic request: {request.failed_items} of {request.total_items} rows failed, so no "
        f"record of it was stored; the failed rows are at "
        f"/v1/bulk_requests/{request.id}/errors"
    )
