"""NACHA uploads end to end: no payment lost to a shared id, and `nacha_options`."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Awaitable, Callable

import pytest

from server.api.common import STORE
from server.config import Settings
from server.db.sqlite.migrations import MIGRATIONS
from server.ingest.nacha_codes import NachaOption
from tests.conftest import SHARED, Api, wait_until
from tests.db_access import stored_uploads
from tests.nacha_builder import Batch, Entry, FileHeader, build, encode, generated_file
from tests.test_uploads import HEADER, csv_bytes, upload

NACHA = SHARED / "nacha"
MANIFEST = json.loads((NACHA / "MANIFEST.json").read_text())
ApiFactory = Callable[[Settings], Awaitable[Api]]
CHECK_DIGIT_FILE = (
    NACHA / "public" / "relaxed" / "ppd-debit-invalid-entryDetail-checkDigit.ach"
).read_bytes()


async def nacha_upload(api: Api, content: bytes, expect: int | None = 202, **fields: str) -> dict:
    _, body = await upload(
        api, content, filename="f.ach", data_stream_key="ach", expect=expect, **fields
    )
    return body  # type: ignore[no-any-return]


def payroll(origin: str) -> bytes:
    entries = [Entry(cents=1000 * (i + 1), name=f"EMPLOYEE {i}") for i in range(3)]
    return encode(build([Batch(entries)], header=FileHeader(origin=origin)))


async def test_two_originators_files_of_one_day_both_store_all_their_payments(api: Api) -> None:
    """Regression (issue 10): two banks' files created the same day with modifier A used
    to share external ids; the second upload's payments were "skipped" as duplicates."""
    await api.create_stream("ach")
    first = await api.wait_terminal((await nacha_upload(api, payroll(" 121042882")))["id"])
    second = await api.wait_terminal((await nacha_upload(api, payroll(" 231380104")))["id"])
    for done in (first, second):
        assert (done["status"], done["successful_items"], done["skipped_items"]) == (
            "completed",
            3,
            0,
        )
    stored = await api.all_pages("/v1/records?data_stream_key=ach")
    assert len(stored) == 6
    assert {r["external_id"].split("-")[0] for r in stored} == {"121042882", "231380104"}
    # The same file again is still recognised: all three are duplicates.
    again = await api.wait_terminal((await nacha_upload(api, payroll(" 121042882")))["id"])
    assert (again["successful_items"], again["skipped_items"]) == (0, 3)


async def test_a_file_repeating_batch_and_trace_numbers_fails_and_stores_nothing(
    api: Api,
) -> None:
    """Regression (issue 10): six payments all numbered batch 0000000 / trace 0...0 were
    1 record and 5 "skipped", and the request said completed."""
    await api.create_stream("ach")
    entries = [Entry(cents=100 * (i + 1), trace="0" * 15) for i in range(6)]
    content = encode(build([Batch(entries, number=0)]))
    relaxed = "custom_trace_numbers,bypass_origin_validation"  # even so: never relaxed
    for options in ({}, {"nacha_options": relaxed}):
        done = await api.wait_terminal((await nacha_upload(api, content, **options))["id"])
        assert (done["status"], done["processed_items"], done["skipped_items"]) == ("failed", 0, 0)
        rejected = done["error_details"]["file"]
        repeats = [e["message"] for e in rejected["errors"] if e["rule"] == "repeated_trace_number"]
        assert len(repeats) == 5
        assert "line 4: trace number 000000000000000 repeats line 3" in repeats
    assert await api.all_pages("/v1/records") == []


async def test_a_file_with_an_endless_line_fails_at_that_line_and_stores_nothing(
    api: Api,
) -> None:
    """Regression (issue 9.3): 8 MB after the file header with no line break."""
    await api.create_stream("ach")
    content = encode(build([Batch([Entry()])]))[:95] + b"6" * (8 << 20)
    done = await api.wait_terminal((await nacha_upload(api, content))["id"])
    assert (done["status"], done["total_items"], done["processed_items"]) == ("failed", 0, 0)
    rejected = done["error_details"]["file"]
    assert (rejected["rule"], rejected["line"]) == ("record_length", 2)
    assert "without a line break" in done["error_message"]
    assert await api.all_pages("/v1/records") == []


@pytest.mark.parametrize("name", sorted(MANIFEST["relaxed"]))
async def test_a_relaxed_file_needs_its_named_relaxation(api: Api, name: str) -> None:
    expected = MANIFEST["relaxed"][name]
    content = (NACHA / "public" / "relaxed" / name).read_bytes()
    await api.create_stream("ach")
    refused = await api.wait_terminal((await nacha_upload(api, content))["id"])
    assert refused["status"] == "failed"
    assert refused["error_message"] == expected["default"]
    assert refused["nacha_options"] == []
    names = ",".join(expected["options"])
    done = await api.wait_terminal((await nacha_upload(api, content, nacha_options=names))["id"])
    assert done["status"] == "completed", done
    assert done["nacha_options"] == expected["options"]
    assert done["successful_items"] == expected["with_options"]["entry_details"]


async def test_nacha_options_are_checked_and_shown(api: Api, settings: Settings) -> None:
    await api.create_stream("ach")
    content = payroll(" 121042882")
    _, problem = await upload(
        api,
        content,
        data_stream_key="ach",
        nacha_options="allow_zero_batches, allowInvalidCheckDigit",
        expect=422,
    )
    assert problem["type"] == "/problems/validation-error"
    [error] = problem["errors"]
    assert (error["pointer"], error["code"]) == ("/nacha_options", "unknown_option")
    assert "'allowInvalidCheckDigit'" in error["message"]
    assert "allow_invalid_check_digit" in error["message"]  # the names it could have been
    _, problem = await upload(
        api, csv_bytes([HEADER]), format="csv", nacha_options="allow_zero_batches", expect=422
    )
    assert problem["errors"][0]["code"] == "not_applicable"
    assert (await api.get("/v1/bulk_requests"))["data"] == []
    assert await stored_uploads(api.app[STORE]) == []
    # Names are kept once each, in FORMAT.md's order; blank entries are ignored.
    body = await nacha_upload(
        api,
        content,
        nacha_options=" custom_return_codes,,bypass_origin_validation ,custom_return_codes",
    )
    shown = await api.get(f"/v1/bulk_requests/{body['id']}")
    assert shown["nacha_options"] == ["bypass_origin_validation", "custom_return_codes"]
    listed = (await api.get("/v1/bulk_requests"))["data"][0]
    assert listed["nacha_options"] == shown["nacha_options"]
    # Requests that are not NACHA uploads show null.
    _, csv_summary = await upload(
        api, csv_bytes([HEADER, ["2024-01-01", "1", "USD", "", "x", "ach"]])
    )
    assert (await api.get(f"/v1/bulk_requests/{csv_summary['id']}"))["nacha_options"] is None


async def test_the_options_are_part_of_what_an_idempotency_key_protects(api: Api) -> None:
    await api.create_stream("ach")
    key = {"Idempotency-Key": "ach-1"}
    content = payroll(" 121042882")
    _, first = await upload(api, content, data_stream_key="ach", headers=key)
    _, replay = await upload(api, content, data_stream_key="ach", headers=key, expect=200)
    assert replay["id"] == first["id"]
    await upload(
        api,
        content,
        data_stream_key="ach",
        headers=key,
        nacha_options="custom_return_codes",
        expect=409,
    )


async def test_a_retry_parses_with_the_same_options(
    make_api: ApiFactory, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, workers=1, batch_size=2, time_slice=1000.0)
    api = await make_api(settings)
    await api.create_stream("ach")
    # The worker is kept busy, so the NACHA upload is cancelled before it was parsed.
    rows = [HEADER] + [["2024-01-01", "1", "USD", "", f"e{i}", "ach"] for i in range(5000)]
    _, busy = await upload(api, csv_bytes(rows))
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{busy['id']}"), lambda r: r["processed_items"] > 0
    )
    waiting = await nacha_upload(api, CHECK_DIGIT_FILE, nacha_options="allow_invalid_check_digit")
    cancelled = await api.post(f"/v1/bulk_requests/{waiting['id']}/cancel", expect=200)
    # Terminal, so not parsing (SPEC §7), and no row was ever staged.
    assert (cancelled["status"], cancelled["parsing"], cancelled["total_items"]) == (
        "cancelled",
        False,
        0,
    )
    await api.post(f"/v1/bulk_requests/{busy['id']}/cancel", expect=202)
    child = await api.post(f"/v1/bulk_requests/{waiting['id']}/retry", expect=201)
    assert child["nacha_options"] == ["allow_invalid_check_digit"]
    done = await api.wait_terminal(child["id"])
    assert (done["status"], done["successful_items"]) == ("completed", 1)  # parsed relaxed


async def test_a_retry_of_parsed_rows_keeps_showing_the_options(
    make_api: ApiFactory, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, workers=1, batch_size=2, time_slice=1000.0)
    api = await make_api(settings)
    await api.create_stream("ach")
    content = b"".join(generated_file(3000, per_batch=1000))
    body = await nacha_upload(api, content, nacha_options="allow_zero_batches")
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{body['id']}"),
        lambda r: not r["parsing"] and r["processed_items"] > 0,
    )
    await api.post(f"/v1/bulk_requests/{body['id']}/cancel")
    assert (await api.wait_terminal(body["id"]))["status"] == "cancelled"
    child = await api.post(f"/v1/bulk_requests/{body['id']}/retry", expect=201)
    assert child["nacha_options"] == ["allow_zero_batches"]
    done = await api.wait_terminal(child["id"], 60)
    assert done["status"] == "completed"
    stored = await api.all_pages("/v1/records?data_stream_key=ach")
    assert len(stored) == len({r["external_id"] for r in stored}) == 3000


async def test_every_option_name_is_accepted(api: Api) -> None:
    await api.create_stream("ach")
    names = ",".join(option.value for option in NachaOption)
    body = await nacha_upload(api, payroll(" 121042882"), nacha_options=names)
    done = await api.wait_terminal(body["id"])
    assert done["nacha_options"] == [option.value for option in NachaOption]
    assert done["status"] == "completed"


@pytest.mark.sqlite_only("upgrades a SQLite file made by an older version")
async def test_a_database_from_before_keeps_its_records_and_their_ids(
    make_api: ApiFactory, settings: Settings
) -> None:
    """Migration 2 adds the requests' nacha_options and changes no record: an id stored
    in the old form stays as it was (README, NACHA uploads)."""
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.db_path)
    conn.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    now = "2024-01-01T00:00:00.000000Z"
    conn.executescript(
        f"""
        INSERT INTO environments (id, name, created_at) VALUES (1, 'default', '{now}');
        INSERT INTO data_streams (id, environment_id, key, currency, created_at)
            VALUES (1, 1, 'ach', 'USD', '{now}');
        INSERT INTO bulk_requests (id, environment_id, status, source, on_conflict,
            total_items, processed_items, successful_items, upload_format, filename,
            data_stream_id, created_at, queued_at, completed_at)
            VALUES (1, 1, 'completed', 'nacha', 'skip', 1, 1, 1, 'nacha', 'old.ach', 1,
                    '{now}', '{now}', '{now}');
        INSERT INTO records (data_stream_id, bulk_request_id, row_index, date, amount_minor,
            currency, external_id, created_at)
            VALUES (1, 1, 0, '2024-01-15', 1000, 'USD', '240115A-0000001-091000010000001',
                    '{now}');
        """
    )
    conn.close()
    api = await make_api(settings)
    old = await api.get("/v1/bulk_requests/1")
    assert (old["status"], old["nacha_options"]) == ("completed", None)  # not recorded then
    [stored] = await api.all_pages("/v1/records?data_stream_key=ach")
    assert stored["external_id"] == "240115A-0000001-091000010000001"
    # New uploads get FORMAT.md's ids beside it (the README's migration note says so).
    body = await nacha_upload(api, encode(build([Batch([Entry()])])))
    assert (await api.wait_terminal(body["id"]))["successful_items"] == 1
    ids = {r["external_id"] for r in await api.all_pages("/v1/records?data_stream_key=ach")}
    assert ids == {
        "240115A-0000001-091000010000001",
        "091000019-2401151200A-0000001-091000010000001",
    }
