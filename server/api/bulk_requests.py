"""Bulk requests: submit records, show, list, row errors, cancel, retry (SPEC §6, §7)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from aiohttp import web

from server import bulk_requests as domain
from server.api.common import (
    LARGE_BODIES,
    POOL,
    SETTINGS,
    STORE,
    STREAMS,
    decode_cursor,
    idempotency_key,
    json_response,
    page,
    page_limit,
    parse_json_document,
    path_id,
    query_choice,
    query_flag,
    read_json_text,
    require_object,
    run_at_field,
    translate_domain_errors,
)
from server.api.error_export import stream_errors_csv
from server.api.render import render_bulk_request, render_row_error, render_summary
from server.constants import (
    ABOVE_EVERY_ID,
    LARGE_JSON_BODY_BYTES,
    MAX_LISTED_FIELD_ERRORS,
    MAX_RECORDS_PER_REQUEST,
    PARSE_CHUNK_BYTES,
)
from server.db.port import IdempotencyClaim
from server.http.auth import caller_of
from server.http.errors import Problem, field_error, not_found
from server.ingest.fast_records import (
    decode_fast_body,
    deferrable_body,
    every_record,
    skips_conflicts,
    stream_keys,
)
from server.ingest.json_checks import (
    BodyIssue,
    duplicate_key_issue,
    proves_no_duplicate_keys,
    record_issues,
    scan_records,
    shallow_count,
)
from server.ingest.json_document import JsonDocument, rewrite_amounts
from server.models import BulkRequest
from server.scheduling import run_at_text
from server.types import JSON, Mode, OnConflict, Source, Status

REPLAYED = {"Idempotent-Replayed": "true"}


def _claim(key: str | None, operation: str, payload: object) -> IdempotencyClaim | None:
    if key is None:
        return None
    return IdempotencyClaim(key, domain.fingerprint(operation, payload))


@dataclass(frozen=True, slots=True)
class _Submission:
    records: list[JSON]
    on_conflict: str
    run_at: datetime | None
    mode: Mode


def _validate_submission(body: JSON) -> _Submission:
    errors: list[JSON] = []
    records = body.get("records")
    if records is None:
        errors.append(field_error("/records", "required", "records is required"))
    elif not isinstance(records, list):
        errors.append(field_error("/records", "invalid_type", "records must be an array"))
    elif not records:
        errors.append(field_error("/records", "too_short", "records must not be empty"))
    elif len(records) > MAX_RECORDS_PER_REQUEST:
        errors.append(
            field_error(
                "/records",
                "too_long",
                f"at most {MAX_RECORDS_PER_REQUEST} records per request, got {len(records)}; "
                "upload a file for more",
            )
        )
    else:
        bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
        errors.extend(
            field_error(f"/records/{i}", "invalid_type", "a record must be a JSON object")
            for i in bad[:MAX_LISTED_FIELD_ERRORS]
        )
    on_conflict = body.get("on_conflict", "skip")
    # isinstance first: an unhashable value (`{}`) would raise in the set lookup (500).
    if not isinstance(on_conflict, str) or on_conflict not in frozenset(OnConflict):
        errors.append(
            field_error("/on_conflict", "invalid_choice", 'on_conflict must be "skip" or "error"')
        )
    # null is "not scheduled", like leaving it out.
    run_at = None if body.get("run_at") is None else run_at_field(body["run_at"], errors)
    mode = body.get("mode", Mode.PARTIAL)
    if not isinstance(mode, str) or mode not in frozenset(Mode):
        errors.append(field_error("/mode", "invalid_choice", 'mode must be "partial" or "atomic"'))
    if errors:
        raise Problem(422, "validation-error", "the bulk request is not valid", errors=errors)
    assert isinstance(records, list)
    return _Submission(records, on_conflict, run_at, Mode(mode))


def _body_problem(issues: list[BodyIssue]) -> Problem:
    return Problem(
        422,
        "validation-error",
        "an object in the request body names a key twice"
        if all(i.code == "duplicate_key" for i in issues)
        else "the bulk request has values that cannot be stored",
        errors=[field_error(i.pointer, i.code, i.message) for i in issues],
    )


def _check_structure(document: JsonDocument, body: JSON, records: list[JSON]) -> None:
    """Depth, storability and duplicate keys (json_checks), cheapest proof first.

    Most bodies are cleared by one count over their text; a body with nested values
    takes one walk that checks and counts them; only one whose strings hold `: { [`
    (a time `12:30`, a URL), which counting cannot tell from a dropped key, is parsed a
    second time, exactly (counting those characters in Python measured slower than the
    C parser). See README, "Input bounds".
    """
    structural = document.structural_count()
    shallow = shallow_count(body, records)
    if proves_no_duplicate_keys(structural, shallow):
        return  # and nothing nests: every value is a scalar that orjson checks at staging
    scan = scan_records(records)
    issues = scan.issues
    if not issues and not proves_no_duplicate_keys(structural, shallow + scan.nested_count):
        duplicate = duplicate_key_issue(document.raw)
        issues = [duplicate] if duplicate is not None else []
    if issues:
        raise _body_problem(issues)


async def submit_records(request: web.Request) -> web.Response:
    length = request.content_length
    if length is not None and length <= LARGE_JSON_BODY_BYTES:
        return await _submit_records(request)
    # Read, parsed and staged one large body at a time: each costs ~10× its size.
    async with request.app[LARGE_BODIES]:
        return await _submit_records(request)


def _accepted(row: BulkRequest, replayed: bool) -> web.Response:
    if replayed:
        return json_response(render_summary(row), status=200, headers=REPLAYED)
    return json_response(
        render_summary(row), status=202, headers={"Location": f"/v1/bulk_requests/{row.id}"}
    )


def _fingerprint_payload(raw: bytes) -> JSON:
    """The body as the precise path fingerprints it (parsed, amounts as canonical text),
    so a key's fingerprint does not depend on which path accepted the body."""
    body: JSON = parse_json_document(raw).value
    rewrite_amounts(body["records"])
    return body


async def _submit_proved(request: web.Request, raw: bytes) -> web.Response | None:
    """The fast path: when every row of the body is proved ordinary in one C pass
    (server/ingest/fast_records.py), stage the records validated, skipping the parse,
    the body checks and the worker's validation. None: the precise path decides (any
    row it cannot prove, on_conflict other than skip), which words every error."""
    decoded = decode_fast_body(raw)
    if (
        decoded is None
        or not 0 < len(decoded.records) <= MAX_RECORDS_PER_REQUEST
        or not skips_conflicts(decoded)
    ):
        return None
    environment_id = caller_of(request).environment_id
    store = request.app[STORE]
    keys = stream_keys(decoded)
    known = await request.app[STREAMS].lookup(store, environment_id, keys)
    records = every_record(decoded, known)
    if records is None:
        return None
    del decoded
    key = idempotency_key(request)
    claim = _claim(key, "records.bulk", _fingerprint_payload(raw)) if key is not None else None
    with translate_domain_errors():
        row, replayed = await domain.submit_validated_records(
            store, environment_id, records, {k: known[k] for k in keys}, claim
        )
    return _accepted(row, replayed)


async def _submit_deferred(request: web.Request, raw: bytes) -> web.Response | None:
    """The body staged as it arrived, when nothing in it can refuse or shape the whole
    request beyond what one msgspec pass proves (fast_records.deferrable_body): the
    answer is then 202 whatever its rows hold, and the worker finishes each row. None:
    decide here (a key's fingerprint needs the parsed body; a body over one chunk)."""
    if len(raw) > PARSE_CHUNK_BYTES or idempotency_key(request) is not None:
        return None
    deferrable = deferrable_body(raw, MAX_RECORDS_PER_REQUEST)
    if deferrable is None:
        return None
    with translate_domain_errors():
        row = await domain.submit_raw_body(
            request.app[STORE], caller_of(request).environment_id, raw, deferrable
        )
    return _accepted(row, replayed=False)


async def _submit_records(request: web.Request) -> web.Response:
    raw = await read_json_text(request)
    # Worker batches wait while this runs, within a bound (server/jobs/accept_gate.py):
    # from the body's arrival on, so a client sending slowly holds nothing back.
    with request.app[POOL].accepts.accepting():
        return await _accept_records(request, raw)


async def _accept_records(request: web.Request, raw: bytes) -> web.Response:
    caller = caller_of(request)
    deferred = await _submit_deferred(request, raw)
    if deferred is not None:
        return deferred
    proved = await _submit_proved(request, raw)
    if proved is not None:
        return proved
    document = parse_json_document(raw)
    del raw
    body = require_object(document.value, {"records", "on_conflict", "run_at", "mode"})
    submission = _validate_submission(body)
    records, on_conflict, mode = submission.records, submission.on_conflict, submission.mode
    # The fingerprint compares the instant, not its spelling (Z or +01:00); absent and
    # null are the same request.
    body.pop("run_at", None)
    if submission.run_at is not None:
        body["run_at"] = run_at_text(submission.run_at)
    key = idempotency_key(request)
    # Amounts are staged as exact decimal text when that matters: Decimals and big ints
    # cannot be staged as JSON numbers, and the idempotency fingerprint compares amounts
    # by value. Otherwise every number is a float or int that stages (and validates)
    # exactly as it is, and this loop (~0.5 ms per 1000 rows) is skipped.
    if document.may_hold_decimals or key is not None:
        rewrite_amounts(records)
    _check_structure(document, body, records)
    body_bytes = len(document.raw)
    del document  # its text (the body's size again) is not needed while staging
    try:
        # The fingerprint covers the amounts as staged (text), like the rows themselves.
        claim = _claim(key, "records.bulk", body)
        with translate_domain_errors():
            row, replayed = await domain.submit_records(
                request.app[STORE],
                caller.environment_id,
                records,
                on_conflict,
                claim,
                body_bytes,
                run_at=submission.run_at,
                mode=mode,
            )
    except orjson.JSONEncodeError:
        # A body the cheap proof cleared can still hold a lone surrogate or a number
        # orjson cannot write (the transaction rolled back, or never began): name each
        # one. Only computed after staging failed, so well-formed bodies never pay.
        issues = record_issues(records)
        if not issues:
            raise
        raise _body_problem(issues) from None
    return _accepted(row, replayed)


async def _load(request: web.Request) -> BulkRequest:
    caller = caller_of(request)
    request_id = path_id(request)
    row = await request.app[STORE].get_bulk_request(caller.environment_id, request_id)
    if row is None:
        raise not_found(f"bulk request {request_id}")
    return row


async def _payloads(request: web.Request, rows: list[BulkRequest]) -> list[JSON]:
    retryable = await domain.retryable_requests(
        request.app[STORE], caller_of(request).environment_id, rows
    )
    stuck_after = request.app[SETTINGS].stuck_after
    return [render_bulk_request(r, stuck_after, can_retry=r.id in retryable) for r in rows]


async def _payload(request: web.Request, row: BulkRequest) -> JSON:
    (payload,) = await _payloads(request, [row])
    return payload


async def get_bulk_request(request: web.Request) -> web.Response:
    return json_response(await _payload(request, await _load(request)))


async def list_bulk_requests(request: web.Request) -> web.Response:
    caller = caller_of(request)
    limit = page_limit(request)
    before = decode_cursor(request, "bulk_requests")
    rows = await request.app[STORE].list_bulk_requests(
        caller.environment_id,
        status=query_choice(request, "status", Status),
        source=query_choice(request, "source", Source),
        data_stream_key=request.query.get("data_stream_key"),
        before_id=before if before is not None else ABOVE_EVERY_ID,
        limit=limit,
        scheduled=query_flag(request, "scheduled"),
    )
    last = rows[-1].id if rows else None
    return json_response(page(await _payloads(request, rows), limit, "bulk_requests", last))


async def list_row_errors(request: web.Request) -> web.StreamResponse:
    row = await _load(request)
    requested_format = request.query.get("format")
    if requested_format not in (None, "json", "csv"):
        raise Problem(400, "invalid-parameter", "format must be json or csv")
    # The same cursor works in both formats: it is a row position.
    after = decode_cursor(request, "errors")
    start = after if after is not None else -1
    if requested_format == "csv" or (
        requested_format is None and "text/csv" in request.headers.get("Accept", "")
    ):
        # The CSV is the whole list unless a `limit` asks for one page (see error_export).
        limit = page_limit(request) if "limit" in request.query else None
        return await stream_errors_csv(request, row, after=start, limit=limit)
    limit = page_limit(request)
    errors = await request.app[STORE].list_row_errors(row.id, start, limit)
    last = errors[-1].row if errors else None
    return json_response(page([render_row_error(e) for e in errors], limit, "errors", last))


async def cancel_bulk_request(request: web.Request) -> web.Response:
    caller = caller_of(request)
    request_id = path_id(request)
    with translate_domain_errors():
        result = await domain.cancel(request.app[STORE], caller.environment_id, request_id)
    if result is None:
        raise not_found(f"bulk request {request_id}")
    row, outcome = result
    if outcome == "requested":
        return json_response(await _payload(request, row), status=202)
    return json_response(await _payload(request, row), status=200)


async def retry_bulk_request(request: web.Request) -> web.Response:
    caller = caller_of(request)
    request_id = path_id(request)
    claim = _claim(idempotency_key(request), "bulk_requests.retry", {"parent": request_id})
    with translate_domain_errors():
        result = await domain.retry(request.app[STORE], caller.environment_id, request_id, claim)
    if result is None:
        raise not_found(f"bulk request {request_id}")
    row, replayed = result
    if replayed:
        return json_response(await _payload(request, row), status=200, headers=REPLAYED)
    return json_response(
        await _payload(request, row),
        status=201,
        headers={"Location": f"/v1/bulk_requests/{row.id}"},
    )
