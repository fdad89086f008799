"""One claim's batches: the staged chunk they come from, decoded once and sliced, and
the streams they name, from the app's StreamCache (asked of the database only for a key
it does not know yet). A worker (server/jobs/worker.py) asks for the batch at a row,
possibly while the batch before it commits (its pipeline)."""

from __future__ import annotations

from collections.abc import Collection

from server.batches import Batch, checked_batch, stream_keys_of, validate_batch, validated_batch
from server.db.port import Storage
from server.ingest.fast_records import decode_fast_body, every_record, stream_keys
from server.ingest.validation import StreamRef
from server.models import BulkRequest
from server.staging import CheckedRows, RawBody, StagedItem, ValidatedRows, precise_items
from server.stream_cache import StreamCache

ChunkRows = list[StagedItem] | ValidatedRows | CheckedRows


def _row_count(rows: ChunkRows) -> int:
    if isinstance(rows, list):
        return len(rows)
    return len(rows.records) if isinstance(rows, ValidatedRows) else len(rows.rows)


class ClaimBatches:
    """The batches of `job` (as claimed) of at most `batch_size` rows."""

    def __init__(
        self, store: Storage, job: BulkRequest, batch_size: int, streams: StreamCache
    ) -> None:
        self._store = store
        self._job = job  # only its id, environment, on_conflict and total_items are read
        self._batch_size = batch_size
        self._chunk: tuple[int, ChunkRows] | None = None  # (first row, its rows)
        self._cache = streams

    async def at(self, start: int) -> Batch:
        """The batch of rows from `start`, validated or bound."""
        job = self._job
        chunk = self._chunk
        if chunk is None or not chunk[0] <= start < chunk[0] + _row_count(chunk[1]):
            chunk = self._chunk = await self._load_chunk(start)
        first_row, rows = chunk
        end = min(start + self._batch_size, first_row + _row_count(rows), job.total_items)
        if isinstance(rows, list):
            items = rows[start - first_row : end - first_row]
            # Unknown keys are asked again each batch: the stream may exist by now.
            return validate_batch(start, items, await self._known_with(stream_keys_of(items)))
        await self._check_streams(rows.streams)
        if isinstance(rows, ValidatedRows):
            records = rows.records[start - first_row : end - first_row]
            return validated_batch(start, records, rows.streams)
        part = rows.rows[start - first_row : end - first_row]
        unproved = [row for row in part if isinstance(row, list)]
        streams = await self._known_with(stream_keys_of(unproved))
        lines = rows.lines[start - first_row : end - first_row]
        return checked_batch(start, part, lines, rows.streams, streams)

    async def _load_chunk(self, row: int) -> tuple[int, ChunkRows]:
        request_id = self._job.id
        found = await self._store.get_chunk_at(request_id, row)
        if found is None or row >= found.first_row + found.row_count:
            raise RuntimeError(f"staged rows of bulk request {request_id} are missing at row {row}")
        rows = found.rows()
        if isinstance(rows, RawBody):
            return found.first_row, await self._finish_raw_body(rows.text)
        return found.first_row, rows

    async def _finish_raw_body(self, text: bytes) -> list[StagedItem] | ValidatedRows:
        """A body the accept staged raw: its records when the fast proof holds for every
        row against the environment's streams now, else its rows staged the precise
        way, which are validated as any JSON chunk (so each row error is worded as the
        precise path words it, and an unknown stream is asked again per batch)."""
        decoded = decode_fast_body(text)
        if decoded is not None:
            keys = stream_keys(decoded)
            streams = await self._known_with(keys)
            records = every_record(decoded, streams)
            if records is not None:
                return ValidatedRows({key: streams[key] for key in keys}, records)
        return precise_items(text)

    async def _check_streams(self, proved: dict[str, StreamRef]) -> None:
        """Before a batch of rows the accept validated (decoded and bound, not validated
        again): the streams they were proved against must be this environment's as they
        are now. Streams never change, so this guards against a chunk that is not what it
        claims; found streams are kept in the app's StreamCache, so it costs a dict
        compare."""
        job = self._job
        if job.on_conflict != "skip":
            # Validated rows are staged for on_conflict=skip only (they keep no source
            # for a duplicate_external_id row error), and retries keep on_conflict.
            raise RuntimeError(f"bulk request {job.id} has validated rows but on_conflict=error")
        streams = await self._known_with(proved.keys())
        for key, ref in proved.items():
            if streams.get(key) != ref:
                raise RuntimeError(
                    f"bulk request {job.id}: data stream {key!r} is not what its rows were "
                    "validated against"
                )

    async def _known_with(self, keys: Collection[str]) -> dict[str, StreamRef]:
        """The environment's streams known so far, with every one of `keys` that exists."""
        return await self._cache.lookup(self._store, self._job.environment_id, keys)
