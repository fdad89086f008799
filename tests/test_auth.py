"""API keys: required on /v1, hashed at rest, revocable, environment-scoped.

Key material (SPEC §11): a generated key is `bk_<public id>_<secret>`; the database keeps
the public id and the hash of the whole key. These tests read every column of `api_keys`
and the database files' raw bytes looking for any run of the secret.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from server.api.common import STORE
from server.app import create_app
from server.config import Settings
from server.db.sqlite.connection import prepare_database
from server.db.sqlite.migrations import MIGRATIONS, migrate
from server.http.auth import generate_api_key, hash_api_key
from tests.conftest import API_KEY, Api

NEW_KEY = re.compile(r"bk_(?P<public_id>[a-z0-9]{12})_(?P<secret>[A-Za-z0-9_-]{43})")
# Every column of api_keys; a new column must be added here, and so be checked below.
API_KEY_COLUMNS = {
    "id",
    "environment_id",
    "key_hash",
    "public_id",
    "created_at",
    "last_used_at",
    "revoked_at",
}


def runs(secret: str, length: int) -> list[str]:
    """Every run of `length` consecutive characters of the secret."""
    return [secret[i : i + length] for i in range(len(secret) - length + 1)]


def assert_no_secret_stored(db: Path, public_ids: dict[str, str | None]) -> None:
    """`public_ids`: each key the database should hold -> the public id it should show.

    A generated key's secret is what follows its public id; a chosen or pre-scheme key
    has no public part, so all of it is secret. Columns: no run of 6 characters of a
    secret (the key hash excepted, which must be exactly the SHA-256 of the key). Files:
    no run of 8 characters, in the database or its WAL. Shorter runs of a random secret
    turn up by chance in timestamps and hashes; these lengths still catch a stored
    9-character prefix, and chance matches are below one in a million per test.
    """
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(api_keys)")}
        rows = [dict(row) for row in conn.execute("SELECT * FROM api_keys")]
    finally:
        conn.close()
    assert columns == API_KEY_COLUMNS
    by_hash = {hash_api_key(key): key for key in public_ids}
    assert sorted(row["key_hash"] for row in rows) == sorted(by_hash)
    raw = b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*"))
    for row in rows:
        key = by_hash[row["key_hash"]]
        assert row["public_id"] == public_ids[key]
        secret = key.removeprefix(f"bk_{row['public_id']}_") if row["public_id"] else key
        stored = " ".join(str(value) for name, value in row.items() if name != "key_hash")
        assert not [part for part in runs(secret, 6) if part in stored], (row, secret)
        assert not [part for part in runs(secret, 8) if part.encode() in raw], secret


async def serve(aiohttp_client: Any, db: Path, bootstrap_api_key: str | None = None) -> Any:
    settings = Settings(db_path=db, workers=1, sweep_interval=3600)
    return await aiohttp_client(create_app(settings, bootstrap_api_key=bootstrap_api_key))


async def status_with(client: Any, key: str) -> int:
    async with client.get("/v1/data_streams", headers={"X-API-KEY": key}) as resp:
        return int(resp.status)


async def test_missing_unknown_and_revoked_keys_are_401(api: Api) -> None:
    for headers in ({}, {"X-API-KEY": "nope"}, {"X-API-KEY": API_KEY + "x"}):
        async with api.client.get("/v1/bulk_requests", headers=headers) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
            problem = await resp.json(content_type=None)
            assert problem["type"] == "/problems/unauthorized"
            assert API_KEY not in str(problem)
    store = api.app[STORE]
    new = generate_api_key()
    key_id = await store.create_api_key("default", new.key_hash, new.public_id)
    assert (await Api(api.client, new.key).call("GET", "/v1/bulk_requests"))[0] == 200
    assert await store.revoke_api_key(key_id)
    assert (await Api(api.client, new.key).call("GET", "/v1/bulk_requests"))[0] == 401
    assert not await store.revoke_api_key(key_id)  # already revoked
    # The public id alone, or with another secret, is no key.
    for forged in (f"bk_{new.public_id}", f"bk_{new.public_id}_{secrets.token_urlsafe(32)}"):
        assert (await Api(api.client, forged).call("GET", "/v1/bulk_requests"))[0] == 401


async def test_unknown_v1_route_without_key_is_401_not_a_route_oracle(api: Api) -> None:
    async with api.client.get("/v1/nothing-here") as resp:
        assert resp.status == 401


async def test_public_routes_need_no_key(api: Api) -> None:
    async with api.client.get("/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body == {"status": "ok", "database": "ok", "workers": 2, "queue_depth": 0}


@pytest.mark.sqlite_only("reads the SQLite file's whole dump")
async def test_keys_are_stored_hashed_and_last_use_recorded(api: Api, settings: Settings) -> None:
    await api.get("/v1/bulk_requests")
    conn = sqlite3.connect(settings.db_path)
    try:
        rows = conn.execute("SELECT key_hash, public_id, last_used_at FROM api_keys").fetchall()
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert rows == [(hash_api_key(API_KEY), None, rows[0][2])]
    assert rows[0][2] is not None
    assert API_KEY not in dump


async def test_generated_keys_are_bk_public_id_secret() -> None:
    generated = [generate_api_key() for _ in range(100)]
    assert len({new.key for new in generated}) == len({new.public_id for new in generated}) == 100
    for new in generated:
        match = NEW_KEY.fullmatch(new.key)
        assert match is not None, new.key
        assert match["public_id"] == new.public_id
        assert new.key_hash == hash_api_key(new.key)


async def test_nothing_of_a_new_keys_secret_is_stored(aiohttp_client: Any, tmp_path: Path) -> None:
    db = tmp_path / "bulk.db"
    client = await serve(aiohttp_client, db, bootstrap_api_key="my-demo-key")
    store = client.app[STORE]
    new = generate_api_key()
    key_id = await store.create_api_key("sandbox", new.key_hash, new.public_id)
    assert await status_with(client, new.key) == 200
    assert await store.revoke_api_key(key_id)  # every column filled in
    assert await status_with(client, new.key) == 401
    assert_no_secret_stored(db, {new.key: new.public_id, "my-demo-key": None})


async def test_a_chosen_bulk_api_key_is_stored_as_its_hash_only(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    db = tmp_path / "bulk.db"
    client = await serve(aiohttp_client, db, bootstrap_api_key="my-demo-key")
    assert await status_with(client, "my-demo-key") == 200
    assert await status_with(client, "my-demo-ke") == 401
    assert_no_secret_stored(db, {"my-demo-key": None})


async def test_keys_from_before_public_ids_keep_working_and_lose_their_prefix(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A database as the server left it before the key scheme: keys with a stored prefix."""
    db = tmp_path / "bulk.db"
    before = next(n for n, script in enumerate(MIGRATIONS) if "DROP COLUMN prefix" in script)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, up_to=before) == before
    # Enough keys to fill several pages, so freed bytes would be left behind in the file.
    old_keys = ["bk_" + secrets.token_urlsafe(32) for _ in range(60)] + ["my-demo-key"]
    conn.execute("INSERT INTO environments (name, created_at) VALUES ('default', 'then')")
    for key in old_keys:
        conn.execute(
            "INSERT INTO api_keys (environment_id, key_hash, prefix, created_at)"
            " VALUES (1, ?, ?, '2024-01-01T00:00:00.000000Z')",
            (hash_api_key(key), key[:9]),
        )
    revoked = old_keys[1]
    conn.execute("UPDATE api_keys SET revoked_at = 'then' WHERE id = 2")
    conn.close()
    assert old_keys[0][:9].encode() in db.read_bytes()  # the prefixes really were there

    assert prepare_database(db) == len(MIGRATIONS)
    assert_no_secret_stored(db, dict.fromkeys(old_keys))
    raw = db.read_bytes()
    assert not [key for key in old_keys if key[:9].encode() in raw]

    client = await serve(aiohttp_client, db)
    for key in old_keys:
        assert await status_with(client, key) == (401 if key == revoked else 200), key
