"""API keys: generation, hashing, and the middleware that guards `/v1/...`.

Keys are 256-bit random tokens, so a fast hash (SHA-256) is enough to store them
safely: there is nothing to brute-force. Lookup is by hash; the final comparison is
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from server.clock import parse_rfc3339, utc_now
from server.errors import Problem

API_KEY_HEADER = "X-API-KEY"
KEY_PREFIX = "bk_"
# last_used_at is informational: write it at most this often per key, not per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
PUBLIC_V1_PATHS = frozenset({"/v1/openapi.json"})


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: int
    environment_id: int
    environment: str


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_prefix(key: str) -> str:
    """Enough of the key to recognise it in `keys list`, too little to use it."""
    return key[: len(KEY_PREFIX) + 6]


CALLER = web.RequestKey("caller", Caller)


def caller_of(request: web.Request) -> Caller:
    caller = request.get(CALLER)
    assert caller is not None, "route is not behind the auth middleware"
    return caller


def make_auth_middleware(store_key: Any) -> Any:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/v1/") or path in PUBLIC_V1_PATHS:
            return await handler(request)
        presented = request.headers.get(API_KEY_HEADER)
        if not presented:
            raise Problem(401, "unauthorized", f"send your API key in the {API_KEY_HEADER} header")
        store = request.app[store_key]
        digest = hash_api_key(presented)
        row = await store.find_api_key(digest)
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            raise Problem(401, "unauthorized", "this API key is unknown or has been revoked")
        last_used = row["last_used_at"]
        if last_used is None or utc_now() - parse_rfc3339(last_used) > LAST_USED_RESOLUTION:
            await store.touch_api_key(row["id"])
        request[CALLER] = Caller(row["id"], row["environment_id"], row["environment"])
        return await handler(request)

    return auth_middleware
