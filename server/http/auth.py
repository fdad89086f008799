"""API keys: generation, hashing, and the middleware that guards `/v1/...`.

A generated key is `bk_<public id>_<secret>` (SPEC §11). The database keeps the public
id (to tell keys apart) and the SHA-256 of the whole key, never any part of the secret;
a key chosen with BULK_API_KEY, and a key from before the scheme, is kept as its hash
only. Lookup is by hash, so every kind of key is found the same way; the final
comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server.clock import parse_rfc3339, utc_now
from server.constants import API_KEY_PUBLIC_ID_CHARS, API_KEY_SECRET_BYTES
from server.http.errors import Problem

API_KEY_HEADER = "X-API-KEY"
KEY_PREFIX = "bk_"
# Lowercase letters and digits: no `_` (it separates the parts) and no look-alike case.
PUBLIC_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# last_used_at is informational: write it at most this often per key, not per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
PUBLIC_V1_PATHS = frozenset({"/v1/openapi.json"})


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: int
    environment_id: int
    environment: str


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A freshly generated key: `key` is shown once and never stored."""

    public_id: str
    key: str

    @property
    def key_hash(self) -> str:
        return hash_api_key(self.key)


def generate_api_key() -> NewApiKey:
    public_id = "".join(secrets.choice(PUBLIC_ID_ALPHABET) for _ in range(API_KEY_PUBLIC_ID_CHARS))
    secret = secrets.token_urlsafe(API_KEY_SECRET_BYTES)
    return NewApiKey(public_id, f"{KEY_PREFIX}{public_id}_{secret}")


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


CALLER = web.RequestKey("caller", Caller)


def caller_of(request: web.Request) -> Caller:
    caller: Caller | None = request.get(CALLER)
    assert caller is not None, "route is not behind the auth middleware"
    return caller


def make_auth_middleware(store_key: Any) -> Any:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/v1/") or path in PUBLIC_V1_PATHS:
            return await handler(request)
        presented = request.headers.get(API_KEY_HEADER)
        if not presented:
            raise Problem(401, "unauthorized", f"send your API key in the {API_KEY_HEADER} header")
        store = request.app[store_key]
        digest = hash_api_key(presented)
        key = await store.find_api_key(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise Problem(401, "unauthorized", "this API key is unknown or has been revoked")
        last_used = key.last_used_at
        if last_used is None or utc_now() - parse_rfc3339(last_used) > LAST_USED_RESOLUTION:
            await store.touch_api_key(key.id)
        request[CALLER] = Caller(key.id, key.environment_id, key.environment)
        return await handler(request)

    return auth_middleware
