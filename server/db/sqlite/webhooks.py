"""The SQLite side of the webhook operations (server/db/webhook_transactions.py).

`SqliteWebhooks` gives the shared operations this store's writer and readers: a body runs
on the writer thread (one BEGIN IMMEDIATE transaction) through `run_to_completion`, over
`SqliteWebhookTx`, whose coroutines are plain sqlite3 calls that never suspend.
"""

from __future__ import annotations

from typing import Any, TypeVar

from server.db.drive import run_to_completion
from server.db.sqlite.database import SqliteDatabase
from server.db.sqlite.queries import Q
from server.db.sqlite.tx import WriteTx
from server.db.webhook_transactions import Body
from server.types import JSON

T = TypeVar("T")


class SqliteWebhookTx:
    """The shared bodies' WebhookTx over a WriteTx: named statements, never suspending."""

    def __init__(self, tx: WriteTx) -> None:
        self.tx = tx

    async def one(self, query: str, /, **values: Any) -> JSON | None:
        return self.tx.one(getattr(Q, query), values)

    async def all(self, query: str, /, **values: Any) -> list[JSON]:
        return self.tx.all(getattr(Q, query), values)

    async def run(self, query: str, /, **values: Any) -> int:
        return self.tx.run(getattr(Q, query), values)


class SqliteWebhooks:
    """The shared webhook operations' WebhookBackend on this store."""

    def __init__(self, store: SqliteDatabase) -> None:
        self.store = store

    async def transaction(self, body: Body[T], *, urgent: bool = False) -> T:
        return await self.store.write(
            lambda tx: run_to_completion(body(SqliteWebhookTx(tx))), urgent=urgent
        )

    async def read_one(self, query: str, /, **values: Any) -> JSON | None:
        return await self.store.read_one(getattr(Q, query), values)

    async def read_all(self, query: str, /, **values: Any) -> list[JSON]:
        return await self.store.read_all(getattr(Q, query), values)

    async def newest_outbox_id(self) -> int:
        # One writer: ids are taken in commit order, so every id up to the newest one
        # committed is committed too.
        return int(await self.store.read_value(Q.newest_outbox_id))

    async def release_leases(self) -> None:
        """At open, under the flock: every send lease left is a dead process's."""
        await self.store.write(lambda tx: tx.run(Q.release_webhook_leases))
