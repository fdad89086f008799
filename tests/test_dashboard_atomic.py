"""The dashboard's upload form sends the atomic mode, and the detail shows it (SPEC §14),
in real Chromium against a real `python run.py` (tests/test_dashboard.py's fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import test_dashboard as dashboard
from tests.test_dashboard import _enter_key, _list_item, _request_id

base_url = dashboard.base_url
page = dashboard.page


@pytest.mark.browser
def test_dashboard_uploads_an_atomic_file_and_shows_its_mode(
    page: tuple[Page, list[str]], tmp_path: Path
) -> None:
    pg, problems = page
    pg.goto("/")
    _enter_key(pg)
    pg.get_by_label("Key (required)", exact=True).fill("bank")
    pg.get_by_role("button", name="Create stream").click()
    expect(pg.get_by_label("Data stream key", exact=True)).to_have_value("bank")
    # Ten rows, the eighth impossible: atomic, so the file fails and stores nothing.
    csv = tmp_path / "atomic.csv"
    rows = [f"2024-05-{day:02d},{day}.00,row {day}" for day in range(1, 11)]
    rows[7] = "2024-02-30,8.00,row 8"
    csv.write_text("date,amount,description\n" + "\n".join(rows) + "\n", encoding="utf-8")
    mode = pg.get_by_label("Rows", exact=True)
    expect(mode).to_have_value("partial")  # the default
    mode.select_option("atomic")
    pg.set_input_files("#file-input", csv)
    pg.get_by_role("button", name="Upload", exact=True).click()
    request_id = _request_id(pg)
    _list_item(pg, request_id).get_by_role("link").click()
    expect(pg.locator("#detail-badge")).to_have_text("failed", timeout=dashboard.UI_TIMEOUT_MS)
    expect(pg.locator("#detail-info")).to_contain_text("atomic (all rows or none)")
    expect(pg.locator("#detail")).to_contain_text("no record of it was stored")
    problems.extend(pg.evaluate("window.__cspViolations"))
    assert problems == [], "\n".join(problems)
