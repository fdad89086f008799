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

Atomic requests (SPEC §14; README, Design): an adapter stores an atomic request's rows
batch by batch like any other, but keeps them out of every records read until the batch
that completes the request publishes them in its own transaction (SQLite: the
`unpublished` flag and a partial index); rows that hidden records of another request
hold fail as `external_id_reserved` (`withhold_reserved`), a request with failed rows
ends failed (`atomic_failure_message`), `purge_hidden_records` deletes a failed or
cancelled one's records in bounded batches, and a retry is not claimed before its
parent is purged.

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
        # server/db/webhook_port.py: the same tables, the cursor row updated under the
        # dispatch transaction's lock (several processes may dispatch)
        webhooks: WebhookStorage

        # asyncpg pool; schema migrations in a table, not PRAGMA user_version
        async def open(self) -> None: ...
        async def close(self) -> None: ...

        # UPDATE … WHERE id = (SELECT id … ORDER BY queued_at FOR UPDATE SKIP LOCKED
        # LIMIT 1) RETURNING …: concurrent claimers never wait on one another
        async def claim_next_request(
            self, worker: str, *, sliced: frozenset[int] = frozenset()
        ) -> BulkRequest | None: ...

        # the same fencing columns: WHERE id = $1 AND attempt = $2 AND claimed_by = $3
        async def commit_batch(
            self, job: BulkRequest, worker: str, batch: Batch
        ) -> BulkRequest: ...
        async def release_request(self, job: BulkRequest, worker: str) -> None: ...
        async def finish_request(
            self,
            job: BulkRequest,
            worker: str,
            status: Status,
            *,
            error_message: str | None = None,
            error_details: JSON | None = None,
            keep_upload: bool = True,
        ) -> BulkRequest: ...

        # uploads staged in chunks: the same EncodedChunk bodies in a bytea table
        async def record_parse_progress(
            self, job: BulkRequest, worker: str, chunk: EncodedChunk, total_items: int
        ) -> BulkRequest: ...
        async def finish_parsing(
            self,
            job: BulkRequest,
            worker: str,
            *,
            total_items: int,
            data_stream_id: int | None,
            error_details: JSON | None,
        ) -> BulkRequest: ...
        async def discard_staged_rows(self, request_id: int) -> None: ...

        # each one transaction (SERIALIZABLE or a row lock on the chain's origin for
        # create_retry), the outbox row inserted in it, then NOTIFY with the outbox id
        async def create_records_request(
            self,
            environment_id: int,
            *,
            on_conflict: str,
            mode: Mode = Mode.PARTIAL,
            total_items: int,
            chunks: Sequence[EncodedChunk],
            data_stream_key: str | None,
            claim: IdempotencyClaim | None,
            run_at: datetime | None = None,
        ) -> tuple[BulkRequest, bool]: ...
        async def create_upload_request(
            self, environment_id: int, upload: NewUpload, claim: IdempotencyClaim | None
        ) -> tuple[BulkRequest, bool]: ...
        async def cancel_request(
            self, environment_id: int, request_id: int
        ) -> tuple[BulkRequest, CancelOutcome] | None: ...
        async def create_retry(
            self, environment_id: int, request_id: int, claim: IdempotencyClaim | None
        ) -> tuple[BulkRequest, bool] | None: ...
        async def requeue_orphans(self, live_workers: Iterable[str], reason: str) -> list[int]: ...
        async def delete_expired_idempotency_keys(self) -> int: ...
        async def prune_outbox(self) -> int: ...
        async def purge_hidden_records(self) -> int | None: ...

        # and every read of `Storage` below as one pooled query each

What crosses the port is typed (server/models.py): a bulk request is a `BulkRequest`, a
member of a chain of retries a `ChainMember`, a /metrics aggregate a `StatusSourceTotals`.
The JSON that remains is JSON by nature: the `error_details` the domain hands to
`finish_request` / `finish_parsing` (stored as JSON text, and read back as that text in
`BulkRequest.error_details`), and user data (`Record.metadata`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from server.batches import Batch
from server.db.webhook_port import WebhookStorage
from server.ingest.validation import StreamRef
from server.models import (
    ActiveApiKey,
    ApiKeyListing,
    BulkRequest,
    ChainMember,
    DataStream,
    Record,
    RowError,
)
from server.outcomes import RequestChanged
from server.staging import EncodedChunk, StagedChunk
from server.types import JSON, Mode, Source, Status

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
    # The CSV options (SPEC §15) as stored (JSON text of the object); None for NACHA.
    csv_options: str | None = None
    # Parsed and processed from this instant on (SPEC §12); None: at once.
    run_at: datetime | None = None
    # SPEC §14: all rows or none.
    mode: Mode = Mode.PARTIAL


@dataclass(frozen=True, slots=True)
class StatusSourceTotals:
    """For /metrics: how many requests have this (status, source), and their row counters."""

    status: Status
    source: Source
    requests: int
    successful: int
    failed: int
    skipped: int


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
    # Endpoints, deliveries and the dispatcher's outbox cursor (SPEC §13).
    webhooks: WebhookStorage

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
        mode: Mode = Mode.PARTIAL,
        total_items: int,
        chunks: Sequence[EncodedChunk],
        data_stream_key: str | None,
        claim: IdempotencyClaim | None,
        run_at: datetime | None = None,
    ) -> tuple[BulkRequest, bool]:
        """(request, replayed). `data_stream_key`: the one key all rows name, if any.
        `run_at`: not claimable before this instant (SPEC §12); None runs at once."""
        ...

    async def create_upload_request(
        self, environment_id: int, upload: NewUpload, claim: IdempotencyClaim | None
    ) -> tuple[BulkRequest, bool]: ...

    async def cancel_request(
        self, environment_id: int, request_id: int
    ) -> tuple[BulkRequest, CancelOutcome] | None:
        """None when it does not exist; raises Conflict when it has ended otherwise."""
        ...

    async def create_retry(
        self, environment_id: int, request_id: int, claim: IdempotencyClaim | None
    ) -> tuple[BulkRequest, bool] | None:
        """(child, replayed), None when it does not exist; raises Conflict when refused."""
        ...

    # --- the worker side (each fenced by the claim) ------------------------------------

    async def claim_next_request(
        self, worker: str, *, sliced: frozenset[int] = frozenset()
    ) -> BulkRequest | None:
        """`sliced`: ids given back after a time slice (their reclaim logs at DEBUG)."""
        ...

    async def commit_batch(self, job: BulkRequest, worker: str, batch: Batch) -> BulkRequest:
        """Records, row errors, counters, checkpoint and heartbeat in one transaction."""
        ...

    async def release_request(self, job: BulkRequest, worker: str) -> None: ...

    async def finish_request(
        self,
        job: BulkRequest,
        worker: str,
        status: Status,
        *,
        error_message: str | None = None,
        error_details: JSON | None = None,
        keep_upload: bool = True,
    ) -> BulkRequest:
        """The fenced terminal transition, with its outbox event."""
        ...

    async def record_parse_progress(
        self, job: BulkRequest, worker: str, chunk: EncodedChunk, total_items: int
    ) -> BulkRequest:
        """Stage one parsed chunk and write the parse heartbeat."""
        ...

    async def finish_parsing(
        self,
        job: BulkRequest,
        worker: str,
        *,
        total_items: int,
        data_stream_id: int | None,
        error_details: JSON | None,
    ) -> BulkRequest: ...

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

    async def purge_hidden_records(self) -> int | None:
        """Delete one bounded batch of the hidden records of a failed or cancelled atomic
        request (SPEC §14); that request's id, or None when none has any left. Once its
        last record is gone the request is no longer unpublished (a retry of it may run)."""
        ...

    # --- bulk requests: reads -------------------------------------------------------------

    async def get_bulk_request(
        self, environment_id: int, request_id: int
    ) -> BulkRequest | None: ...
    async def get_bulk_request_any_environment(self, request_id: int) -> BulkRequest | None: ...
    async def list_bulk_requests(
        self,
        environment_id: int,
        *,
        status: Status | None,
        source: Source | None,
        data_stream_key: str | None,
        before_id: int,
        limit: int,
        scheduled: bool | None = None,
    ) -> list[BulkRequest]:
        """`scheduled`: only those waiting for their run_at (True), or the others."""
        ...

    async def list_chains(
        self, environment_id: int, request_ids: Iterable[int]
    ) -> list[list[ChainMember]]: ...
    async def list_row_errors(
        self, request_id: int, after_row: int, limit: int
    ) -> list[RowError]: ...
    async def get_chunk_at(self, request_id: int, row: int) -> StagedChunk | None: ...
    async def has_runnable_request(self) -> bool:
        """A request a worker could claim now (not one waiting for its run_at)."""
        ...

    async def queue_depth(self) -> int:
        """Runnable now (not waiting for a run_at). Raises StorageUnavailable when the
        storage cannot answer."""
        ...

    async def next_run_at(self) -> datetime | None:
        """When the earliest waiting scheduled request is due; None when none waits.
        Cheap (an indexed probe): the pool asks it every time a worker goes idle."""
        ...

    async def referenced_upload_paths(self) -> set[str]: ...
    async def metrics_bulk_requests(self) -> list[StatusSourceTotals]:
        """Per (status, source): request count and row counters, for /metrics."""
        ...

    async def metrics_heartbeats(self, stuck_before: str) -> HeartbeatSummary: ...
