"""API keys: required on /v1, hashed at rest, revocable, environment-scoped."""

from __future__ import annotations

import sqlite3

from server.api.common import STORE
from server.auth import generate_api_key, hash_api_key, key_prefix
from server.config import Settings
from tests.conftest import API_KEY, Api


async def test_missing_unknown_and_revoked_keys_are_401(api: Api) -> None:
    for headers in ({}, {"X-API-KEY": "nope"}, {"X-API-KEY": API_KEY + "x"}):
        async with api.client.get("/v1/bulk_requests", headers=headers) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
            problem = await resp.json(content_type=None)
            assert problem["type"] == "/problems/unauthorized"
            assert API_KEY not in str(problem)
    store = api.app[STORE]
    key = generate_api_key()
    key_id = await store.create_api_key("default", hash_api_key(key), key_prefix(key))
    assert (await Api(api.client, key).call("GET", "/v1/bulk_requests"))[0] == 200
    assert await store.revoke_api_key(key_id)
    assert (await Api(api.client, key).call("GET", "/v1/bulk_requests"))[0] == 401
    assert not await store.revoke_api_key(key_id)  # already revoked


async def test_unknown_v1_route_without_key_is_401_not_a_route_oracle(api: Api) -> None:
    async with api.client.get("/v1/nothing-here") as resp:
        assert resp.status == 401


async def test_public_routes_need_no_key(api: Api) -> None:
    async with api.client.get("/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body == {"status": "ok", "database": "ok", "workers": 2, "queue_depth": 0}


async def test_keys_are_stored_hashed_and_last_use_recorded(api: Api, settings: Settings) -> None:
    await api.get("/v1/bulk_requests")
    conn = sqlite3.connect(settings.db_path)
    try:
        rows = conn.execute("SELECT key_hash, prefix, last_used_at FROM api_keys").fetchall()
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert rows == [(hash_api_key(API_KEY), key_prefix(API_KEY), rows[0][2])]
    assert rows[0][2] is not None
    assert API_KEY not in dump


async def test_generated_keys_are_unique_and_long() -> None:
    keys = {generate_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("bk_") and len(k) >= 40 for k in keys)
