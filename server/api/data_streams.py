"""Data streams and the records listing (SPEC §5)."""

from __future__ import annotations

import re

from aiohttp import web

from server.api.common import (
    STORE,
    decode_cursor,
    json_response,
    page,
    page_limit,
    read_json_body,
    require_object,
)
from server.api.render import render_data_stream, render_record
from server.constants import MAX_DATA_STREAM_KEY_CHARS, MAX_DATA_STREAM_NAME_CHARS
from server.http.auth import caller_of
from server.http.errors import Problem, field_error, not_found, parameter_error
from server.ids import parse_stored_int
from server.ingest.validation import text_problem
from server.money import currency_exponent

# Keys appear in URL paths, so they are restricted to characters that need no escaping.
STREAM_KEY = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:\-]{{0,{MAX_DATA_STREAM_KEY_CHARS - 1}}}")


async def create_data_stream(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = require_object(await read_json_body(request), {"key", "name", "currency"})
    errors = []
    key = body.get("key")
    if key is None:
        errors.append(field_error("/key", "required", "key is required"))
    elif not isinstance(key, str) or not STREAM_KEY.fullmatch(key):
        errors.append(
            field_error(
                "/key",
                "invalid",
                f"key must be 1 to {MAX_DATA_STREAM_KEY_CHARS} characters of A-Z a-z 0-9 . _ : - "
                "starting with a letter or digit",
            )
        )
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_DATA_STREAM_NAME_CHARS):
        errors.append(
            field_error(
                "/name",
                "invalid",
                f"name must be a string of at most {MAX_DATA_STREAM_NAME_CHARS} characters",
            )
        )
    elif name is not None and (problem := text_problem(name)) is not None:
        errors.append(field_error("/name", problem.code, f"name {problem.message}"))
    currency = body.get("currency", "USD")
    if not isinstance(currency, str) or currency_exponent(currency) is None:
        errors.append(
            field_error(
                "/currency", "invalid_currency", "currency must be an ISO 4217 code such as USD"
            )
        )
    if errors:
        raise Problem(422, "validation-error", "the data stream is not valid", errors=errors)
    assert isinstance(key, str)  # checked above
    row = await request.app[STORE].create_data_stream(caller.environment_id, key, name, currency)
    if row is None:
        raise Problem(409, "conflict", f"a data stream with key {key!r} already exists")
    return json_response(
        render_data_stream(row), status=201, headers={"Location": f"/v1/data_streams/{key}"}
    )


async def list_data_streams(request: web.Request) -> web.Response:
    caller = caller_of(request)
    limit = page_limit(request)
    after = decode_cursor(request, "data_streams") or 0
    rows = await request.app[STORE].list_data_streams(caller.environment_id, after, limit)
    last = rows[-1].id if rows else None
    return json_response(page([render_data_stream(r) for r in rows], limit, "data_streams", last))


async def get_data_stream(request: web.Request) -> web.Response:
    caller = caller_of(request)
    key = request.match_info["key"]
    row = await request.app[STORE].get_data_stream(caller.environment_id, key)
    if row is None:
        raise not_found(f"data stream {key!r}")
    return json_response(render_data_stream(row))


async def list_records(request: web.Request) -> web.Response:
    caller = caller_of(request)
    limit = page_limit(request)
    after = decode_cursor(request, "records") or 0
    bulk_text = request.query.get("bulk_request_id")
    bulk_id = None
    if bulk_text is not None:
        bulk_id = parse_stored_int(bulk_text)
        if bulk_id is None:
            raise Problem(
                400,
                "invalid-parameter",
                "bulk_request_id must be a positive integer",
                errors=[parameter_error("bulk_request_id", "invalid", f"got {bulk_text!r}")],
            )
    rows = await request.app[STORE].list_records(
        caller.environment_id,
        data_stream_key=request.query.get("data_stream_key"),
        bulk_request_id=bulk_id,
        after_id=after,
        limit=limit,
    )
    last = rows[-1].id if rows else None
    return json_response(page([render_record(r) for r in rows], limit, "records", last))
