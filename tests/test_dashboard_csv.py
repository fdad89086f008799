"""The upload form's CSV preview in real Chromium (SPEC §15): choosing the European sample
export shows its header and first rows with targets guessed from the column names and
its date format, decimal comma and delimiter guessed from the cells; the user changes
one target and uploads, and the request completes with the right amounts."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from playwright.sync_api import Page, expect

from tests import test_dashboard as dashboard
from tests.test_dashboard import _enter_key, _request_id
from tests.test_dashboard_live import _call, _wait_status
from tests.test_uploads import SAMPLES

base_url = dashboard.base_url
page = dashboard.page

EU_SAMPLE = SAMPLES / "eu-bank-export.csv"


def _target(pg: Page, column: str) -> object:
    return pg.get_by_label(f"Target of column {column}", exact=True)


@pytest.mark.browser
def test_the_european_sample_is_mapped_in_the_form_and_uploaded(
    page: tuple[Page, list[str]], base_url: str
) -> None:
    pg, problems = page
    pg.goto("/")
    _enter_key(pg)
    status, body = _call(base_url, "POST", "/v1/data_streams", {"key": "giro", "currency": "EUR"})
    assert status == 201, body
    pg.get_by_label("Data stream key", exact=True).fill("giro")
    pg.set_input_files("#file-input", EU_SAMPLE)

    preview = pg.locator("#csv-preview")
    expect(preview).to_be_visible()
    table = pg.locator("#csv-preview-table")
    expect(table.locator("thead th")).to_have_text(
        [
            "Buchungstag",
            "Valuta",
            "Auftraggeber/Empfänger",
            "Verwendungszweck",
            "Betrag",
            "Währung",
            "Referenz",
        ]
    )
    expect(table.locator("tbody tr")).to_have_count(5)
    expect(table.locator("tbody tr").nth(2)).to_contain_text("(1.150,00)")
    # Guessed from the names and the cells.
    for column, target in [
        ("Buchungstag", "date"),
        ("Valuta", ""),
        ("Auftraggeber/Empfänger", ""),
        ("Verwendungszweck", "description"),
        ("Betrag", "amount"),
        ("Währung", "currency"),
        ("Referenz", "external_id"),
    ]:
        expect(_target(pg, column)).to_have_value(target)
    expect(pg.get_by_label("Date format", exact=True)).to_have_value("%d.%m.%Y")
    expect(pg.get_by_label("Decimal separator", exact=True)).to_have_value(",")
    expect(pg.get_by_label("Delimiter", exact=True)).to_have_value("")  # detected
    # The user keeps the counterparty as metadata.
    _target(pg, "Auftraggeber/Empfänger").select_option("metadata.Auftraggeber/Empfänger")

    pg.get_by_role("button", name="Upload", exact=True).click()
    expect(pg.locator("#upload-result")).to_contain_text(f"Uploaded {EU_SAMPLE.name} as request #")
    expect(preview).to_be_hidden()
    request_id = _request_id(pg)
    done = _wait_status(base_url, request_id, ("completed", "failed"))
    assert (done["status"], done["successful_items"], done["failed_items"]) == ("completed", 5, 0)
    assert done["csv_options"] == {
        "columns": {
            "Buchungstag": "date",
            "Valuta": None,
            "Auftraggeber/Empfänger": "metadata.Auftraggeber/Empfänger",
            "Verwendungszweck": "description",
            "Betrag": "amount",
            "Währung": "currency",
            "Referenz": "external_id",
        },
        "date_format": "%d.%m.%Y",
        "decimal_separator": ",",
        "delimiter": None,
    }
    status, records = _call(base_url, "GET", f"/v1/records?bulk_request_id={request_id}")
    assert status == 200, records
    assert [Decimal(json.dumps(r["amount"])) for r in records["data"]] == [
        Decimal("-84.5"),
        Decimal("3245.18"),
        Decimal("-1150"),
        Decimal("-23.9"),
        Decimal("1024"),
    ]
    assert records["data"][0]["date"] == "2024-05-02"
    assert records["data"][0]["metadata"] == {"Auftraggeber/Empfänger": "Stadtwerke München"}
    assert problems == []
