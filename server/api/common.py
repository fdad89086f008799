"""What every handler shares: app keys, JSON in and out, pagination, path ids."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from aiohttp import web

from server.clock import utc_now
from server.config import Settings
from server.constants import (
    DEFAULT_PAGE_LIMIT,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_LISTED_UNKNOWN_FIELDS,
    MAX_PAGE_LIMIT,
)
from server.db.port import Conflict, IdempotencyMismatch, Storage
from server.events import ProgressHub
from server.http.errors import Problem, field_error, not_found, parameter_error
from server.ids import parse_stored_int
from server.ingest.json_checks import BodyIssue, duplicate_key_issue, pointer_token
from server.ingest.json_document import JsonDocument, parse_document
from server.jobs.worker import WorkerPool
from server.scheduling import RunAtProblem, parse_run_at
from server.stream_cache import StreamCache
from server.types import JSON

Choice = TypeVar("Choice", bound=StrEnum)

STORE = web.AppKey("store", Storage)
SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", WorkerPool)
HUB = web.AppKey("hub", ProgressHub)
# Admits one large JSON body at a time (constants.LARGE_JSON_BODY_BYTES).
LARGE_BODIES = web.AppKey("large_bodies", asyncio.Semaphore)
# The streams the accept's fast path proves rows against (server/bulk_requests.py).
STREAMS = web.AppKey("fast_path_streams", StreamCache)

JSON_CONTENT_TYPES = frozenset({"application/json"})


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _issues_problem(detail: str, issues: list[BodyIssue]) -> Problem:
    return Problem(
        422,
        "validation-error",
        detail,
        errors=[field_error(i.pointer, i.code, i.message) for i in issues],
    )


async def read_json_body(request: web.Request) -> Any:
    """The parsed body of a small JSON route; every number in it is exact, and an object
    naming a key twice is a 422 (the exact second parse is cheap at this size)."""
    document = await read_json_document(request)
    duplicate = duplicate_key_issue(document.raw)
    if duplicate is not None:
        raise _issues_problem("the request body names a key twice", [duplicate])
    return document.value


async def read_json_document(request: web.Request) -> JsonDocument:
    """The parsed body, with its text (see JsonDocument)."""
    return parse_json_document(await read_json_text(request))


async def read_json_text(request: web.Request) -> bytes:
    """The body of a JSON request, not parsed yet: 415 for another type, 400 when empty."""
    if request.content_type not in JSON_CONTENT_TYPES and not request.content_type.endswith(
        "+json"
    ):
        raise Problem(
            415,
            "unsupported-media-type",
            f"send the body as application/json, not {request.content_type}",
        )
    raw = await request.read()  # bounded by the app's client_max_size → 413
    if not raw:
        raise Problem(400, "invalid-json", "the request body is empty")
    return raw


def parse_json_document(raw: bytes) -> JsonDocument:
    """A JSON body parsed (server/ingest/json_document.py), its errors worded."""
    try:
        return parse_document(raw)
    except json.JSONDecodeError as exc:
        raise Problem(
            400, "invalid-json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise Problem(400, "invalid-json", "the request body is not UTF-8 text") from None
    except RecursionError:
        # Valid JSON, but deeper than any body this service accepts (SPEC §11).
        raise _issues_problem(
            "the request body nests too deeply",
            [BodyIssue("", "too_deep", "the body nests deeper than this server parses")],
        ) from None
    except ValueError as exc:
        raise Problem(400, "invalid-json", f"the request body is not valid JSON: {exc}") from None


def require_object(body: Any, allowed: set[str]) -> JSON:
    if not isinstance(body, dict):
        raise Problem(
            422,
            "validation-error",
            "the request body must be a JSON object",
            errors=[field_error("", "invalid_type", "expected a JSON object")],
        )
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(
            422,
            "validation-error",
            "the request body has unknown fields",
            errors=[
                field_error(f"/{pointer_token(name)}", "unknown_field", f"unknown field {name!r}")
                for name in unknown[:MAX_LISTED_UNKNOWN_FIELDS]
            ],
        )
    return body


def run_at_field(value: object, errors: list[JSON]) -> datetime | None:
    """A submitted `run_at` (SPEC §12) as an instant; a field error when it is not one."""
    parsed = parse_run_at(value, utc_now())
    if isinstance(parsed, RunAtProblem):
        errors.append(field_error("/run_at", parsed.code, parsed.message))
        return None
    return parsed


def path_id(request: web.Request, what: str = "bulk request") -> int:
    text = request.match_info["id"]
    # Ids are positive integers; anything else cannot name an existing object.
    found = parse_stored_int(text)
    if found is None:
        raise not_found(f"{what} {text!r}")
    return found


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise Problem(
            400,
            "validation-error",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
            errors=[parameter_error("Idempotency-Key", "invalid", "bad header value")],
        )
    return key


def page_limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_PAGE_LIMIT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_LIMIT:
        raise Problem(
            400,
            "invalid-parameter",
            f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}",
            errors=[
                parameter_error(
                    "limit", "out_of_range", f"expected 1..{MAX_PAGE_LIMIT}, got {text!r}"
                )
            ],
        )
    return int(text)


_CURSOR_POSITIONS = range(0, 2**63)


def encode_cursor(kind: str, position: int) -> str:
    raw = orjson.dumps([kind, position])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(request: web.Request, kind: str) -> int | None:
    """The position a cursor points after, or None for the first page."""
    text = request.query.get("cursor")
    if text is None or text == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        decoded = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        decoded = None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 2
        or decoded[0] != kind
        or not isinstance(decoded[1], int)
        or isinstance(decoded[1], bool)
        # Positions are ids and row numbers: SQLite integers, never negative. A forged
        # one beyond 64 bits would overflow the query (SPEC §11: a 400, not a 500).
        or decoded[1] not in _CURSOR_POSITIONS
    ):
        raise Problem(
            400,
            "invalid-parameter",
            "cursor is not one this endpoint issued",
            errors=[parameter_error("cursor", "invalid", "use next_cursor as given")],
        )
    return int(decoded[1])


def page(data: list[JSON], limit: int, kind: str, position: int | None) -> JSON:
    """The list envelope; a next_cursor only when this page is full."""
    cursor = encode_cursor(kind, position) if len(data) == limit and position is not None else None
    return {"data": data, "next_cursor": cursor}


def query_choice(request: web.Request, name: str, choices: type[Choice]) -> Choice | None:
    """The query parameter `name` as a member of `choices`; absent → None, unknown → 400."""
    value = request.query.get(name)
    if value is None:
        return None
    if value not in frozenset(choices):
        raise Problem(
            400,
            "invalid-parameter",
            f"{name} must be one of {', '.join(sorted(choices))}",
            errors=[parameter_error(name, "invalid_choice", f"got {value!r}")],
        )
    return choices(value)


def query_flag(request: web.Request, name: str) -> bool | None:
    """The query parameter `name` as `true`/`false`; absent → None, anything else → 400."""
    value = request.query.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise Problem(
            400,
            "invalid-parameter",
            f"{name} must be true or false",
            errors=[parameter_error(name, "invalid_choice", f"got {value!r}")],
        )
    return value == "true"


@contextmanager
def translate_domain_errors() -> Iterator[None]:
    """Domain refusals → problems, in one place."""
    try:
        yield
    except IdempotencyMismatch as exc:
        raise Problem(
            409,
            "idempotency-key-reused",
            f"Idempotency-Key {exc.args[0]!r} was already used for a different request; "
            "use a new key for a new request",
        ) from None
    except Conflict as exc:
        raise Problem(409, "conflict", str(exc)) from None
