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
from server.money import currency_exponent, format_major_units
from server.staging import StagedItem
from server.types import JSON, RowProblem

T = TypeVar("T")


@dataclass(slots=True)
class Batch:
    start_row: int
    # The staged rows (a validated batch: its records, which make a row error only when
    # another atomic request holds their external_id: see `source_item`).
    items: Sequence[StagedItem] | Sequence[ValidRecord]
    candidates: list[tuple[int, ValidRecord]] = field(default_factory=list)
    problems: list[tuple[int, RowProblem]] = field(default_factory=list)
    # A validated batch: its streams' keys by id, to rebuild a row's fields.
    stream_keys: dict[int, str] = field(default_factory=dict)


def validate_batch(
    start_row: int, items: Sequence[StagedItem], streams: dict[str, StreamRef]
) -> Batch:
    batch = Batch(start_row, items)
    for offset, (_line, fields, problem) in enumerate(items):
        if problem is not None:
            batch.problems.append((offset, RowProblem(*problem)))
            continue
        result = validate_row(fields, streams)
        if isinstance(result, RowProblem):
            batch.problems.append((offset, result))
        else:
            batch.candidates.append((offset, result))
    return batch


def validated_batch(
    start_row: int, records: Sequence[ValidRecord], streams: Mapping[str, StreamRef]
) -> Batch:
    """A batch of rows the accept proved valid (server/staging.py ValidatedRows): every
    row is a candidate, nothing is validated again. `streams`: those they were proved
    against."""
    keys = {ref.id: key for key, ref in streams.items()}
    return Batch(start_row, records, candidates=list(enumerate(records)), stream_keys=keys)


def source_item(batch: Batch, offset: int) -> StagedItem:
    """The staged row a row error keeps as its `source` (line, fields, problem).

    A validated row kept no text: the accept proved it ordinary (no metadata, plain
    amounts, every value stored as sent), so the fields it was sent with are rebuilt
    from its record, with the amount in the currency's decimals and the currency named.
    """
    item = batch.items[offset]
    if not isinstance(item, ValidRecord):
        return item
    exponent = currency_exponent(item.currency)
    assert exponent is not None  # a validated record's currency is a known one
    fields: JSON = {
        "data_stream_key": batch.stream_keys[item.data_stream_id],
        "date": item.date,
        "amount": format_major_units(item.amount_minor, exponent),
        "currency": item.currency,
    }
    if item.description is not None:
        fields["description"] = item.description
    if item.external_id is not None:
        fields["external_id"] = item.external_id
    return [None, fields, None]


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
