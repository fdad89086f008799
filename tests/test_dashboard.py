"""The dashboard in a real browser (Debian's Chromium driven by Playwright).

The server runs as a real `python run.py` subprocess on a free port and a temporary
database: the sync Playwright API cannot run inside pytest-aiohttp's event loop, and a
subprocess is exactly what a user runs. One worker and one row per batch keep a large
upload `processing` long enough to cancel it from the page, without any sleep in the
product code.

The test never skips: scripts/install-test-deps.sh installs Chromium (the README's test
command and .ci/run start with it), and a missing browser must fail.
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from server.api.dashboard import IMMUTABLE, REVALIDATE, STATIC_DIR
from server.ingest.nacha_codes import NachaOption
from tests.conftest import SHARED, Api
from tests.server_process import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "bk_dashboard_test_key_0123456789abcdef"
# Polling fallback refreshes every 1–2 s, so 15 s leaves room on a slow CI machine.
UI_TIMEOUT_MS = 15_000
# Rows of the file that is cancelled: at one row per batch it takes a minute or more to
# process, while the page cancels it within seconds.
BIG_FILE_ROWS = 150_000
GOOD_ROWS = 100
BAD_ROWS = 60  # more than one page (50) of row errors, so paging is exercised
# The event-stream endpoints answer 404 on a server without them; the page then polls.
# Chromium logs every failed fetch as a console error, so only these are tolerated.
# A NACHA file that only the relaxation allow_invalid_check_digit lets through.
RELAXED_NACHA = (
    SHARED / "nacha" / "public" / "relaxed" / "ppd-debit-invalid-entryDetail-checkDigit.ach"
)
EVENTS_URL = re.compile(r"/v1/(?:events|bulk_requests/\d+/events)$")

# Recorded before any page script runs: CSP and Trusted Types violations as they happen.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
});
"""

# A file dropped on the drop zone, built in the page: a real drag from the desktop is
# not something a headless browser can do, but the DataTransfer is the same object.
MAKE_BIG_FILE_DROP = """
(rows) => {
  const lines = ["date,amount,description,external_id"];
  for (let i = 0; i < rows; i++) lines.push(`2024-05-01,${i % 1000}.25,bulk row ${i},big-${i}`);
  const file = new File([lines.join("\\n") + "\\n"], "big.csv", { type: "text/csv" });
  const transfer = new DataTransfer();
  transfer.items.add(file);
  return transfer;
}
"""

# Every form control and progress bar has a label, every button a name.
UNLABELLED_CONTROLS = """
() => {
  const named = (el) =>
    (el.labels && el.labels.length > 0) ||
    (el.getAttribute("aria-label") || "").trim() !== "" ||
    el.hasAttribute("aria-labelledby");
  const bad = [];
  for (const el of document.querySelectorAll("input, select, textarea, progress")) {
    if (!named(el)) bad.push(el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll("button")) {
    const name = el.textContent.trim() || el.getAttribute("aria-label");
    if (!name) bad.push(el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll("[tabindex]")) {
    if (Number(el.getAttribute("tabindex")) > 0) bad.push(`positive tabindex: ${el.id}`);
  }
  return bad;
}
"""


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    # One worker taking one row per batch: requests stay processing long enough to be
    # cancelled from the page, with no sleeps in the product.
    server = ServerProcess(
        tmp_path / "bulk.db",
        api_key=API_KEY,
        args=["--workers", "1", "--batch-size", "1", "--log-level", "WARNING"],
        log_dir=tmp_path,
    )
    try:
        yield server.start().url.rstrip("/")
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        server.close()
        print(f"server log:\n{server.tail()}")


@contextlib.contextmanager
def open_page(base_url: str, **context_options: Any) -> Iterator[tuple[Page, list[str]]]:
    """A page of Debian's Chromium on `base_url` and the problems it reported (console
    errors, page errors); none may be left when the test ends. `context_options` go to
    `browser.new_context` (a time zone, downloads)."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: run `sh scripts/install-test-deps.sh` (Debian's chromium), "
        "as the README's test command and .ci/run do; this test never downloads a browser"
    )
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if "404" in message.text and EVENTS_URL.search(url):
            return
        problems.append(f"console error: {message.text} ({url})")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(
                base_url=base_url, viewport={"width": 1280, "height": 900}, **context_options
            )
            context.add_init_script(RECORD_CSP_VIOLATIONS)
            pg = context.new_page()
            pg.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            pg.on("console", on_console)
            pg.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            yield pg, problems
            context.close()
        finally:
            browser.close()
    assert problems == [], "\n".join(problems)


@pytest.fixture
def page(base_url: str) -> Iterator[tuple[Page, list[str]]]:
    with open_page(base_url, accept_downloads=True) as opened:
        yield opened


def _has_event_streams(base_url: str) -> bool:
    """Whether this server has `GET /v1/events`; without it the page polls."""
    # No proxy from the environment may see loopback test traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{base_url}/v1/events", headers={"X-API-KEY": API_KEY})
    try:
        with opener.open(request, timeout=10) as response:
            return response.headers.get_content_type() == "text/event-stream"
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return False
        raise


def _enter_key(page: Page) -> None:
    key_input = page.get_by_label("API key", exact=True)
    key_input.focus()
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#key-section")).to_be_hidden()
    # API_KEY is a chosen key (not bk_<public id>_<secret>): none of it is shown.
    expect(page.locator("#key-prefix")).to_have_text("(chosen key)")


def _create_stream_and_upload(page: Page, csv_path: Path) -> int:
    """Create data stream `checking` from the form, upload the CSV from the file input."""
    page.get_by_label("Key (required)", exact=True).fill("checking")
    page.get_by_label("Name", exact=True).fill("Checking account")
    page.get_by_role("button", name="Create stream").click()
    expect(page.locator("#stream-result")).to_have_text("Created data stream checking (USD).")
    expect(page.get_by_label("Data stream key", exact=True)).to_have_value("checking")
    _write_csv(csv_path)
    page.set_input_files("#file-input", csv_path)
    expect(page.locator("#file-name")).to_contain_text(csv_path.name)
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#upload-progress")).to_have_js_property("value", 100)
    expect(page.locator("#upload-result")).to_contain_text(f"Uploaded {csv_path.name} as request #")
    return _request_id(page)


def _request_id(page: Page) -> int:
    """The id of the request the last upload created, from the link the page shows."""
    link = page.locator("#upload-result a")
    expect(link).to_have_attribute("href", re.compile(r"^#/requests/\d+$"))
    href = link.get_attribute("href")
    assert href is not None
    return int(href.rsplit("/", 1)[1])


def _list_item(page: Page, request_id: int) -> Any:
    return page.locator(f'#request-list li[data-id="{request_id}"]')


def _write_csv(path: Path) -> None:
    lines = ["date,amount,currency,description,external_id"]
    for i in range(GOOD_ROWS + BAD_ROWS):
        # Every other row of the first 2 * BAD_ROWS has an impossible date.
        bad = i % 2 == 0 and i < 2 * BAD_ROWS
        date = "2024-02-30" if bad else "2024-05-01"
        lines.append(f'{date},{i}.50,USD,"Row {i}, quoted",small-{i}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.browser
def test_dashboard_end_to_end(page: tuple[Page, list[str]], base_url: str, tmp_path: Path) -> None:
    pg, problems = page
    pg.goto("/")

    # --- Key form: labelled, keyboard-operable, focus visible ----------------------
    expect(pg).to_have_title("Bulk requests")
    pg.keyboard.press("Tab")
    expect(pg.locator(".skip-link")).to_be_focused()
    outline = pg.locator(".skip-link").evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none"
    expect(pg.get_by_label("API key", exact=True)).to_have_attribute("type", "password")
    _enter_key(pg)
    live = "Live" if _has_event_streams(base_url) else "Updating every 2 s"
    expect(pg.locator("#live-state")).to_have_text(live)
    expect(pg.locator("#list-empty")).to_be_visible()
    assert pg.evaluate("sessionStorage.getItem('bulk-requests.api-key')") == API_KEY
    assert API_KEY not in pg.url

    # --- A data stream created from the page, a CSV uploaded through the file input --
    small_id = _create_stream_and_upload(pg, tmp_path / "records.csv")
    item = _list_item(pg, small_id)
    expect(item.locator(".badge-completed")).to_have_text("completed")
    expect(item.locator("progress")).to_have_js_property("value", 100)
    expect(item.locator(".progress-text")).to_have_text("100 %")
    expect(item).to_contain_text(f"{GOOD_ROWS + BAD_ROWS} of {GOOD_ROWS + BAD_ROWS} processed")
    expect(item).to_contain_text(f"{BAD_ROWS} failed")

    # --- Its details: counters, timestamps, paginated row errors, CSV download -------
    item.get_by_role("link", name=f"Request #{small_id}").click()
    assert pg.url.endswith(f"#/requests/{small_id}")
    detail = pg.locator("#detail")
    expect(detail.locator("#detail-title")).to_have_text(f"Bulk request #{small_id}")
    expect(detail.locator("#detail-title")).to_be_focused()
    expect(detail.locator("#detail-badge")).to_have_text("completed")
    counters = detail.locator("#detail-counters")
    expect(counters).to_contain_text(f"Total{GOOD_ROWS + BAD_ROWS:,}")
    expect(counters).to_contain_text(f"Failed{BAD_ROWS}")
    expect(counters).to_contain_text(f"Successful{GOOD_ROWS}")
    info = detail.locator("#detail-info")
    expect(info).to_contain_text("CSV upload · records.csv")
    for term in ("Created", "Started", "Completed", "Last heartbeat"):
        expect(info.locator("dt", has_text=term).first).to_be_visible()
    expect(info.locator("time")).to_have_count(4)
    expect(detail.locator("#cancel-button")).to_be_disabled()
    expect(detail.locator("#retry-button")).to_be_disabled()

    rows = detail.locator("#row-errors-body tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("invalid_date")
    expect(detail.locator("#errors-page")).to_have_text("Errors 1–50")
    detail.get_by_role("button", name="Next page").click()
    expect(rows).to_have_count(BAD_ROWS - 50)
    expect(detail.locator("#errors-page")).to_have_text(f"Errors 51–{BAD_ROWS}")
    expect(detail.get_by_role("button", name="Next page")).to_be_hidden()
    detail.get_by_role("button", name="Previous page").click()
    expect(rows).to_have_count(50)

    with pg.expect_download() as download_info:
        detail.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.url.startswith("blob:"), download.url  # the key never goes in a URL
    assert download.suggested_filename == f"bulk-request-{small_id}-errors.csv"
    exported = Path(download.path()).read_text(encoding="utf-8").splitlines()
    assert exported[0].startswith("row,line,error_code,error_message,error_pointer,date,amount")
    assert len(exported) == 1 + BAD_ROWS
    assert ",invalid_date," in exported[1]

    # Escape closes the panel and gives focus back to the request's link.
    pg.locator("#detail-title").focus()
    pg.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    expect(item.get_by_role("link")).to_be_focused()

    # --- A large file dropped on the drop zone, then cancelled and retried -----------
    transfer = pg.evaluate_handle(MAKE_BIG_FILE_DROP, BIG_FILE_ROWS)
    zone = pg.locator("#drop-zone")
    zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    expect(zone).to_have_class(re.compile(r"\bis-dragover\b"))
    zone.dispatch_event("drop", {"dataTransfer": transfer})
    expect(zone).not_to_have_class(re.compile(r"\bis-dragover\b"))
    expect(pg.locator("#file-name")).to_contain_text("big.csv")
    pg.get_by_role("button", name="Upload", exact=True).click()
    expect(pg.locator("#upload-result")).to_contain_text("Uploaded big.csv as request #")
    big_id = _request_id(pg)
    assert big_id > small_id

    # Newest first: the big request is listed above the small one.
    expect(_list_item(pg, big_id)).to_be_visible()
    ids = pg.locator("#request-list > li").evaluate_all("els => els.map(e => +e.dataset.id)")
    assert ids.index(big_id) < ids.index(small_id)

    pg.locator("#upload-result a").click()  # the link in the upload message opens it
    expect(detail.locator("#detail-title")).to_have_text(f"Bulk request #{big_id}")
    expect(detail.locator("#detail-badge")).to_have_text("processing")
    # Live progress: the bar moves while the page is open (events or polling).
    bar = detail.locator("#detail-progress")
    first = bar.evaluate("el => el.value")
    pg.wait_for_function(
        "([el, first]) => el.hasAttribute('value') && el.value > first && el.value < 100",
        arg=[bar.element_handle(), first],
    )
    expect(detail.locator(".heartbeat-age")).to_have_text(re.compile(r"^\d+ s ago$"))
    retry = detail.locator("#retry-button")
    expect(retry).to_be_disabled()
    cancel = detail.get_by_role("button", name="Cancel request")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(detail.locator("#detail-badge")).to_have_text("cancelled")
    expect(_list_item(pg, big_id).locator(".badge-status")).to_have_text("cancelled")
    expect(detail.locator("#cancel-button")).to_be_disabled()
    counters_text = counters.inner_text()
    assert f"Total\n{BIG_FILE_ROWS:,}" in counters_text, counters_text

    # Retry from the keyboard: focus the button, press Enter.
    expect(retry).to_be_enabled()
    retry.focus()
    expect(retry).to_be_focused()
    pg.keyboard.press("Enter")
    family = detail.locator("#detail-family")
    expect(family).to_contain_text("Retried as request #")
    child_link = family.get_by_role("link")
    expect(child_link).to_have_count(1)
    child_id = int((child_link.get_attribute("href") or "").rsplit("/", 1)[1])
    assert child_id > big_id
    expect(_list_item(pg, child_id)).to_be_visible()
    expect(_list_item(pg, child_id)).to_contain_text(f"Retry of #{big_id}")
    # A parent with a running child cannot be retried again (the API would answer 409).
    expect(retry).to_be_disabled()
    expect(detail.locator("#action-help")).to_contain_text(
        f"Already retried as request #{child_id}"
    )

    child_link.click()
    expect(detail.locator("#detail-title")).to_have_text(f"Bulk request #{child_id}")
    expect(family).to_have_text(re.compile(rf"^Retry of request #{big_id}\.\s*$"))
    expect(family.get_by_role("link")).to_have_attribute("href", f"#/requests/{big_id}")
    expect(detail.locator("#detail-info")).to_contain_text(f"Retry of #{big_id}")
    # Stop the child too, so the server shuts down with nothing running.
    detail.get_by_role("button", name="Cancel request").click()
    expect(detail.locator("#detail-badge")).to_have_text("cancelled")

    # --- Accessibility basics over the whole page -----------------------------------
    assert pg.evaluate(UNLABELLED_CONTROLS) == []
    # Every badge reads its status as text, not by colour alone.
    badges = pg.locator("#request-list .badge:not([hidden])").all_inner_texts()
    assert {b.lower() for b in badges} == {"completed", "cancelled"}

    screenshot = tmp_path / "dashboard.png"
    pg.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 10_000
    problems.extend(pg.evaluate("window.__cspViolations"))
    assert problems == [], "\n".join(problems)


@pytest.mark.browser
def test_dashboard_polls_without_event_streams(
    page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    """On a server without the event-stream endpoints (404) the page polls instead."""
    pg, problems = page
    pg.route(
        lambda url: bool(EVENTS_URL.search(urlsplit(url).path)),
        lambda route: route.fulfill(
            status=404,
            content_type="application/problem+json",
            body='{"type": "/problems/not-found", "title": "Not found", "status": 404}',
        ),
    )
    pg.goto("/")
    _enter_key(pg)
    expect(pg.locator("#live-state")).to_have_text("Updating every 2 s")
    request_id = _create_stream_and_upload(pg, tmp_path / "polled.csv")
    item = _list_item(pg, request_id)
    expect(item.locator(".badge-completed")).to_have_text("completed")
    expect(item.locator("progress")).to_have_js_property("value", 100)
    item.get_by_role("link").click()
    expect(pg.locator("#detail-badge")).to_have_text("completed")
    expect(pg.locator("#row-errors-body tr")).to_have_count(50)
    problems.extend(pg.evaluate("window.__cspViolations"))
    assert problems == [], "\n".join(problems)


@pytest.mark.browser
def test_dashboard_uploads_a_nacha_file_with_a_relaxation(page: tuple[Page, list[str]]) -> None:
    pg, problems = page
    pg.goto("/")
    _enter_key(pg)
    pg.get_by_label("Key (required)", exact=True).fill("ach")
    pg.get_by_role("button", name="Create stream").click()
    expect(pg.get_by_label("Data stream key", exact=True)).to_have_value("ach")
    pg.get_by_text("NACHA relaxations", exact=True).click()
    relax = pg.get_by_label(re.compile("RDFI check digit is wrong"))
    relax.check()
    pg.set_input_files("#file-input", RELAXED_NACHA)
    pg.get_by_role("button", name="Upload", exact=True).click()
    request_id = _request_id(pg)
    expect(relax).not_to_be_checked()  # the next file starts strict again
    _list_item(pg, request_id).get_by_role("link").click()
    expect(pg.locator("#detail-badge")).to_have_text("completed")
    expect(pg.locator("#detail-info")).to_contain_text("allow_invalid_check_digit")
    problems.extend(pg.evaluate("window.__cspViolations"))
    assert problems == [], "\n".join(problems)


# --- The routes that serve the page (no browser needed) ---------------------------------


def test_dashboard_offers_every_nacha_relaxation() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    offered = set(re.findall(r'name="nacha-option" value="([a-z_]+)"', html))
    assert offered == {option.value for option in NachaOption}


async def test_dashboard_is_public_with_a_strict_policy(api: Api) -> None:
    async with api.client.get("/") as resp:  # no API key: the page itself holds no data
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Cache-Control"] == REVALIDATE
        policy = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in policy
    assert "require-trusted-types-for 'script'" in policy
    assert "unsafe-inline" not in policy
    # Assets are linked under their content hash, so they can be cached for good.
    for name in ("app.js", "style.css"):
        match = re.search(rf'"/static/{re.escape(name)}\?v=([0-9a-f]+)"', html)
        assert match, name
        async with api.client.get(f"/static/{name}?v={match[1]}") as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == IMMUTABLE
            assert await resp.read() == (STATIC_DIR / name).read_bytes()


async def test_dashboard_assets_revalidate_and_stay_inside_the_static_directory(
    api: Api,
) -> None:
    async with api.client.get("/static/app.js") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == REVALIDATE
        assert resp.content_type == "text/javascript"
        etag = resp.headers["ETag"]
    async with api.client.get("/static/app.js", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    for path in (
        "/static/missing.js",
        "/static/index.html",  # only the assets are served under /static/
        "/static/..%2Fapi%2Fdashboard.py",
        "/static/%2E%2E%2Fapp.py",
        "/static/App.js",
    ):
        async with api.client.get(path) as resp:
            assert resp.status == 404, path
            assert resp.content_type == "application/problem+json", path


def test_dashboard_loads_nothing_from_elsewhere() -> None:
    """No CDN, no external font or image: the page works on a machine offline."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path
