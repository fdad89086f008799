"""The PostgreSQL adapter of the storage port (server/db/port.py): `PostgresStorage`.

asyncpg, a pool sized from the workers (constants.postgres_pool_size). Every write
operation is one transaction on one pooled connection (`write`): its outbox rows are
inserted in it, their trigger NOTIFYs every process at commit, and the events go to
`after_commit` once committed, as on SQLite. Any number of server processes share one
database: claims take `FOR UPDATE SKIP LOCKED`, worker writes are fenced by (attempt,
claimed_by), a dead process's claims are rescued by heartbeat age, and a LISTEN
connection feeds the other processes' committed events to this one's `after_commit`
(event streams, the dashboard, idle workers' wake-up and cancels see every process).

The port's write operations are server/db/writes.py's and their transaction bodies
server/db/transactions.py's, shared with SQLite; the statements are in queries.sql.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import asyncpg
import orjson

from server.batches import Batch
from server.clock import now_rfc3339, to_rfc3339, utc_now
from server.constants import (
    POSTGRES_ABANDONED_UPLOAD_SECONDS,
    POSTGRES_LISTEN_RETRY_SECONDS,
    POSTGRES_MAX_REMEMBERED_OUTBOX_IDS,
    POSTGRES_OUTBOX_CHANNEL,
    POSTGRES_TRANSACTION_ATTEMPTS,
)
from server.db.named_rows import status_source_totals
from server.db.payload import bulk_request_from_stored
from server.db.port import (
    AfterCommitHook,
    FencedOut,
    HeartbeatSummary,
    StatusSourceTotals,
    StorageUnavailable,
    UploadSink,
    UploadSource,
)
from server.db.postgres import uploads
from server.db.postgres.migrations import migrate
from server.db.postgres.queries import bind
from server.db.postgres.reads import Reads
from server.db.postgres.tx import CREATE_STAGED_RECORDS, PgTx
from server.db.postgres.uploads import PgUploadSink
from server.db.postgres.webhooks import PgWebhooks
from server.db.tx_port import Tx
from server.db.webhook_operations import Webhooks
from server.db.webhook_port import WebhookStorage
from server.db.writes import Writes
from server.models import BulkRequest, DataStream
from server.outcomes import RequestChanged, Transition

T = TypeVar("T")
log = logging.getLogger("server.db")

# The records' unique indexes (migration 1): which one a batch collided with decides.
RECORDS_REQUEST_ROW_INDEX = "records_request_row"
RECORDS_EXTERNAL_ID_INDEX = "records_external_id"
# Lost to another process's transaction: run the whole transaction again.
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
# What a read raises when the database is unusable (health and metrics report it).
_UNAVAILABLE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def _canonical_json(text: str) -> str:
    """jsonb comes back in jsonb's spacing; store-and-return compact text as SQLite does."""
    return orjson.dumps(orjson.loads(text)).decode()


async def _prepare_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=str, decoder=_canonical_json, format="text"
    )
    await conn.execute(CREATE_STAGED_RECORDS)


def _set_on_close(closed: asyncio.Event, _conn: object) -> None:
    closed.set()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release, which does nothing: asyncpg's default (unlock all
    advisory locks, CLOSE ALL, UNLISTEN *, RESET ALL) is one more round trip per
    transaction, and these connections keep no session state — the advisory locks are
    transaction-level, the LISTEN has its own connection, no cursor outlives a query."""


class PostgresStorage(Reads, Writes):
    def __init__(self, dsn: str, *, pool_size: int, heartbeat_timeout: float) -> None:
        """`heartbeat_timeout`: seconds without a heartbeat before any process may rescue
        a claim (requeue_orphans)."""
        self.dsn = dsn
        self.pool_size = pool_size
        self.heartbeat_timeout = heartbeat_timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._own_outbox_ids: set[int] = set()
        self._notified: list[int] = []
        self._draining: asyncio.Task[None] | None = None
        # The one place that acts on committed events (server/outcomes.py AfterCommit),
        # set by the app. Without one (a bare storage), events are only in the outbox.
        self.after_commit: AfterCommitHook | None = None
        # The webhook operations (server/db/webhook_transactions.py) on this storage.
        self.webhooks: WebhookStorage = Webhooks(PgWebhooks(self))

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            init=_prepare_connection,
            reset=_keep_session,
        )
        ready = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(ready), name="pg-listen")
        await ready

    async def close(self) -> None:
        for task in (self._listener, self._draining):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._draining = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            # What asyncpg raises for a closed pool: health and metrics report it.
            raise asyncpg.InterfaceError("the storage is not open")
        return self._pool

    # --- transactions ----------------------------------------------------------------

    async def write(
        self,
        work: Callable[[PgTx], Awaitable[T]],
        *,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Run `work` as one transaction; its events go to `after_commit` once committed.

        Shielded: a caller that stops waiting (a client hung up) does not cut the
        transaction short, and a committed one's events are still applied. A transaction
        that lost a deadlock or serialization conflict (or `retry_on`) runs again.
        """
        return await asyncio.shield(self._write(work, retry_on))

    async def transaction(
        self, body: Callable[[Tx], Coroutine[Any, Any, T]], *, urgent: bool = False
    ) -> T:
        """Run a shared transaction body (server/db/transactions.py) as one `write`.
        `urgent` changes nothing here: each transaction has its own pooled connection,
        there is no writer queue to jump."""
        return await self.write(body)

    async def _write(
        self, work: Callable[[PgTx], Awaitable[T]], retry_on: tuple[type[BaseException], ...]
    ) -> T:
        retryable: tuple[type[BaseException], ...] = (*_RETRYABLE, *retry_on)
        for attempt in range(1, POSTGRES_TRANSACTION_ATTEMPTS + 1):
            tx: PgTx | None = None
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    tx = PgTx(conn)
                    result = await work(tx)
                    # Before the commit: the listener may hear of these ids before this
                    # coroutine resumes after it.
                    self._remember_own(tx.outbox_ids)
            except retryable:
                if attempt == POSTGRES_TRANSACTION_ATTEMPTS:
                    raise
                log.debug("transaction lost a conflict; running it again", exc_info=True)
                continue
            if tx.events and self.after_commit is not None:
                self.after_commit(tuple(tx.events))
            return result
        raise AssertionError("unreachable")

    def _remember_own(self, ids: Iterable[int]) -> None:
        if len(self._own_outbox_ids) > POSTGRES_MAX_REMEMBERED_OUTBOX_IDS:
            self._own_outbox_ids.clear()  # the cost: a few events applied twice (idempotent)
        self._own_outbox_ids.update(ids)

    # --- other processes' events (LISTEN/NOTIFY fed by the outbox trigger) ------------

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self.dsn)
            except _UNAVAILABLE:
                if not ready.done():
                    raise
                log.warning("cannot LISTEN for other processes' events; retrying")
                await asyncio.sleep(POSTGRES_LISTEN_RETRY_SECONDS)
                continue
            try:
                closed = asyncio.Event()
                conn.add_termination_listener(partial(_set_on_close, closed))
                await conn.add_listener(POSTGRES_OUTBOX_CHANNEL, self._on_notify)
                if not ready.done():
                    ready.set_result(None)
                await closed.wait()
                log.warning("the LISTEN connection closed; opening it again")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close())

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        notice = orjson.loads(str(payload))
        outbox_id = int(notice["id"])
        if outbox_id in self._own_outbox_ids:
            self._own_outbox_ids.discard(outbox_id)
            return
        self._notified.append(outbox_id)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain_notified())

    async def _drain_notified(self) -> None:
        """Apply other processes' events in the order their notifications came (commit
        order), a batch per read, as committed events of this process's own."""
        while self._notified:
            ids, self._notified = self._notified, []
            try:
                sql, args = bind("list_outbox_events_by_ids", {"ids": ids})
                rows = await self.pool.fetch(sql, *args)
            except _UNAVAILABLE:
                log.warning("could not read %d notified event(s)", len(ids), exc_info=True)
                continue
            events: list[RequestChanged] = []
            for row in rows:
                try:
                    request = bulk_request_from_stored(orjson.loads(row["payload"]))
                    transition = Transition(row["event_type"])
                except (ValueError, KeyError, TypeError):
                    # A malformed row written behind the service's back must not stop
                    # this process hearing of the next ones.
                    log.exception("could not read notified outbox event %s", row["id"])
                    continue
                # Logged by the process that made the change; here only at DEBUG.
                events.append(
                    RequestChanged(request, transition, logging.DEBUG, {"via": "another process"})
                )
            if events and self.after_commit is not None:
                try:
                    self.after_commit(tuple(events))
                except Exception:
                    log.exception("could not apply %d notified event(s)", len(events))

    # --- environments and API keys ---------------------------------------------------

    async def create_api_key(self, environment: str, key_hash: str, public_id: str) -> int:
        async def work(tx: PgTx) -> int:
            return await tx.insert_api_key(
                await tx.ensure_environment(environment), key_hash, public_id
            )

        return await self.write(work)

    async def ensure_api_key(self, environment: str, key_hash: str) -> bool:
        """Make sure this exact key exists (and is not revoked); True if it was created."""

        async def work(tx: PgTx) -> bool:
            if await tx.one("find_api_key", key_hash=key_hash) is not None:
                return False
            env_id = await tx.ensure_environment(environment)
            # A revoked row with the same hash would violate UNIQUE: revive it instead.
            if not await tx.run("unrevoke_api_key", key_hash=key_hash):
                await tx.insert_api_key(env_id, key_hash, None)
            return True

        # Two processes starting with the same BULK_API_KEY: the loser runs again, finds it.
        return await self.write(work, retry_on=(asyncpg.exceptions.UniqueViolationError,))

    async def touch_api_key(self, key_id: int) -> None:
        now = now_rfc3339()
        await self.write(lambda tx: tx.run("touch_api_key", id=key_id, now=now))

    async def revoke_api_key(self, key_id: int) -> bool:
        now = now_rfc3339()
        changed = await self.write(lambda tx: tx.run("revoke_api_key", id=key_id, now=now))
        return changed == 1

    async def create_data_stream(
        self, environment_id: int, key: str, name: str | None, currency: str
    ) -> DataStream | None:
        """The new stream, or None when the key is taken in this environment."""

        async def work(tx: PgTx) -> DataStream | None:
            row = await tx.one(
                "insert_data_stream",
                environment_id=environment_id,
                key=key,
                name=name,
                currency=currency,
                now=now_rfc3339(),
            )
            return DataStream(**row) if row is not None else None

        return await self.write(work)

    # --- the worker side -------------------------------------------------------------

    async def commit_batch(self, job: BulkRequest, worker: str, batch: Batch) -> BulkRequest:
        for attempt in range(1, POSTGRES_TRANSACTION_ATTEMPTS + 1):
            try:
                return await super().commit_batch(job, worker, batch)
            except asyncpg.exceptions.UniqueViolationError as exc:
                if exc.constraint_name == RECORDS_REQUEST_ROW_INDEX:
                    # Rows behind the checkpoint: only a stale claim writes those.
                    raise FencedOut(job.id) from exc
                if exc.constraint_name != RECORDS_EXTERNAL_ID_INDEX or (
                    attempt == POSTGRES_TRANSACTION_ATTEMPTS
                ):
                    raise
                # on_conflict=error: another transaction committed one of these external
                # ids between the duplicate lookup and the COPY. Run again: the lookup now
                # finds it, and it is reported as the row's duplicate_external_id error.
        raise AssertionError("unreachable")

    def stale_claims_before(self) -> str:
        """No process assumes the claims it finds are its own: another's claim is an
        orphan once its heartbeat is older than the heartbeat timeout."""
        return to_rfc3339(utc_now() - timedelta(seconds=self.heartbeat_timeout))

    # --- uploads: chunks in the database (uploads.py) ---------------------------------

    async def begin_upload(self) -> UploadSink:
        return await PgUploadSink.begin(self.pool)

    async def open_upload(self, name: str) -> UploadSource:
        return await uploads.open_upload(self.pool, name)

    async def delete_upload(self, name: str) -> None:
        await uploads.delete_upload(self.pool, name)

    async def delete_unreferenced_uploads(self) -> int:
        """Uploads no request refers to: parsed or refused ones a crash left, and ones
        never completed, once older than any upload still being received."""
        not_before = to_rfc3339(utc_now() - timedelta(seconds=POSTGRES_ABANDONED_UPLOAD_SECONDS))
        return len(await self.rows("delete_unreferenced_uploads", not_before=not_before))

    # --- reads that raise StorageUnavailable ------------------------------------------

    async def queue_depth(self) -> int:
        count = self.value("count_runnable_requests", now=now_rfc3339())
        return int(await self._available(count))

    async def metrics_bulk_requests(self) -> list[StatusSourceTotals]:
        """Per (status, source): request count and row counters, for /metrics."""
        return status_source_totals(await self._available(self.rows("metrics_bulk_requests")))

    async def metrics_heartbeats(self, stuck_before: str) -> HeartbeatSummary:
        row = await self._available(self.row("metrics_heartbeats", stuck_before=stuck_before))
        assert row is not None  # an aggregate always returns one row
        return HeartbeatSummary(oldest=row["oldest"], stuck=int(row["stuck"]))

    @staticmethod
    async def _available(read: Awaitable[T]) -> T:
        try:
            return await read
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
