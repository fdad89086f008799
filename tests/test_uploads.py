"""POST /v1/uploads end to end: CSV and NACHA files parsed by the workers (SPEC §8)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.api.common import STORE
from server.config import Settings
from tests.conftest import SHARED, Api, record, wait_until
from tests.db_access import stored_uploads

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
NACHA = SHARED / "nacha"
MANIFEST = json.loads((NACHA / "MANIFEST.json").read_text())
ApiFactory = Callable[[Settings], Awaitable[Api]]


async def upload(
    api: Api,
    content: bytes,
    *,
    filename: str = "file.csv",
    expect: int | None = 202,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field(
        "file", io.BytesIO(content), filename=filename, content_type="application/octet-stream"
    )
    status, body = await api.call("POST", "/v1/uploads", data=form, headers=headers)
    if expect is not None:
        assert status == expect, body
    return status, body


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


HEADER = ["date", "amount", "currency", "description", "external_id", "data_stream_key"]


async def test_sample_csv_end_to_end_with_csv_error_export(api: Api, settings: Settings) -> None:
    await api.create_stream("checking")
    _, summary = await upload(api, (SAMPLES / "records.csv").read_bytes(), filename="records.csv")
    assert summary["source"] == "csv"
    assert summary["filename"] == "records.csv"
    assert summary["parsing"] is True
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "completed"
    assert done["parsing"] is False
    assert (done["total_items"], done["successful_items"], done["failed_items"]) == (6, 4, 2)
    assert done["data_stream_key"] == "checking"
    errors = (await api.get(f"/v1/bulk_requests/{summary['id']}/errors"))["data"]
    assert [(e["line"], e["code"]) for e in errors] == [
        (7, "invalid_date"),
        (8, "too_many_decimals"),
    ]
    stored = await api.all_pages(f"/v1/records?bulk_request_id={summary['id']}")
    assert [r["external_id"] for r in stored] == ["inv-1001", "inv-1002", "inv-1003", "inv-1004"]
    assert stored[2]["description"] == 'Invoice "May"\ntwo-line description'
    assert stored[0]["metadata"] == {"category": "groceries"}
    # The file is gone once parsed; the rows live in the database now.
    assert await stored_uploads(api.app[STORE]) == []

    async with api.client.get(
        f"/v1/bulk_requests/{summary['id']}/errors", headers=api.headers({"Accept": "text/csv"})
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/csv"
        exported = await resp.text()
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [(r["line"], r["error_code"], r["external_id"], r["date"]) for r in rows] == [
        ("7", "invalid_date", "inv-1005", "2024-02-30"),
        ("8", "too_many_decimals", "inv-1006", "2024-05-06"),
    ]
    # Fix the rows in the exported file and upload it again: the extra columns are ignored.
    fixed = exported.replace("2024-02-30", "2024-02-28").replace("7.999", "7.99")
    _, again = await upload(api, fixed.encode(), filename="fixed.csv")
    redone = await api.wait_terminal(again["id"])
    assert (redone["successful_items"], redone["failed_items"]) == (2, 0)


async def test_format_csv_query_parameter(api: Api) -> None:
    await api.create_stream("checking")
    _, summary = await upload(api, (SAMPLES / "records.csv").read_bytes())
    await api.wait_terminal(summary["id"])
    async with api.client.get(
        f"/v1/bulk_requests/{summary['id']}/errors?format=csv", headers=api.headers()
    ) as resp:
        assert resp.content_type == "text/csv"
        assert (await resp.text()).count("\r\n") == 3


async def test_error_export_of_a_clean_request_is_a_header_only_csv(api: Api) -> None:
    await api.create_stream("checking")
    summary = await api.submit([record(1, "checking")])
    assert (await api.wait_terminal(summary["id"]))["failed_items"] == 0
    async with api.client.get(
        f"/v1/bulk_requests/{summary['id']}/errors?format=csv", headers=api.headers()
    ) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert text.startswith("row,line,error_code,error_message,error_pointer,date,amount")
    assert text.count("\r\n") == 1


async def test_sample_nacha_end_to_end(api: Api) -> None:
    await api.create_stream("checking")
    _, summary = await upload(
        api,
        (SAMPLES / "payroll.ach").read_bytes(),
        filename="payroll.ach",
        data_stream_key="checking",
    )
    assert summary["source"] == "nacha"
    done = await api.wait_terminal(summary["id"])
    assert (done["status"], done["successful_items"]) == ("completed", 4)
    stored = await api.all_pages(f"/v1/records?bulk_request_id={summary['id']}")
    assert sum(Decimal(str(r["amount"])) for r in stored) == Decimal("7446.50")
    assert stored[3]["amount"] == -49.99
    # FORMAT.md: immediate origin - creation date, time, modifier - batch - trace.
    assert stored[0]["external_id"] == "091000019-2411151200A-0000001-091000010000101"
    assert stored[0]["date"] == "2024-11-15"
    meta = stored[0]["metadata"]
    assert meta["account_number_masked"] == "****6789"
    assert stored[2]["metadata"]["account_number_masked"] == "****1234"
    assert "5550001234" not in json.dumps(stored)  # Carol's full account number
    assert stored[1]["metadata"]["addenda"] == ["NOVEMBER SALARY"]
    # Uploading the same file again: every row is a skipped duplicate.
    _, again = await upload(api, (SAMPLES / "payroll.ach").read_bytes(), data_stream_key="checking")
    assert (await api.wait_terminal(again["id"]))["skipped_items"] == 4


@pytest.mark.parametrize("name", sorted(MANIFEST["valid"]))
async def test_every_valid_shared_nacha_file(api: Api, name: str) -> None:
    expected = MANIFEST["valid"][name]
    await api.create_stream("ach")
    _, summary = await upload(
        api,
        (NACHA / "public" / "valid" / name).read_bytes(),
        filename=name,
        data_stream_key="ach",
        format="nacha",
    )
    done = await api.wait_terminal(summary["id"], 60)
    assert done["status"] == "completed", done
    assert done["successful_items"] == expected["entry_details"], done
    assert done["nacha_options"] == []
    # Warnings (short lines padded, blanks past column 94 trimmed) stay on the request.
    assert done["error_details"].get("warnings", []) == expected["warnings"]
    stored = await api.all_pages(f"/v1/records?bulk_request_id={summary['id']}")
    total = sum(Decimal(str(r["amount"])) for r in stored)
    assert total * 100 == expected["total_credit_cents"] - expected["total_debit_cents"]


@pytest.mark.parametrize("name", sorted(MANIFEST["invalid"]))
async def test_every_invalid_shared_nacha_file_fails_whole(api: Api, name: str) -> None:
    await api.create_stream("ach")
    _, summary = await upload(
        api,
        (NACHA / "public" / "invalid" / name).read_bytes(),
        filename=name,
        data_stream_key="ach",
        format="nacha",
    )
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "failed"
    assert done["error_message"]
    assert done["error_details"]["file"]
    assert done["processed_items"] == 0
    assert await api.all_pages("/v1/records") == []
    # Every problem is listed; the manifest names the one the file was made to show
    # (tests/test_nacha_rules.py pins the whole list of each file).
    found = done["error_details"]["file"]["errors"]
    assert done["error_message"].startswith(found[0]["message"])
    rule = MANIFEST["invalid"][name]
    if rule.startswith("line "):
        line = int(rule.split(":")[0].removeprefix("line "))
        assert line in [e["line"] for e in found], done["error_details"]


async def test_undecodable_csv_fails_with_the_byte_offset(api: Api) -> None:
    await api.create_stream("checking")
    content = b"date,amount,data_stream_key\n2024-01-01,1,checking\n2024-01-02,\xff2,checking\n"
    _, summary = await upload(api, content, format="csv")
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "failed"
    assert str(content.index(b"\xff")) in done["error_message"]
    assert await api.all_pages("/v1/records") == []


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\n", "empty"), (b"date,amount\n", "no rows"), (b"colour,size\nred,1\n", "column")],
)
async def test_csv_without_usable_rows_fails(api: Api, content: bytes, words: str) -> None:
    _, summary = await upload(api, content, format="csv")
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "failed"
    assert words in done["error_message"]


async def test_bad_uploads_are_refused_and_leave_nothing(
    make_api: ApiFactory, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, max_upload_mb=1)
    api = await make_api(settings)
    await api.create_stream("checking")
    status, problem = await upload(api, b"x" * (2 * 1024 * 1024), expect=413)
    assert problem["type"] == "/problems/payload-too-large"
    status, problem = await upload(api, b"", expect=422)
    assert problem["errors"][0]["pointer"] == "/file"
    status, problem = await upload(api, b"a,b\n1,2\n", data_stream_key="nope", expect=422)
    assert problem["errors"][0]["code"] == "unknown_data_stream"
    nacha = (SAMPLES / "payroll.ach").read_bytes()
    status, problem = await upload(api, nacha, expect=422)
    assert problem["errors"][0]["pointer"] == "/data_stream_key"
    status, problem = await upload(api, nacha, format="xml", data_stream_key="checking", expect=422)
    status, problem = await upload(
        api, nacha, on_conflict="merge", data_stream_key="checking", expect=422
    )
    form = aiohttp.FormData()
    form.add_field("data_stream_key", "checking")
    status, problem = await api.call("POST", "/v1/uploads", data=form)
    assert status in (415, 422)
    status, problem = await api.call("POST", "/v1/uploads", json={"file": "x"})
    assert status == 415
    assert (await api.get("/v1/bulk_requests"))["data"] == []
    assert await stored_uploads(api.app[STORE]) == []


async def test_client_filename_is_sanitised(api: Api) -> None:
    await api.create_stream("checking")
    _, summary = await upload(
        api,
        (SAMPLES / "records.csv").read_bytes(),
        filename="..\\..\\Users\\me/../../etc/passwd.csv",
    )
    assert summary["filename"] == "passwd.csv"


async def test_upload_idempotency(api: Api) -> None:
    await api.create_stream("checking")
    key = {"Idempotency-Key": "file-1"}
    content = (SAMPLES / "records.csv").read_bytes()
    _, first = await upload(api, content, headers=key)
    _, replay = await upload(api, content, headers=key, expect=200)
    assert replay["id"] == first["id"]
    _status, problem = await upload(
        api, content + b"2024-01-01,1,USD,x,y,checking,\n", headers=key, expect=409
    )
    assert problem["type"] == "/problems/idempotency-key-reused"


async def test_cancel_while_parsing_then_retry_parses_again(
    make_api: ApiFactory, settings: Settings
) -> None:
    # 60,000 rows in 5-row batches are 12,000 transactions: well under a minute on
    # SQLite, several on PostgreSQL (a round trip per statement); 100-row batches there.
    batch_size = 100 if settings.database_url else 5
    settings = dataclasses.replace(settings, workers=1, batch_size=batch_size, time_slice=1000.0)
    api = await make_api(settings)
    await api.create_stream("checking")
    rows = [HEADER] + [
        ["2024-01-01", f"{i}.00", "USD", f"r{i}", f"e{i}", "checking"] for i in range(60000)
    ]
    _, summary = await upload(api, csv_bytes(rows))
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{summary['id']}"), lambda r: r["status"] == "processing"
    )
    status, _ = await api.call("POST", f"/v1/bulk_requests/{summary['id']}/cancel")
    assert status in (200, 202)
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "cancelled"
    child = await api.post(f"/v1/bulk_requests/{summary['id']}/retry", expect=201)
    finished = await api.wait_terminal(child["id"], 120)
    assert finished["status"] == "completed"
    stored = await api.all_pages("/v1/records")
    assert len(stored) == len({r["external_id"] for r in stored}) == 60000
