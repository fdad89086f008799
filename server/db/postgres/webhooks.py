"""The PostgreSQL side of the webhook operations (server/db/webhook_transactions.py).

`PgWebhooks` gives the shared operations this storage's transactions and pooled reads: a
body is awaited inside one asyncpg transaction (`PostgresStorage.write`: retried on a
deadlock or serialization conflict), on a PgTx, whose named-statement methods are the
WebhookTx the bodies need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from server.db.webhook_transactions import Body
from server.types import JSON

if TYPE_CHECKING:  # the storage builds this (PostgresStorage.webhooks)
    from server.db.postgres.storage import PostgresStorage
    from server.db.postgres.tx import PgTx

T = TypeVar("T")


class PgWebhooks:
    """The shared webhook operations' WebhookBackend on PostgreSQL."""

    def __init__(self, storage: PostgresStorage) -> None:
        self.storage = storage

    async def transaction(self, body: Body[T], *, urgent: bool = False) -> T:
        # `urgent` is the SQLite writer's queue; every transaction here has its connection.
        return await self.storage.write(body)

    async def read_one(self, query: str, /, **values: Any) -> JSON | None:
        return await self.storage.row(query, **values)

    async def read_all(self, query: str, /, **values: Any) -> list[JSON]:
        return await self.storage.rows(query, **values)

    async def newest_outbox_id(self) -> int:
        """Ids are taken at insert, not commit: an open transaction may hold an id below
        the newest committed one, and a cursor moved past it would never see its event.
        So the read waits for the open outbox writers first (`lock_outbox_until_committed`)
        — only when an endpoint is enabled: with none, no event has anyone to deliver to
        (an endpoint created later is newer than every event taken before it)."""

        async def body(tx: PgTx) -> int:
            if await tx.one("list_environments_with_webhooks") is not None:
                await tx.run("lock_outbox_until_committed")
            row = await tx.one("newest_outbox_id")
            assert row is not None  # an aggregate always returns one row
            return int(next(iter(row.values())))

        return await self.storage.write(body)
