"""The API key lookup every request makes runs on the event loop itself on SQLite (one
indexed point read on a connection of its own, server/db/sqlite/store.py find_api_key)
instead of three hops through a pooled reader. It must stay exact — a key revoked by
another process (`run.py keys revoke`) is refused on the very next request — and fall
back to the pool whenever that connection cannot answer."""

from __future__ import annotations

import sqlite3

import pytest

from server.api.common import SETTINGS, STORE
from server.db.sqlite.store import Store
from server.http.auth import generate_api_key
from tests.conftest import Api


async def _status(api: Api, key: str) -> int:
    status, _ = await Api(api.client, key).call("GET", "/v1/bulk_requests")
    return int(status)


@pytest.mark.sqlite_only("another process's connection to the SQLite file revokes the key")
async def test_a_key_revoked_by_another_process_is_refused_at_once(api: Api) -> None:
    new = generate_api_key()
    key_id = await api.app[STORE].create_api_key("default", new.key_hash, new.public_id)
    assert await _status(api, new.key) == 200
    # As `run.py keys revoke` does it: its own connection, while the server runs.
    with sqlite3.connect(api.app[SETTINGS].db_path) as conn:
        conn.execute(
            "UPDATE api_keys SET revoked_at = '2026-01-01T00:00:00Z' WHERE id = ?", [key_id]
        )
    assert await _status(api, new.key) == 401
    assert await _status(api, new.key) == 401


@pytest.mark.sqlite_only("the lookup connection is the SQLite adapter's")
async def test_the_lookup_falls_back_to_a_pooled_reader(api: Api) -> None:
    store = api.app[STORE]
    assert isinstance(store, Store)
    new = generate_api_key()
    await store.create_api_key("default", new.key_hash, new.public_id)
    assert store._lookup is not None
    store._lookup.close()  # every use now raises sqlite3.ProgrammingError
    assert await _status(api, new.key) == 200
    assert await _status(api, "bk_unknown") == 401
