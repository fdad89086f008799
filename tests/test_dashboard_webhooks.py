"""The dashboard's Webhooks card in real Chromium: add an endpoint (its secret shown once,
and gone with the key), see its deliveries with their status, send one again.

The server is a real `run.py` (tests/test_dashboard.py's pattern); the receiver is the
real one of tests/webhook_receiver.py, on its own event loop in a thread, since the sync
Playwright API and the receiver cannot share one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server_process import ServerProcess
from tests.test_dashboard import API_KEY, UNLABELLED_CONTROLS, _enter_key
from tests.test_dashboard import page as page  # the fixture, re-exported
from tests.webhook_receiver import Receiver, ThreadedReceiver

pytestmark = pytest.mark.browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path / "bulk.db",
        api_key=API_KEY,
        args=["--log-level", "WARNING", "--webhook-retry-base", "0.1"],
        log_dir=tmp_path,
    )
    try:
        process.start()
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()
        process.close()


@pytest.fixture
def base_url(server: ServerProcess) -> str:
    return server.url.rstrip("/")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    threaded = ThreadedReceiver()
    try:
        yield threaded.receiver
    finally:
        threaded.close()


def test_dashboard_webhooks_add_an_endpoint_and_see_its_deliveries(
    page: tuple[Page, list[str]],  # the fixture imported above
    server: ServerProcess,
    receiver: Receiver,
) -> None:
    pg, problems = page
    pg.goto("/")
    _enter_key(pg)
    card = pg.locator("#webhooks-section")
    expect(card.locator("#webhook-empty")).to_be_visible()

    # A bad URL is the API's 422, shown as a problem; nothing is added.
    pg.get_by_label("Endpoint URL (required)").fill("ftp://example.com/x")
    card.get_by_role("button", name="Add endpoint").click()
    expect(pg.locator("#alert")).to_contain_text("/url")
    expect(card.locator("#webhook-list li")).to_have_count(0)
    # Chromium logs that answer as a failed fetch: the one console error this test expects.
    expected = "status of 422 (Unprocessable Entity) ("
    problems[:] = [p for p in problems if not (expected in p and "/v1/webhook_endpoints" in p)]

    pg.get_by_label("Endpoint URL (required)").fill(receiver.url)
    pg.get_by_label("Description").fill("ledger sync")
    card.get_by_label("cancelled").uncheck()
    card.get_by_role("button", name="Add endpoint").click()
    secret = pg.locator("#webhook-secret")
    expect(secret).to_have_text(receiver_secret_pattern())
    receiver.secret = secret.inner_text()
    item = card.locator("#webhook-list li")
    expect(item).to_have_count(1)
    expect(item).to_contain_text(receiver.url)
    expect(item).to_contain_text("bulk_request.completed, bulk_request.failed · enabled")
    expect(item).to_contain_text("ledger sync")
    assert pg.evaluate(UNLABELLED_CONTROLS) == []

    server.post("/v1/data_streams", {"key": "bank", "currency": "USD"}, expect=201)
    row = {"date": "2024-01-31", "data_stream_key": "bank", "amount": "1.00"}
    request_id = server.post("/v1/records/bulk", {"records": [row]}, expect=202)["id"]
    deadline = time.monotonic() + 15
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.body["data"]["id"] for r in receiver.received] == [request_id]

    item.get_by_role("button", name=f"Deliveries of {receiver.url}").click()
    delivery = pg.locator("#webhook-deliveries-body tr")
    expect(delivery).to_have_count(1)
    expect(delivery).to_contain_text("bulk_request.completed")
    expect(delivery).to_contain_text(f"#{request_id}")
    expect(delivery.locator(".badge")).to_have_text("succeeded")
    expect(delivery).to_contain_text("HTTP 204")

    delivery.get_by_role("button", name="Send again").click()
    deadline = time.monotonic() + 15
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.duplicates() == [receiver.received[0].webhook_id]
    assert receiver.unverified == []
    card.get_by_role("button", name="Refresh").click()
    expect(delivery.locator("td").nth(4)).to_have_text("2")  # attempts

    # The one-time secret goes with the key.
    pg.get_by_role("button", name="Forget key").click()
    expect(secret).to_have_text("")
    expect(pg.locator("#webhook-secret-box")).to_be_hidden()
    problems.extend(pg.evaluate("window.__cspViolations"))
    assert problems == [], "\n".join(problems)


def receiver_secret_pattern() -> re.Pattern[str]:
    return re.compile(r"^whsec_[A-Za-z0-9+/]{32}$")  # base64 of 24 bytes, no padding
