"""One webhook send: the Standard Webhooks headers, one POST, its outcome.

The signature is made with the Standard Webhooks project's own package (`standardwebhooks`,
the one receivers verify with): `v1,` + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"
keyed with the secret's decoded bytes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook
from yarl import URL

from server.clock import now_rfc3339
from server.constants import MAX_WEBHOOK_ERROR_CHARS, WEBHOOK_TIMEOUT_SECONDS
from server.models import AttemptOutcome, DueDelivery
from server.webhooks.addresses import PrivateAddress, literal_address, refuse_if_private

USER_AGENT = "bulk-requests-webhooks/1"


def signed_headers(event_id: str, secret: str, body: str, timestamp: int) -> dict[str, str]:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(event_id, moment, body),
    }


def _error(text: str) -> str:
    return (
        text if len(text) <= MAX_WEBHOOK_ERROR_CHARS else text[: MAX_WEBHOOK_ERROR_CHARS - 1] + "…"
    )


async def send(
    session: aiohttp.ClientSession, delivery: DueDelivery, *, deny_private: bool
) -> AttemptOutcome:
    """POST the delivery once. Never raises for anything the receiver or network does:
    every way it can go wrong is an attempt with an error."""
    at = now_rfc3339()
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        if deny_private:
            # Names are checked by the session's resolver; aiohttp never resolves literals.
            host = URL(delivery.url).host or ""
            literal = literal_address(host)
            if literal is not None:
                refuse_if_private(host, [literal])
        headers = signed_headers(
            delivery.event_id, delivery.secret, delivery.body, int(time.time())
        )
        async with session.post(
            delivery.url,
            data=delivery.body.encode(),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS),
        ) as response:
            status = response.status
            if 300 <= status < 400:
                error = f"HTTP {status}: redirects are not followed"
            elif not 200 <= status < 300:
                error = f"HTTP {status}"
    except TimeoutError:
        error = f"no answer within {WEBHOOK_TIMEOUT_SECONDS:g} s"
    except aiohttp.ClientConnectorError as exc:
        # The resolver's refusal arrives wrapped: say it as it is.
        cause = exc.os_error
        error = _error(
            str(cause) if isinstance(cause, PrivateAddress) else f"{type(exc).__name__}: {exc}"
        )
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        error = _error(f"{type(exc).__name__}: {exc}")
    duration_ms = round((time.monotonic() - started) * 1000)
    return AttemptOutcome(delivery.id, at, status, error, duration_ms)
