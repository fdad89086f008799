"""CSV as users have it, end to end (SPEC §15): the upload form's mapping fields, the
README's curl lines for the two sample exports, and every way the fields can be wrong."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from server.config import Settings
from server.db.sqlite.migrations import MIGRATIONS, migrate
from tests.conftest import API_KEY, Api, wait_until
from tests.test_fuzz_inputs import Live, _check
from tests.test_uploads import ROOT, SAMPLES, ApiFactory, csv_bytes, upload

US_COLUMNS = {
    "Posting Date": "date",
    "Description": "description",
    "Debit": "debit",
    "Credit": "credit",
    "Balance": None,
}
EU_COLUMNS = {
    "Buchungstag": "date",
    "Valuta": None,
    "Betrag": "amount",
    "Auftraggeber/Empfänger": "metadata.counterparty",
    "Verwendungszweck": "description",
    "Währung": "currency",
    "Referenz": "external_id",
}
US_AMOUNTS = ["2450", "-4.75", "-500", "-1200", "0.42", "23.99"]
EU_AMOUNTS = ["-84.5", "3245.18", "-1150", "-23.9", "1024"]


async def _amounts(api: Api, request_id: int) -> list[str]:
    stored = await api.all_pages(f"/v1/records?bulk_request_id={request_id}")
    return [str(Decimal(str(r["amount"]))) for r in stored]


async def _nothing_created(api: Api, settings: Settings) -> None:
    assert (await api.get("/v1/bulk_requests"))["data"] == []
    assert not settings.upload_dir.exists() or list(settings.upload_dir.iterdir()) == []


# --- the samples, through the README's own curl lines ----------------------------------


def _readme_csv_curl_lines() -> str:
    """The README's curl block for the sample exports, as one shell script."""
    text = (ROOT / "README.md").read_text()
    start = text.index("# CSV exports as banks write them")
    return text[start : text.index("```", start)]


async def test_the_readme_curl_lines_upload_both_samples_with_their_mappings(
    api: Api, settings: Settings
) -> None:
    await api.create_stream("checking", "USD")
    script = _readme_csv_curl_lines()
    assert script.count("curl -s -X POST localhost:8080/v1/uploads") == 2
    base = str(api.client.make_url("")).rstrip("/").removeprefix("http://")
    # The exact lines, run by bash and curl against this test's server.
    completed = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script.replace("localhost:8080", base)],
        cwd=ROOT,
        env={**os.environ, "KEY": API_KEY, "NO_PROXY": "*", "no_proxy": "*"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    answers, rest = [], completed.stdout.strip()
    while rest:  # curl -s prints each answer without a line break after it
        answer, end = json.JSONDecoder().raw_decode(rest)
        answers.append(answer)
        rest = rest[end:].strip()
    uploads = [a for a in answers if a.get("source") == "csv"]
    assert len(uploads) == 2, answers
    us, eu = [await api.wait_terminal(u["id"]) for u in uploads]
    for done in (us, eu):
        assert (done["status"], done["failed_items"]) == ("completed", 0), done
    assert us["csv_options"] == {
        "columns": US_COLUMNS,
        "date_format": "%m/%d/%Y",
        "decimal_separator": ".",
        "delimiter": None,
    }
    assert eu["csv_options"] == {
        "columns": EU_COLUMNS,
        "date_format": "%d.%m.%Y",
        "decimal_separator": ",",
        "delimiter": ";",
    }
    assert await _amounts(api, us["id"]) == US_AMOUNTS
    assert await _amounts(api, eu["id"]) == EU_AMOUNTS
    us_rows = await api.all_pages(f"/v1/records?bulk_request_id={us['id']}")
    assert [r["date"] for r in us_rows][:2] == ["2024-05-01", "2024-05-02"]
    assert us_rows[1]["description"] == "COFFEE SHOP #123, SEATTLE WA"
    assert us_rows[0]["metadata"] is None or us_rows[0]["metadata"] == {}
    eu_rows = await api.all_pages(f"/v1/records?bulk_request_id={eu['id']}")
    row = eu_rows[3]
    assert (row["data_stream_key"], row["date"], row["currency"]) == ("giro", "2024-05-08", "EUR")
    assert (row["description"], row["external_id"]) == ("Bücher; Rechnung 17", "RE-17")
    assert row["metadata"] == {"counterparty": "Buchhandlung am Markt"}
    assert Decimal(str(eu_rows[3]["amount"])) == Decimal("-23.90")


async def test_the_european_sample_with_its_delimiter_detected(api: Api) -> None:
    await api.create_stream("giro", "EUR")
    _, summary = await upload(
        api,
        (SAMPLES / "eu-bank-export.csv").read_bytes(),
        data_stream_key="giro",
        columns=json.dumps(EU_COLUMNS),
        date_format="%d.%m.%Y",
        decimal_separator=",",
    )
    done = await api.wait_terminal(summary["id"])
    assert (done["status"], done["successful_items"]) == ("completed", 5)
    assert done["csv_options"]["delimiter"] is None
    assert done["error_details"]["notes"] == ["the delimiter ';' was detected from the header line"]
    assert await _amounts(api, done["id"]) == EU_AMOUNTS


async def test_a_default_upload_shows_default_options_and_other_requests_none(api: Api) -> None:
    await api.create_stream("checking")
    _, summary = await upload(api, (SAMPLES / "records.csv").read_bytes())
    assert (await api.get(f"/v1/bulk_requests/{summary['id']}"))["csv_options"] == {
        "columns": None,
        "date_format": None,
        "decimal_separator": ".",
        "delimiter": None,
    }
    done = await api.wait_terminal(summary["id"])
    assert "notes" not in done["error_details"]  # a comma is not worth a note
    bulk = await api.submit([{"date": "2024-01-01", "data_stream_key": "checking", "amount": 1}])
    assert (await api.get(f"/v1/bulk_requests/{bulk['id']}"))["csv_options"] is None
    _, nacha = await upload(api, (SAMPLES / "payroll.ach").read_bytes(), data_stream_key="checking")
    assert (await api.get(f"/v1/bulk_requests/{nacha['id']}"))["csv_options"] is None


# --- the form fields refused: 422, nothing created ----------------------------------------

BAD_FIELDS = [
    ({"columns": "{not json"}, "/columns", "invalid_json"),
    ({"columns": '["date"]'}, "/columns", "invalid_type"),
    ({"columns": '"date"'}, "/columns", "invalid_type"),
    ({"columns": '{"Datum": "day"}'}, "/columns/Datum", "unknown_target"),
    ({"columns": '{"Datum": 3}'}, "/columns/Datum", "unknown_target"),
    ({"columns": '{"Datum": "metadata."}'}, "/columns/Datum", "unknown_target"),
    ({"columns": '{"Datum": "Date"}'}, "/columns/Datum", "unknown_target"),
    ({"columns": '{"A": "date", "B": "date"}'}, "/columns/B", "duplicate_target"),
    ({"columns": '{"A": "date", "A": "amount"}'}, "/columns", "duplicate_column"),
    ({"columns": '{"Amt": "amount", " amt ": null}'}, "/columns/ amt ", "duplicate_column"),
    ({"columns": '{"": "date"}'}, "/columns/", "invalid"),
    ({"columns": '{"Soll": "debit"}'}, "/columns/Soll", "incomplete_pair"),
    ({"columns": '{"Haben": "credit"}'}, "/columns/Haben", "incomplete_pair"),
    (
        {"columns": '{"S": "debit", "H": "credit", "Betrag": "amount"}'},
        "/columns/Betrag",
        "conflicting_targets",
    ),
    ({"columns": ""}, "/columns", "empty"),
    ({"date_format": "%H:%M"}, "/date_format", "invalid_date_format"),
    ({"date_format": "%d.%m."}, "/date_format", "invalid_date_format"),
    ({"date_format": "%Y-%m-%d %Q"}, "/date_format", "invalid_date_format"),
    ({"date_format": "%"}, "/date_format", "invalid_date_format"),
    # strptime raises re.error, not ValueError, for a field read twice: once a 500.
    ({"date_format": "%d.%d.%Y"}, "/date_format", "invalid_date_format"),
    ({"date_format": "yesterday"}, "/date_format", "invalid_date_format"),
    ({"date_format": "%d" * 40}, "/date_format", "invalid_date_format"),
    ({"decimal_separator": ";"}, "/decimal_separator", "invalid_choice"),
    ({"decimal_separator": "comma"}, "/decimal_separator", "invalid_choice"),
    ({"delimiter": "\\t"}, "/delimiter", "invalid_choice"),
    ({"delimiter": ":"}, "/delimiter", "invalid_choice"),
    ({"delimiter": "comma"}, "/delimiter", "invalid_choice"),
]


@pytest.mark.parametrize(("fields", "pointer", "code"), BAD_FIELDS)
async def test_bad_csv_option_fields_are_a_422_that_creates_nothing(
    api: Api, settings: Settings, fields: dict[str, str], pointer: str, code: str
) -> None:
    await api.create_stream("checking")
    _, problem = await upload(
        api, (SAMPLES / "records.csv").read_bytes(), expect=422, format="csv", **fields
    )
    assert problem["type"] == "/problems/validation-error"
    assert [(e["pointer"], e["code"]) for e in problem["errors"]] == [(pointer, code)], problem
    await _nothing_created(api, settings)


async def test_an_unknown_target_is_named_with_the_targets_there_are(api: Api) -> None:
    _, problem = await upload(
        api, b"Datum,Betrag\n01.02.2024,1\n", expect=422, columns='{"Betrag": "amout"}'
    )
    message = problem["errors"][0]["message"]
    for part in ("'amout'", "'Betrag'", "metadata.<name>"):
        assert part in message


async def test_every_mistake_is_reported_at_once(api: Api) -> None:
    _, problem = await upload(
        api,
        b"a\n1\n",
        expect=422,
        columns='{"A": "nope"}',
        date_format="%Q",
        decimal_separator="x",
        delimiter="x",
    )
    assert [e["pointer"] for e in problem["errors"]] == [
        "/columns/A",
        "/date_format",
        "/decimal_separator",
        "/delimiter",
    ]


@pytest.mark.parametrize("name", ["columns", "date_format", "decimal_separator", "delimiter"])
async def test_csv_options_on_a_nacha_file_are_refused(
    api: Api, settings: Settings, name: str
) -> None:
    await api.create_stream("checking")
    value = {"columns": '{"a": null}', "date_format": "%d.%m.%Y"}.get(name, ",")
    _, problem = await upload(
        api,
        (SAMPLES / "payroll.ach").read_bytes(),
        expect=422,
        data_stream_key="checking",
        **{name: value},
    )
    assert [(e["pointer"], e["code"]) for e in problem["errors"]] == [
        (f"/{name}", "not_applicable")
    ]
    await _nothing_created(api, settings)


async def test_a_long_mapping_is_accepted_and_one_past_the_bound_refused(api: Api) -> None:
    await api.create_stream("checking")
    wide = {f"Column number {i:03d} of a wide export": None for i in range(254)}
    header = ["date", "amount", *wide]
    _, summary = await upload(
        api,
        csv_bytes([header, ["2024-01-01", "1", *[""] * 254]]),
        data_stream_key="checking",
        columns=json.dumps(wide),
    )
    assert len(json.dumps(wide).encode()) > 1024  # past the other fields' bound
    assert (await api.wait_terminal(summary["id"]))["status"] == "completed"
    _, problem = await upload(api, b"a\n1\n", expect=422, columns=" " * (64 * 1024 + 1))
    assert problem["errors"][0]["code"] == "too_long"


# --- the file does not fit the mapping: the request fails, saying why ----------------------


@pytest.mark.parametrize(
    ("header", "columns", "words"),
    [
        (
            "Date,Amount",
            {"Date": "date", "Amount": "amount", "Memo": "description", "Ref": "external_id"},
            ["'Memo'", "'Ref'", "'Date'"],
        ),
        ("Betrag,amount,date", {"Betrag": "amount"}, ["'Betrag' and 'amount' both give amount"]),
        (
            "Soll,Haben,amount,date",
            {"Soll": "debit", "Haben": "credit"},
            ["'amount' gives amount", "'Soll'"],
        ),
        ("Date,date,Amount", {"Date": "date", "Amount": "amount"}, ["'date' twice"]),
        ("Foo,Bar", {"Foo": None}, ["none of the expected columns", "columns maps none"]),
    ],
)
async def test_a_file_that_does_not_fit_the_mapping_fails_saying_which_column(
    api: Api, header: str, columns: dict[str, str | None], words: list[str]
) -> None:
    await api.create_stream("checking")
    body = f"{header}\n{','.join(['1'] * header.count(','))},1\n".encode()
    _, summary = await upload(api, body, data_stream_key="checking", columns=json.dumps(columns))
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "failed"
    for word in words:
        assert word in done["error_message"], done["error_message"]
    assert done["error_details"]["file"]["line"] == 1
    assert await api.all_pages("/v1/records") == []


async def test_the_missing_columns_are_listed_in_the_details(api: Api) -> None:
    await api.create_stream("checking")
    columns = {"Date": "date", "Memo": "description", "Ref": "external_id", "X": None}
    _, summary = await upload(
        api, b"Date,amount\n2024-01-01,1\n", data_stream_key="checking", columns=json.dumps(columns)
    )
    done = await api.wait_terminal(summary["id"])
    # A column mapped to null may be absent: ignoring it needs nothing from the file.
    assert done["error_details"]["file"]["missing_columns"] == ["Memo", "Ref"]


# --- rows: amounts and dates as users write them -------------------------------------------


async def test_rows_that_do_not_read_are_row_errors_naming_the_cell(api: Api) -> None:
    await api.create_stream("giro", "EUR")
    rows = [
        "Tag;Soll;Haben;Text",
        "01.02.2024;12,50;;ok debit",
        "02.02.2024;;1.234,56;ok credit",
        "03.02.2024;1.00,5;;bad debit",
        "04.02.2024;;;no amount",
        "31.02.2024;1,00;;no such day",
        "2024-02-05;1,00;;iso date under a pattern",
        "06.02.2024;0,00;7,25;both cells",
        "07.02.2024;1,001;;three decimals",
    ]
    _, summary = await upload(
        api,
        "\n".join(rows).encode(),
        data_stream_key="giro",
        columns=json.dumps(
            {"Tag": "date", "Soll": "debit", "Haben": "credit", "Text": "description"}
        ),
        date_format="%d.%m.%Y",
        decimal_separator=",",
    )
    done = await api.wait_terminal(summary["id"])
    assert (done["status"], done["successful_items"], done["failed_items"]) == ("completed", 3, 5)
    errors = (await api.get(f"/v1/bulk_requests/{summary['id']}/errors"))["data"]
    found = [(e["line"], e["code"], e["pointer"]) for e in errors]
    assert found == [
        (4, "invalid_amount", "/records/2/amount"),
        (5, "required", "/records/3/amount"),
        (6, "invalid_date", "/records/4/date"),
        (7, "invalid_date", "/records/5/date"),
        (9, "too_many_decimals", "/records/7/amount"),
    ]
    assert "'Soll' '1.00,5'" in errors[0]["message"]
    assert "'Soll' and 'Haben'" in errors[1]["message"]
    assert "'%d.%m.%Y'" in errors[2]["message"]
    assert await _amounts(api, done["id"]) == ["-12.5", "1234.56", "7.25"]


async def test_the_default_reads_us_amounts_and_keeps_what_json_accepts(api: Api) -> None:
    await api.create_stream("checking")
    rows = [
        ["date", "amount"],
        ["2024-01-01", "$1,234.56"],
        ["2024-01-02", "(12.00)"],
        ["2024-01-03", "1e3"],
        ["2024-01-04", "+5"],
        ["2024-01-05", "12,50"],  # a decimal comma, unasked: refused, not read as 1250
        ["2024-01-06", "-0.5"],
    ]
    _, summary = await upload(api, csv_bytes(rows), data_stream_key="checking")
    done = await api.wait_terminal(summary["id"])
    assert (done["successful_items"], done["failed_items"]) == (5, 1)
    assert await _amounts(api, done["id"]) == ["1234.56", "-12", "1000", "5", "-0.5"]
    errors = (await api.get(f"/v1/bulk_requests/{summary['id']}/errors"))["data"]
    assert [(e["line"], e["code"]) for e in errors] == [(6, "invalid_amount")]


# --- kept on the request: retry and idempotency --------------------------------------------


async def test_a_retry_of_an_unparsed_upload_reads_the_file_with_the_same_options(
    make_api: ApiFactory, settings: Settings
) -> None:
    import dataclasses

    # The cancel lands during the parse, before any batch runs, so the batch size plays
    # no part in what is tested; a large one commits the retry's 200,000 rows in 200
    # transactions (at 5 rows a batch this one test took 211 s on PostgreSQL).
    settings = dataclasses.replace(settings, workers=1, batch_size=1000, time_slice=1000.0)
    api = await make_api(settings)
    await api.create_stream("giro", "EUR")
    lines = ["Tag;Betrag;Ref"] + [f"01.02.2024;1.234,{i % 100:02d};r{i}" for i in range(200000)]
    options = {
        "columns": json.dumps({"Tag": "date", "Betrag": "amount", "Ref": "external_id"}),
        "date_format": "%d.%m.%Y",
        "decimal_separator": ",",
        "delimiter": ";",
    }
    _, summary = await upload(api, "\n".join(lines).encode(), data_stream_key="giro", **options)
    # Cancelled while its file is being parsed (rows staged, not all): nothing stored yet.
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{summary['id']}"),
        lambda r: r["parsing"] and r["total_items"] > 0,
    )
    await api.call("POST", f"/v1/bulk_requests/{summary['id']}/cancel")
    cancelled = await api.wait_terminal(summary["id"])
    assert cancelled["status"] == "cancelled"
    child = await api.post(f"/v1/bulk_requests/{summary['id']}/retry", expect=201)
    assert child["parsing"] is True  # the file is read again, not rows copied
    assert child["csv_options"] == cancelled["csv_options"]
    finished = await api.wait_terminal(child["id"], 240)
    assert (finished["status"], finished["failed_items"]) == ("completed", 0), finished
    assert finished["csv_options"]["decimal_separator"] == ","
    first = (await api.get("/v1/records?limit=1"))["data"][0]
    assert (first["date"], str(first["amount"])) == ("2024-02-01", "1234")


async def test_idempotency_tells_uploads_with_other_options_apart(api: Api) -> None:
    await api.create_stream("checking")
    content = b"Datum,Betrag\n01.02.2024,1\n"
    key = {"Idempotency-Key": "mapped-1"}
    fields = {"columns": '{"Datum": "date", "Betrag": "amount"}', "date_format": "%d.%m.%Y"}
    _, first = await upload(api, content, headers=key, data_stream_key="checking", **fields)
    _, again = await upload(
        api, content, headers=key, expect=200, data_stream_key="checking", **fields
    )
    assert again["id"] == first["id"]
    _, problem = await upload(
        api,
        content,
        headers=key,
        expect=409,
        data_stream_key="checking",
        **{**fields, "date_format": "%m.%d.%Y"},
    )
    assert problem["type"] == "/problems/idempotency-key-reused"


def test_the_migration_adds_the_csv_options_column(tmp_path: Path) -> None:
    # Found by its text, not its number: the lead renumbers migrations on merge.
    number = next(i for i, script in enumerate(MIGRATIONS, 1) if "csv_options" in script)
    with sqlite3.connect(tmp_path / "old.db") as conn:
        migrate(conn, up_to=number - 1)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(bulk_requests)")}
        assert "csv_options" not in columns
        migrate(conn)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(bulk_requests)")}
        assert "csv_options" in columns


# --- arbitrary field values never break the server ----------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        TEXT,
        st.sampled_from(["date", "amount", "debit", "credit", "metadata.x", "metadata."]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
COLUMN_NAMES = st.one_of(
    TEXT, st.sampled_from(["Tag", "Betrag", "date", "amount", "Soll", "Haben"])
)
COLUMNS = st.one_of(
    TEXT,
    st.builds(json.dumps, JSON_VALUES),
    st.builds(json.dumps, st.dictionaries(COLUMN_NAMES, JSON_VALUES, max_size=4)),
)
OPTION_VALUES = {
    "columns": COLUMNS,
    "date_format": st.one_of(TEXT, st.sampled_from(["%d.%m.%Y", "%d%d", "%Y-%m-%d %Q", "%"])),
    "decimal_separator": st.one_of(TEXT, st.sampled_from([".", ","])),
    "delimiter": st.one_of(TEXT, st.sampled_from([",", ";", "tab", "|"])),
}
FILES = st.sampled_from(
    [
        b"Tag;Betrag;Soll;Haben\n01.02.2024;1.234,5;1,00;\n02.02.2024;x;;2,00\n",
        b"date,amount\n2024-01-01,$1,234.56\n",
        b"",
        (SAMPLES / "payroll.ach").read_bytes(),
    ]
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = Live(tmp_path_factory.mktemp("csvfuzz") / "bulk.db")
    server.run(server.api.create_stream("giro", "EUR"))
    yield server
    server.close()


@hypothesis_settings(max_examples=40)
@given(
    fields=st.fixed_dictionaries({}, optional=OPTION_VALUES),
    content=FILES,
)
def test_any_csv_option_values_get_a_202_or_a_422_problem_never_a_500(
    live: Live, fields: dict[str, str], content: bytes
) -> None:
    async def check() -> None:
        api = live.api
        before = (await api.get("/v1/bulk_requests?limit=1"))["data"]
        form = aiohttp.FormData()
        form.add_field("data_stream_key", "giro")
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field("file", io.BytesIO(content), filename="f.csv")
        status, answer = await _check(api, "POST", "/v1/uploads", data=form)
        after = (await api.get("/v1/bulk_requests?limit=1"))["data"]
        if status >= 400:
            assert status == 422, answer
            assert after == before
            return
        created = orjson.loads(answer)
        done = await api.wait_terminal(created["id"])
        # Rows may fail, or the file as a whole; a crash of the parse would leave it stuck.
        assert done["status"] in ("completed", "failed"), done
        if done["status"] == "failed":
            assert done["error_message"]

    live.run(check())
