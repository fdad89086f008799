"""Webhook endpoints and their delivery log (SPEC §13, README "Webhooks")."""

from __future__ import annotations

import base64
import dataclasses
import secrets
from typing import Any

from aiohttp import web
from yarl import URL

from server import bulk_requests as domain
from server.api.common import (
    SETTINGS,
    decode_cursor,
    json_response,
    page,
    page_limit,
    path_id,
    query_choice,
    read_json_body,
    require_object,
)
from server.api.render import render_bulk_request
from server.constants import (
    ABOVE_EVERY_ID,
    MAX_WEBHOOK_DESCRIPTION_CHARS,
    MAX_WEBHOOK_URL_CHARS,
    WEBHOOK_SECRET_BYTES,
)
from server.db.port import Storage
from server.http.auth import caller_of
from server.http.errors import Problem, field_error, not_found
from server.ids import parse_stored_int
from server.ingest.validation import text_problem
from server.models import (
    BulkRequest,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)
from server.types import JSON
from server.webhooks.addresses import check_at_create
from server.webhooks.dispatcher import WebhookDispatcher

WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)

ALL_EVENTS = [event.value for event in WebhookEventType]
CREATE_FIELDS = {"url", "events", "description"}
UPDATE_FIELDS = {"url", "events", "description", "enabled"}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode()


# --- rendering ---------------------------------------------------------------------------


async def render_event_data(storage: Storage, stuck_after: float, request: BulkRequest) -> JSON:
    """A webhook's `data`: the bulk request as GET /v1/bulk_requests/{id} renders it, in
    the state the event left it (the outbox row; the data stream's key, which a write's
    row lacks, from the request as stored)."""
    if not request.has_data_stream_key:
        current = await storage.get_bulk_request_any_environment(request.id)
        key = current.data_stream_key if current is not None else None
        request = dataclasses.replace(request, data_stream_key=key, has_data_stream_key=True)
    retryable = await domain.retryable_requests(storage, request.environment_id, [request])
    return render_bulk_request(request, stuck_after, can_retry=request.id in retryable)


def render_endpoint(endpoint: WebhookEndpoint) -> JSON:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.event_types(),
        "description": endpoint.description,
        "enabled": bool(endpoint.enabled),
        "created_at": endpoint.created_at,
        # Set while the circuit is open: nothing is sent to it before then.
        "circuit_open_until": endpoint.circuit_open_until,
    }


def render_attempt(attempt: WebhookAttempt) -> JSON:
    return {
        "at": attempt.at,
        "http_status": attempt.http_status,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
    }


def render_delivery(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> JSON:
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "type": delivery.event_type,
        "bulk_request_id": delivery.bulk_request_id,
        "status": delivery.status,
        "created_at": delivery.created_at,
        "next_attempt_at": delivery.next_attempt_at,
        "attempts": [render_attempt(a) for a in attempts],
    }


# --- input -------------------------------------------------------------------------------


async def _url_errors(value: Any, deny_private: bool) -> list[JSON]:
    problem = "url must be an absolute http or https URL with a host"
    if not isinstance(value, str):
        return [field_error("/url", "invalid_type", "url must be a string")]
    if len(value) > MAX_WEBHOOK_URL_CHARS or not value.isascii() or not value.isprintable():
        return [
            field_error(
                "/url",
                "invalid_url",
                f"url must be at most {MAX_WEBHOOK_URL_CHARS} printable ASCII characters",
            )
        ]
    try:
        url = URL(value)
        port = url.port  # a port out of range raises here
    except ValueError:
        return [field_error("/url", "invalid_url", problem)]
    if url.scheme not in {"http", "https"} or not url.host or port is None or " " in value:
        return [field_error("/url", "invalid_url", problem)]
    if url.user is not None or url.password is not None:
        return [
            field_error(
                "/url", "invalid_url", "url must not hold credentials (sign, do not log in)"
            )
        ]
    if deny_private and (why := await check_at_create(url.host)) is not None:
        return [
            field_error(
                "/url", "private_address", f"this server sends to public addresses only: {why}"
            )
        ]
    return []


def _events_errors(value: Any) -> list[JSON]:
    if not isinstance(value, list) or not value:
        return [
            field_error(
                "/events", "invalid_type", "events must be a non-empty array of event types"
            )
        ]
    errors = []
    for index, item in enumerate(value):
        if item not in ALL_EVENTS:
            errors.append(
                field_error(
                    f"/events/{index}",
                    "unknown_event_type",
                    f"unknown event type; use {', '.join(ALL_EVENTS)}",
                )
            )
        elif item in value[:index]:
            errors.append(field_error(f"/events/{index}", "duplicate", "listed twice"))
    return errors


def _description_errors(value: Any) -> list[JSON]:
    if value is None:
        return []
    if not isinstance(value, str) or len(value) > MAX_WEBHOOK_DESCRIPTION_CHARS:
        return [
            field_error(
                "/description",
                "invalid",
                f"description must be a string of at most {MAX_WEBHOOK_DESCRIPTION_CHARS} "
                "characters",
            )
        ]
    if (problem := text_problem(value)) is not None:
        return [field_error("/description", problem.code, f"description {problem.message}")]
    return []


def _refuse(errors: list[JSON]) -> None:
    if errors:
        raise Problem(422, "validation-error", "the webhook endpoint is not valid", errors=errors)


async def _load_endpoint(request: web.Request) -> WebhookEndpoint:
    endpoint_id = path_id(request, "webhook endpoint")
    endpoint = await request.app[WEBHOOKS].webhooks.get_endpoint(
        caller_of(request).environment_id, endpoint_id
    )
    if endpoint is None:
        raise not_found(f"webhook endpoint {endpoint_id}")
    return endpoint


# --- handlers ----------------------------------------------------------------------------


async def create_endpoint(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    body = require_object(await read_json_body(request), CREATE_FIELDS)
    deny_private = request.app[SETTINGS].webhook_deny_private
    errors = []
    if "url" not in body:
        errors.append(field_error("/url", "required", "url is required"))
    else:
        errors += await _url_errors(body["url"], deny_private)
    events = body.get("events", ALL_EVENTS)
    errors += _events_errors(events)
    errors += _description_errors(body.get("description"))
    _refuse(errors)
    secret = new_secret()
    endpoint = await request.app[WEBHOOKS].webhooks.create_endpoint(
        caller.environment_id,
        url=body["url"],
        events=events,
        description=body.get("description"),
        secret=secret,
    )
    # The only answer that holds the secret: it is never shown again.
    return json_response(
        {**render_endpoint(endpoint), "secret": secret},
        status=201,
        headers={"Location": f"/v1/webhook_endpoints/{endpoint.id}"},
    )


async def list_endpoints(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    limit = page_limit(request)
    after = decode_cursor(request, "webhook_endpoints") or 0
    rows = await request.app[WEBHOOKS].webhooks.list_endpoints(caller.environment_id, after, limit)
    last = rows[-1].id if rows else None
    return json_response(page([render_endpoint(r) for r in rows], limit, "webhook_endpoints", last))


async def get_endpoint(request: web.Request) -> web.StreamResponse:
    return json_response(render_endpoint(await _load_endpoint(request)))


async def update_endpoint(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    endpoint_id = path_id(request, "webhook endpoint")
    body = require_object(await read_json_body(request), UPDATE_FIELDS)
    errors = []
    if "url" in body:
        errors += await _url_errors(body["url"], request.app[SETTINGS].webhook_deny_private)
    if "events" in body:
        errors += _events_errors(body["events"])
    if "description" in body:
        errors += _description_errors(body["description"])
    if "enabled" in body and not isinstance(body["enabled"], bool):
        errors.append(field_error("/enabled", "invalid_type", "enabled must be true or false"))
    _refuse(errors)
    endpoint = await request.app[WEBHOOKS].webhooks.update_endpoint(
        caller.environment_id,
        endpoint_id,
        url=body.get("url"),
        events=body.get("events"),
        enabled=body.get("enabled"),
        description=(body["description"],) if "description" in body else None,
    )
    if endpoint is None:
        raise not_found(f"webhook endpoint {endpoint_id}")
    return json_response(render_endpoint(endpoint))


async def delete_endpoint(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    endpoint_id = path_id(request, "webhook endpoint")
    if not await request.app[WEBHOOKS].webhooks.delete_endpoint(caller.environment_id, endpoint_id):
        raise not_found(f"webhook endpoint {endpoint_id}")
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    endpoint = await _load_endpoint(request)
    limit = page_limit(request)
    before = decode_cursor(request, "webhook_deliveries")
    webhooks = request.app[WEBHOOKS].webhooks
    rows = await webhooks.list_deliveries(
        endpoint.id,
        status=query_choice(request, "status", DeliveryStatus),
        before_id=before if before is not None else ABOVE_EVERY_ID,
        limit=limit,
    )
    attempts = await webhooks.attempts_of(r.id for r in rows)
    last = rows[-1].id if rows else None
    data = [render_delivery(r, attempts.get(r.id, [])) for r in rows]
    return json_response(page(data, limit, "webhook_deliveries", last))


async def retry_delivery(request: web.Request) -> web.StreamResponse:
    endpoint = await _load_endpoint(request)
    text = request.match_info["delivery_id"]
    delivery_id = parse_stored_int(text)  # anything else names no delivery: 404
    dispatcher = request.app[WEBHOOKS]
    delivery = None if delivery_id is None else await dispatcher.redeliver(endpoint.id, delivery_id)
    if delivery is None:
        raise not_found(f"delivery {text!r} of webhook endpoint {endpoint.id}")
    attempts = await dispatcher.webhooks.attempts_of([delivery.id])
    return json_response(render_delivery(delivery, attempts.get(delivery.id, [])), status=202)
