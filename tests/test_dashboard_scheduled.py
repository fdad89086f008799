"""The dashboard's schedule (SPEC §12) in real Chromium: the run-at field of the upload
form (a datetime-local value plus the browser's own UTC offset → RFC 3339), the
"scheduled" badge in the list and the detail, the schedule shown, cancel from the page,
and a near schedule turning into a completed request live.

The browser runs in a time zone that is not the machine's (America/New_York), so the
offset the page sends is really the browser's; the server runs as a real `run.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from server.clock import to_rfc3339
from tests.server_process import ServerProcess
from tests.test_dashboard import (
    API_KEY,
    _enter_key,
    _list_item,
    _request_id,
    open_page,
)

BROWSER_ZONE = "America/New_York"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path / "bulk.db",
        api_key=API_KEY,
        args=["--workers", "1", "--log-level", "WARNING"],
        log_dir=tmp_path,
    )
    try:
        yield process.start()
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()
        process.close()
        print(f"server log:\n{process.tail()}")


@pytest.fixture
def page(server: ServerProcess) -> Iterator[tuple[Page, list[str]]]:
    with open_page(server.url.rstrip("/"), timezone_id=BROWSER_ZONE) as opened:
        yield opened


def _local(moment: datetime) -> str:
    """The datetime-local value a user in BROWSER_ZONE types for `moment`."""
    return moment.astimezone(ZoneInfo(BROWSER_ZONE)).strftime("%Y-%m-%dT%H:%M:%S")


def _upload_at(pg: Page, csv_path: Path, local_value: str) -> int:
    csv_path.write_text("date,amount,description\n2024-05-01,1.50,one\n2024-05-02,2.50,two\n")
    pg.get_by_label("Run at (optional)", exact=True).fill(local_value)
    pg.set_input_files("#file-input", csv_path)
    pg.get_by_role("button", name="Upload", exact=True).click()
    expect(pg.locator("#upload-result")).to_contain_text("it is scheduled.")
    # The field empties after an upload: the next file runs at once unless asked.
    expect(pg.get_by_label("Run at (optional)", exact=True)).to_have_value("")
    return _request_id(pg)


@pytest.mark.browser
def test_dashboard_schedules_an_upload_shows_it_and_cancels_it(
    page: tuple[Page, list[str]], server: ServerProcess, tmp_path: Path
) -> None:
    pg, problems = page
    pg.goto("/")
    _enter_key(pg)
    pg.get_by_label("Key (required)", exact=True).fill("checking")
    pg.get_by_role("button", name="Create stream").click()
    expect(pg.get_by_label("Data stream key", exact=True)).to_have_value("checking")

    # --- a schedule an hour ahead: sent with the browser's offset, waiting, shown -------
    later = (datetime.now().astimezone() + timedelta(hours=1)).replace(microsecond=0)
    far_id = _upload_at(pg, tmp_path / "far.csv", _local(later))
    stored = server.get(f"/v1/bulk_requests/{far_id}")
    assert (stored["run_at"], stored["scheduled"]) == (to_rfc3339(later), True)
    item = _list_item(pg, far_id)
    expect(item.locator(".badge-scheduled")).to_have_text("scheduled")
    expect(item.locator(".badge-pending")).to_have_text("pending")
    expect(item.locator(".req-meta")).to_contain_text("· runs", use_inner_text=True)
    expect(item.locator(".req-meta time").nth(1)).to_have_attribute("datetime", to_rfc3339(later))

    item.get_by_role("link", name=f"Request #{far_id}").click()
    detail = pg.locator("#detail")
    expect(detail.locator("#detail-scheduled")).to_be_visible()
    expect(detail.locator("#detail-info")).to_contain_text("Scheduled for")
    expect(detail.locator(f'#detail-info time[datetime="{to_rfc3339(later)}"]')).to_have_count(1)

    # --- cancelled from the page at once: no longer scheduled ----------------------------
    pg.get_by_role("button", name="Cancel request").click()
    expect(detail.locator("#detail-badge")).to_have_text("cancelled")
    expect(detail.locator("#detail-scheduled")).to_be_hidden()
    expect(item.locator(".badge-scheduled")).to_be_hidden()
    assert server.get(f"/v1/bulk_requests/{far_id}")["status"] == "cancelled"

    # --- a schedule a few seconds ahead: waits, then runs and completes on the page -----
    pg.goto("/#/")
    soon = (datetime.now().astimezone() + timedelta(seconds=4)).replace(microsecond=0)
    near_id = _upload_at(pg, tmp_path / "near.csv", _local(soon))
    near = _list_item(pg, near_id)
    expect(near.locator(".badge-scheduled")).to_be_visible()
    expect(near.locator(".badge-completed")).to_have_text("completed")
    expect(near.locator(".badge-scheduled")).to_be_hidden()
    expect(near.locator(".req-meta")).not_to_contain_text("runs", use_inner_text=True)
    final = server.get(f"/v1/bulk_requests/{near_id}")
    assert final["successful_items"] == 2
    assert final["started_at"] >= to_rfc3339(soon)
    problems.extend(pg.evaluate("window.__cspViolations"))
    assert problems == [], "\n".join(problems)


@pytest.mark.browser
def test_run_at_from_local_adds_the_browsers_offset(page: tuple[Page, list[str]]) -> None:
    pg, _problems = page
    pg.goto("/")
    expect(pg.get_by_label("API key", exact=True)).to_be_visible()  # the modules have loaded
    converted = pg.evaluate(
        r"""async (values) => {
          // The module under the hashed URL the page itself loaded it from.
          const url = performance.getEntriesByType("resource")
            .map((entry) => entry.name)
            .find((name) => /\/upload[.-][^/]*js|\/upload\.js/.test(name));
          const { runAtFromLocal } = await import(url);
          return values.map(runAtFromLocal);
        }""",
        ["2026-12-24T09:00", "2026-07-01T09:00:30", ""],
    )
    # New York: UTC-5 in winter, UTC-4 in summer (the offset of that date, not today's).
    assert converted == ["2026-12-24T09:00:00-05:00", "2026-07-01T09:00:30-04:00", ""]
