"""problem+json (RFC 9457) for every error, and the middleware that guarantees it.

Handlers raise `Problem`; anything else that escapes (aiohttp's HTTP exceptions, bugs)
is turned into a problem here, so a client never sees an HTML page or a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from server.constants import MAX_REQUEST_ID_CHARS
from server.types import JSON

log = logging.getLogger("server.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
_SANE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID_CHARS}}}")

# Titles are fixed per type (RFC 9457 §3.1.3); `detail` says what happened this time.
_TITLES: dict[str, str] = {
    "invalid-json": "Request body is not valid JSON",
    "validation-error": "Request is not valid",
    "invalid-parameter": "Query parameter is not valid",
    "unauthorized": "Missing or invalid API key",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "conflict": "Conflict with the current state",
    "idempotency-key-reused": "Idempotency-Key reused with a different request",
    "payload-too-large": "Payload too large",
    "unsupported-media-type": "Unsupported media type",
    "not-acceptable": "Not acceptable",
    "request-timeout": "Request head not received in time",
    "request-head-too-large": "Request header fields too large",
    "malformed-request": "Malformed HTTP request",
    "service-unavailable": "Service unavailable",
    "internal-error": "Internal server error",
    "http-error": "HTTP error",
}
_TYPE_BY_STATUS: dict[int, str] = {
    400: "validation-error",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    503: "service-unavailable",
}


def field_error(pointer: str | None, code: str, message: str, **extra: Any) -> JSON:
    return {"pointer": pointer, "code": code, "message": message, **extra}


def parameter_error(name: str, code: str, message: str) -> JSON:
    """A query-parameter error: no JSON Pointer applies, `parameter` names it."""
    return {"pointer": None, "parameter": name, "code": code, "message": message}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        errors: list[JSON] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", f"{what} does not exist")


def request_id_of(request: web.BaseRequest) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


def problem_body(problem: Problem, *, instance: str, request_id: str) -> bytes:
    """The JSON of a problem; `instance` is the request path ("" when it was unreadable)."""
    body: JSON = {
        "type": f"/problems/{problem.kind}",
        "title": _TITLES.get(problem.kind, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "instance": instance,
        "request_id": request_id,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        # Something echoed from the request (a field name, a path) holds a lone
        # surrogate, which no JSON encoder writes: escape it rather than fail the answer.
        return orjson.dumps(_echoable(body))


def problem_response(request: web.Request, problem: Problem) -> web.Response:
    return web.Response(
        status=problem.status,
        body=problem_body(problem, instance=request.path, request_id=request_id_of(request)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def _echoable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_echoable(k): _echoable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_echoable(v) for v in value]
    return value


def _from_http_exception(exc: web.HTTPException) -> Problem:
    status = exc.status
    kind = _TYPE_BY_STATUS.get(status, "http-error" if status < 500 else "internal-error")
    headers: dict[str, str] = {}
    if status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    detail = {
        404: "no route matches this path",
        405: "this route does not accept this method",
        413: "the request body is larger than this route accepts",
    }.get(status, exc.reason)
    return Problem(status, kind, detail, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id_of(request)
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(request, problem)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like pass through untouched
            raise
        return problem_response(request, _from_http_exception(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id_of(request)})
        return problem_response(
            request,
            Problem(500, "internal-error", "an unexpected error occurred; it has been logged"),
        )


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed or not, carries its request id."""
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
