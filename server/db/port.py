"""The storage port: the one typed, async interface the domain and the API use.

The domain (server/bulk_requests.py, server/jobs/) and the handlers (server/api/) name
*what* they need — create a request, claim the next one, commit a batch, finish it —
and an adapter decides *how*. They import this module only, never an adapter; the
composition root (server/app.py), run.py, the benchmark and tests pick the adapter.
Every write operation is one transaction: it commits wholly or not at all, writes the
outbox event(s) of the state change it makes in that same transaction, and hands those
events to `after_commit` once committed (server/outcomes.py; nothing else follows a
commit). Worker writes are fenced by the claim (`attempt`, `claimed_by`): a stale claim
raises `FencedOut` and changes nothing.

Pure decisions every adapter needs are domain functions both call, not adapter code:
the retry rule (server/rules.py `retry_refusal`, `cancel_refusal`), chain arithmetic
(server/chains.py, `chain_coverage`), splitting a batch's candidates into inserts and
duplicate-row problems (server/batches.py `split_duplicates`), and the staged-row
encoding (server/staging.py).

Adapters
--------
`server/db/sqlite/` (`Store`): one writer connection on its own thread running each
operation as a `BEGIN IMMEDIATE` transaction in one hop, an urgent-first queue (client
calls before worker batches, bounded by URGENT_BURST), a pool of read-only connections,
background WAL checkpoints, and an flock on `<db>.lock` taken in `open` (one server
process per database file, so every claim found at start is an orphan). All of that is
SQLite-only and lives in the adapter; so do json_each, json_patch, `$[#]` and
PRAGMA user_version migrations.

`server/db/postgres/` (`PostgresStorage`, issue 12) implements this same Protocol on
asyncpg; any number of server processes share its database. Its skeleton, in the
port's own signatures (tests/test_port.py checks each against `Storage`; nothing in the
domain, the jobs or the handlers changes for it):

    class PostgresStorage:  # server/db/postgres/
        after_commit: AfterCommitHook | None

        # asyncpg pool; schema migrations in a table, not PRAGMA user_version
        async def open(self) -> None: ...
        async def close(self) -> None: ...

        # UPDATE … WHERE id = (SELECT id … ORDER BY queued_at FOR UPDATE SKIP LOCKED
        # LIMIT 1) RETURNING …: concurrent claimers never wait on one another
        async def claim_next_request(
            self, worker: str, *, sliced: frozenset[int] = frozenset()
        ) -> BulkRequestRow | None: ...

        # the same fencing columns: WHERE id = $1 AND attempt = $2 AND claimed_by = $3
        async def commit_batch(
            self, job: BulkRequestRow, worker: str, batch: Batch
        ) -> BulkRequestRow: ...
        async def release_request(self, job: BulkRequestRow, worker: str) -> None: ...
        async def finish_request(
            self,
            job: BulkRequestRow,
            worker: str,
            status: Status,
            *,
            error_message: str | None = None,
            error_details: JSON | None = None,
            keep_upload: bool = True,
        ) -> BulkRequestRow: ...

        # uploads staged in chunks: the same EncodedChunk bodies in a bytea table
        async def record_parse_progress(
            self, job: BulkRequestRow, worker: str, chunk: EncodedChunk, total_items: int
        ) -> BulkRequestRow: ...
        async def finish_parsing(
            self,
            job: BulkRequestRow,
            worker: str,
            *,
            total_items: int,
            data_stream_id: int | None,
            error_details: JSON | None,
        ) -> BulkRequestRow: ...
        async def discard_staged_rows(self, request_id: int) -> None: ...

        # each one transaction (SERIALIZABLE or a row lock on the chain's origin for
        # create_retry), the outbox row inserted in it, then NOTIFY with the outbox id
        async def create_records_request(
            self,
            environment_id: int,
            *,
            on_conflict: str,
            total_items: int,
            chunks: Sequence[EncodedChunk],
            data_stream_key: str | None,
            claim: IdempotencyClaim | None,
        ) -> tuple[BulkRequestRow, bool]: ...
        async def create_upload_request(
            self, environment_id: int, upload: NewUpload, claim: IdempotencyClaim | None
        ) -> tuple[BulkRequestRow, bool]: ...
        async def cancel_request(
            self, environment_id: int, request_id: int
        ) -> tuple[BulkRequestRow, CancelOutcome] | None: ...
        async def create_retry(
            self, environment_id: int, request_id: int, claim: IdempotencyClaim | None
        ) -> tuple[BulkRequestRow, bool] | None: ...
        async def requeue_orphans(self, live_workers: Iterable[str], reason: str) -> list[int]: ...
        async def delete_expired_idempotency_keys(self) -> int: ...
        async def prune_outbox(self) -> int: ...

        # and every read of `Storage` below as one pooled query each

Bulk-request rows are still dicts (`BulkRequestRow`); a later step types them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from server.batches import Batch
from server.ingest.validation import StreamRef
from server.models import ActiveApiKey, ApiKeyListing, DataStream, Record, RowError
from server.outcomes import RequestChanged
from server.staging import EncodedChunk, StagedChunk
from server.types import JSON, Source, Status

# A bulk request's row as stored (plus the joined data_stream_key): still a dict.
BulkRequestRow = JSON
# Where committed events go: server/outcomes.py AfterCommit.apply, set by the app.
AfterCommitHook = Callable[[Sequence[RequestChanged]], None]


class StorageUnavailable(Exception):
    """The storage cannot be read or written right now (health and metrics report it).

    `reason`: what the adapter's driver raised, by name (e.g. "OperationalError").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"storage unavailable: {reason}")
        self.reason = reason


class FencedOut(Exception):
    """The worker's claim is no longer current; its transaction was rolled back."""

    def __init__(self, request_id: int) -> None:
        super().__init__(f"claim on bulk request {request_id} is stale")
        self.request_id = request_id


class IdempotencyMismatch(Exception):
    """The key was used before for a different request."""


class Conflict(Exception):
    """The request's state does not allow the operation; the message says why."""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key and the fingerprint of what it was sent with."""

    key: str
    fingerprint: str


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # stopped now
    REQUESTED = "requested"  # the holder stops at its next heartbeat
    UNCHANGED = "unchanged"  # it was already cancelled


@dataclass(frozen=True, slots=True)
class NewUpload:
    """A stored upload to enqueue for parsing."""

    upload_format: str
    upload_path: str
    filename: str | None
    data_stream_key: str | None
    on_conflict: str
    # The NACHA relaxations as stored (JSON text of their names); None for CSV.
    nacha_options: str | None


class UploadSink(Protocol):
    """An upload being received (SPEC §8): its bytes appended in order, never held whole.

    `finish` names the stored upload for `NewUpload.upload_path`; the request that refers
    to it is created next (on PostgreSQL the upload is marked complete in that same
    transaction, so the start-up sweep never takes it for abandoned). `discard` drops
    what was received (a refused or cut-off upload).
    """

    async def write(self, chunk: bytes) -> None: ...
    async def finish(self, upload_format: str) -> str: ...
    async def discard(self) -> None: ...


class UploadSource(Protocol):
    """A stored upload read back by the parser, on a worker thread (off the event loop).

    `read` returns the next bytes (any length up to about `size`), b"" at the end.
    """

    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HeartbeatSummary:
    """Oldest heartbeat of a processing request, and how many are older than asked."""

    oldest: str | None
    stuck: int


class Storage(Protocol):
    """Everything the domain and the API need of storage (see the module docstring)."""

    after_commit: AfterCommitHook | None

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # --- environments and API keys --------------------------------------------------------

    async def ensure_environment(self, name: str) -> int: ...
    async def create_api_key(self, environment: str, key_hash: str, public_id: str) -> int: ...
    async def ensure_api_key(self, environment: str, key_hash: str) -> bool: ...
    async def find_api_key(self, key_hash: str) -> ActiveApiKey | None: ...
    async def touch_api_key(self, key_id: int) -> None: ...
    async def list_api_keys(self) -> list[ApiKeyListing]: ...
    async def revoke_api_key(self, key_id: int) -> bool: ...
    async def count_api_keys(self) -> int: ...

    # --- data streams and records ---------------------------------------------------------

    async def create_data_stream(
        self, environment_id: int, key: str, name: str | None, currency: str
    ) -> DataStream | None: ...
    async def get_data_stream(self, environment_id: int, key: str) -> DataStream | None: ...
    async def list_data_streams(
        self, environment_id: int, after_id: int, limit: int
    ) -> list[DataStream]: ...
    async def find_data_streams(
        self, environment_id: int, keys: Iterable[str]
    ) -> dict[str, StreamRef]: ...
    async def get_data_stream_key(self, stream_id: int) -> str | None: ...
    async def list_records(
        self,
        environment_id: int,
        *,
        data_stream_key: str | None,
        bulk_request_id: int | None,
        after_id: int,
        limit: int,
    ) -> list[Record]: ...

    # --- bulk requests: what clients ask for (urgent: a client waits) -----------------

    async def create_records_request(
        self,
        environment_id: int,
        *,
        on_conflict: str,
        total_items: int,
        chunks: Sequence[EncodedChunk],
        data_stream_key: str | None,
        claim: IdempotencyClaim | None,
    ) -> tuple[BulkRequestRow, bool]:
        """(request, replayed). `data_stream_key`: the one key all rows name, if any."""
        ...

    async def create_upload_request(
        self, environment_id: int, upload: NewUpload, claim: IdempotencyClaim | None
    ) -> tuple[BulkRequestRow, bool]: ...

    async def cancel_request(
        self, environment_id: int, request_id: int
    ) -> tuple[BulkRequestRow, CancelOutcome] | None:
        """None when it does not exist; raises Conflict when it has ended otherwise."""
        ...

    async def create_retry(
        self, environment_id: int, request_id: int, claim: IdempotencyClaim | None
    ) -> tuple[BulkRequestRow, bool] | None:
        """(child, replayed), None when it does not exist; raises Conflict when refused."""
        ...

    # --- the worker side (each fenced by the claim) ------------------------------------

    async def claim_next_request(
        self, worker: str, *, sliced: frozenset[int] = frozenset()
    ) -> BulkRequestRow | None:
        """`sliced`: ids given back after a time slice (their reclaim logs at DEBUG)."""
        ...

    async def commit_batch(self, job: BulkRequestRow, worker: str, batch: Batch) -> BulkRequestRow:
        """Records, row errors, counters, checkpoint and heartbeat in one transaction."""
        ...

    async def release_request(self, job: BulkRequestRow, worker: str) -> None: ...

    async def finish_request(
        self,
        job: BulkRequestRow,
        worker: str,
        status: Status,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> BulkRequestRow:
        """The fenced terminal transition, with its outbox event."""
        ...

    async def record_parse_progress(
        self, job: BulkRequestRow, worker: str, chunk: EncodedChunk, total_items: int
    ) -> BulkRequestRow:
        """Stage one parsed chunk and write the parse heartbeat."""
        ...

    async def finish_parsing(
        self,
        job: BulkRequestRow,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequestRow: ...

    async def discard_staged_rows(self, request_id: int) -> None: ...
    async def requeue_orphans(self, live_workers: Iterable[str], reason: str) -> list[int]:
        """Claims of this process's workers not in `live_workers`; on a backend shared by
        several processes, also any claim whose heartbeat is past the timeout."""
        ...

    # --- uploads: the received files, stored where every process can parse them -------

    async def begin_upload(self) -> UploadSink: ...
    async def open_upload(self, name: str) -> UploadSource:
        """Raises FileNotFoundError when the upload is gone."""
        ...

    async def delete_upload(self, name: str) -> None: ...
    async def delete_unreferenced_uploads(self) -> int:
        """At start: uploads no request needs (parsed, or cut off mid-receive); how many."""
        ...

    # --- sweeps ---------------------------------------------------------------------------

    async def delete_expired_idempotency_keys(self) -> int: ...
    async def prune_outbox(self) -> int:
        """Delete one bounded batch of outbox events past retention; how many."""
        ...

    # --- bulk requests: reads -------------------------------------------------------------

    async def get_bulk_request(
        self, environment_id: int, request_id: int
    ) -> BulkRequestRow | None: ...
    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequestRow | None: ...
    async def list_bulk_requests(
        self,
        environment_id: int,
        *,
        status: Status | None,
        source: Source | None,
        data_stream_key: str | None,
        before_id: int,
        limit: int,
    ) -> list[BulkRequestRow]: ...
    async def list_chains(
        self, environment_id: int, request_ids: Iterable[int]
    ) -> list[list[BulkRequestRow]]: ...
    async def list_row_errors(
        self, request_id: int, after_row: int, limit: int
    ) -> list[RowError]: ...
    async def get_chunk_at(self, request_id: int, row: int) -> StagedChunk | None: ...
    async def has_runnable_request(self) -> bool: ...
    async def queue_depth(self) -> int:
        """Raises StorageUnavailable when the storage cannot answer."""
        ...

    async def referenced_upload_paths(self) -> set[str]: ...
    async def metrics_bulk_requests(self) -> list[JSON]:
        """Per (status, source): request count and row counters, for /metrics."""
        ...

    async def metrics_heartbeats(self, stuck_before: str) -> HeartbeatSummary: ...
