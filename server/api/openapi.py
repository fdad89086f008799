"""`GET /v1/openapi.json`: the OpenAPI 3.1 document, public (SPEC §3, §10).

The document lives in one place, `server/openapi.json`, shipped as package data. It is
read once, on first use, and served as the exact bytes of the file: what a client
downloads is what tests validate, with no re-serialization in between.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.json"


@cache
def document_bytes() -> bytes:
    return OPENAPI_FILE.read_bytes()


async def openapi_document(request: web.Request) -> web.Response:
    # Revalidation is cheap and the document changes with every release: no long caching.
    return web.Response(
        body=document_bytes(),
        content_type="application/json",
        headers={"Cache-Control": "no-cache"},
    )
