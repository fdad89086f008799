"""The dashboard's Retry button follows the API's `can_retry` when ANOTHER member of
the open request's chain changes (issue 11.5).

The server sends an event only for the member that changed; the open request's
can_retry depends on the whole chain, so the page re-reads the open request when a
member of its chain appears or changes status. Everything here is changed through the
API behind the page's back: only that re-read can update the button.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests import test_dashboard as dashboard
from tests.test_dashboard import _enter_key, _list_item
from tests.test_dashboard_live import (
    LIVE_ROWS,
    UPDATE_TIMEOUT_MS,
    _call,
    _create_stream,
    _csv,
    _upload,
    _wait_status,
)

base_url = dashboard.base_url
page = dashboard.page


def _post(base_url: str, path: str, expect_status: tuple[int, ...]) -> dict[str, object]:
    status, body = _call(base_url, "POST", path)
    assert status in expect_status, body
    assert isinstance(body, dict)
    return body


def test_retry_button_follows_the_chain(page: tuple[Page, list[str]], base_url: str) -> None:
    pg, problems = page
    pg.goto("/")
    _enter_key(pg)
    _create_stream(base_url)
    root = _upload(base_url, "chain.csv", _csv("chain", LIVE_ROWS))
    _post(base_url, f"/v1/bulk_requests/{root}/cancel", (200, 202))
    _wait_status(base_url, root, ("cancelled",))

    _list_item(pg, root).get_by_role("link", name=f"Request #{root}").click()
    detail = pg.locator("#detail")
    expect(detail.locator("#detail-badge")).to_have_text("cancelled")
    retry = detail.locator("#retry-button")
    expect(retry).to_be_enabled()

    # A retry made elsewhere: the root may not be retried while it runs.
    child = _post(base_url, f"/v1/bulk_requests/{root}/retry", (201,))["id"]
    expect(retry).to_be_disabled(timeout=UPDATE_TIMEOUT_MS)
    expect(detail.locator("#action-help")).to_contain_text(f"Already retried as request #{child}")

    # The retry is cancelled elsewhere: the root may be retried again, though no event
    # about the root itself was sent.
    _post(base_url, f"/v1/bulk_requests/{child}/cancel", (200, 202))
    _wait_status(base_url, int(str(child)), ("cancelled",))
    expect(retry).to_be_enabled(timeout=UPDATE_TIMEOUT_MS)
    assert problems == []
