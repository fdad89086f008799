"""POST /v1/records/bulk and the bulk request read routes, end to end over HTTP."""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal
from typing import Any

import pytest

from server.api.common import SETTINGS, STORE
from server.http.auth import generate_api_key
from tests.conftest import Api, record


async def test_submit_processes_rows_and_counters_add_up(api: Api) -> None:
    await api.create_stream()
    summary = await api.submit([record(i) for i in range(120)])
    assert set(summary) == {
        "id",
        "status",
        "total_items",
        "processed_items",
        "successful_items",
        "failed_items",
        "skipped_items",
        "url",
    }
    assert summary["status"] == "pending"
    assert summary["total_items"] == 120
    assert summary["url"] == f"/v1/bulk_requests/{summary['id']}"
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "completed"
    assert (
        done["processed_items"],
        done["successful_items"],
        done["failed_items"],
        done["skipped_items"],
    ) == (120, 120, 0, 0)
    assert done["progress"] == 100
    assert done["source"] == "bulk_api"
    assert done["data_stream_key"] == "bank"
    assert done["started_at"] <= done["last_progress_at"] <= done["completed_at"]
    assert all(done[k].endswith("Z") for k in ("created_at", "started_at", "completed_at"))
    stored = await api.all_pages(f"/v1/records?bulk_request_id={summary['id']}")
    assert [r["description"] for r in stored] == [f"row {i}" for i in range(120)]
    assert sum(Decimal(str(r["amount"])) for r in stored) == sum(
        Decimal(f"{i}.25") for i in range(120)
    )


@pytest.mark.parametrize(
    ("currency", "amount", "expected"),
    [
        ("USD", 0.1, "0.1"),
        ("USD", 0.2, "0.2"),
        ("USD", "0.30", "0.3"),
        ("USD", 1234567.89, "1234567.89"),
        ("USD", -12.5, "-12.5"),
        ("USD", 500, "500"),
        ("USD", "12.340", "12.34"),
        ("USD", "9007199254740.99", "9007199254740.99"),
        ("JPY", 1500, "1500"),
        ("JPY", "1500.0", "1500"),
        ("BHD", "1.234", "1.234"),
    ],
)
async def test_amounts_are_stored_exactly(
    api: Api, currency: str, amount: Any, expected: str
) -> None:
    await api.create_stream("s", currency)
    summary = await api.submit([record(1, "s", amount=amount)])
    assert (await api.wait_terminal(summary["id"]))["successful_items"] == 1
    async with api.client.get(
        f"/v1/records?bulk_request_id={summary['id']}", headers=api.headers()
    ) as resp:
        raw = await resp.text()
    # The number is rendered with exactly these digits, not via a float.
    assert f'"amount":{expected},' in raw


@pytest.mark.parametrize(
    ("literal", "outcome"),
    [
        # More significant digits than a double holds: must not be rounded into validity.
        ("0.10000000000000001", "too_many_decimals"),
        ("12.340000000000000000", "12.34"),
        ("1.5e1", "15"),
        ("1E-2", "0.01"),
        ("123456789012.34", "123456789012.34"),
        ("9007199254740.99", "9007199254740.99"),
    ],
)
async def test_number_literals_are_read_exactly(api: Api, literal: str, outcome: str) -> None:
    await api.create_stream()
    raw = '{"records": [{"date": "2024-01-01", "data_stream_key": "bank", "amount": %s}]}'
    _, summary = await api.call(
        "POST",
        "/v1/records/bulk",
        data=raw % literal,
        headers={"Content-Type": "application/json"},
        expect=202,
    )
    done = await api.wait_terminal(summary["id"])
    if outcome == "too_many_decimals":
        assert done["failed_items"] == 1
        errors = (await api.get(f"/v1/bulk_requests/{summary['id']}/errors"))["data"]
        assert errors[0]["code"] == outcome
    else:
        assert done["successful_items"] == 1
        [stored] = (await api.get(f"/v1/records?bulk_request_id={summary['id']}"))["data"]
        assert Decimal(str(stored["amount"])) == Decimal(outcome)


async def test_sums_are_exact_where_floats_are_not(api: Api) -> None:
    await api.create_stream()
    summary = await api.submit([record(1, amount=0.1), record(2, amount=0.2)])
    await api.wait_terminal(summary["id"])
    rows = await api.get(f"/v1/records?bulk_request_id={summary['id']}")
    total = sum(Decimal(str(r["amount"])) for r in rows["data"])
    assert total == Decimal("0.3")
    assert 0.1 + 0.2 != 0.3  # the float trap this service avoids


@pytest.mark.parametrize(
    ("overrides", "code", "pointer"),
    [
        ({"amount": "12.345"}, "too_many_decimals", "/amount"),
        ({"amount": 1e400}, "amount_out_of_range", "/amount"),
        ({"amount": "abc"}, "invalid_amount", "/amount"),
        ({"amount": True}, "invalid_amount", "/amount"),
        ({"amount": None}, "required", "/amount"),
        ({"amount": "90071992547409.92"}, "amount_out_of_range", "/amount"),
        ({"date": "2023-02-30"}, "invalid_date", "/date"),
        ({"date": "20230101"}, "invalid_date", "/date"),
        ({"date": 20230101}, "invalid_date", "/date"),
        ({"data_stream_key": "nope"}, "unknown_data_stream", "/data_stream_key"),
        ({"data_stream_key": 7}, "invalid_type", "/data_stream_key"),
        ({"currency": "XYZ"}, "invalid_currency", "/currency"),
        ({"description": "x" * 1001}, "too_long", "/description"),
        ({"external_id": ""}, "invalid_length", "/external_id"),
        ({"external_id": "e" * 256}, "invalid_length", "/external_id"),
        ({"external_id": 12}, "invalid_type", "/external_id"),
        ({"metadata": []}, "invalid_type", "/metadata"),
        ({"metadata": {"k": "v" * 17000}}, "too_large", "/metadata"),
        ({"ammount": 1}, "unknown_field", "/ammount"),
    ],
)
async def test_row_problems_become_row_errors(
    api: Api, overrides: dict[str, Any], code: str, pointer: str
) -> None:
    await api.create_stream()
    body = [record(0), record(1, **overrides), record(2)]
    if "amount" in overrides and overrides["amount"] == 1e400:
        # json.dumps would write "Infinity"; send the literal the issue names.
        raw = (
            '{"records": [{"date": "2024-01-01", "data_stream_key": "bank", "amount": 1},'
            '{"date": "2024-01-01", "data_stream_key": "bank", "amount": 1e400},'
            '{"date": "2024-01-01", "data_stream_key": "bank", "amount": 2}]}'
        )
        status, summary = await api.call(
            "POST", "/v1/records/bulk", data=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 202
    else:
        summary = await api.submit(body)
    done = await api.wait_terminal(summary["id"])
    # A request whose rows fail is still completed: the job itself did not fail.
    assert done["status"] == "completed"
    assert (done["successful_items"], done["failed_items"]) == (2, 1)
    errors = await api.get(f"/v1/bulk_requests/{summary['id']}/errors")
    assert errors["next_cursor"] is None
    [error] = errors["data"]
    assert error["row"] == 1
    assert error["code"] == code
    assert error["pointer"] == f"/records/1{pointer}"
    assert error["message"]


async def test_unicode_everywhere_round_trips(api: Api) -> None:
    await api.create_stream()
    text = "Zahlung für Café ☕ — 東京 \U0001f4b8"
    summary = await api.submit(
        [
            record(
                1,
                description=text,
                external_id=f"ü-{text}",
                metadata={"note": text, "ключ": [1, 2.5]},
            )
        ]
    )
    await api.wait_terminal(summary["id"])
    [stored] = (await api.get("/v1/records"))["data"]
    assert stored["description"] == text
    assert stored["external_id"] == f"ü-{text}"
    assert stored["metadata"] == {"note": text, "ключ": [1, 2.5]}


async def test_text_that_json_escapes_round_trips_and_nul_is_refused(api: Api) -> None:
    # Batches reach SQLite as one JSON array: every escape must come back unchanged.
    # NUL is refused wherever text is stored (issue 9.6: metadata keys and values too);
    # the six characters `\u0000` are ordinary text and are kept.
    await api.create_stream()
    tricky = 'quote " backslash \\ tab \t newline \n LS \u2028 ctrl \x01 end'
    literal = {"k": tricky, "escape": "\\u0000 is six characters"}
    summary = await api.submit(
        [
            record(1, description=tricky, external_id=tricky, metadata=literal),
            record(2, description="cut\x00here"),
            record(3, external_id="id\x00x"),
            record(4, metadata={"k": "a\x00b"}),
            record(5, metadata={"outer": [{"ke\x00y": 1}]}),
        ]
    )
    done = await api.wait_terminal(summary["id"])
    assert (done["successful_items"], done["failed_items"]) == (1, 4)
    [stored] = (await api.get("/v1/records"))["data"]
    assert stored["description"] == tricky
    assert stored["external_id"] == tricky
    assert stored["metadata"] == literal
    errors = (await api.get(f"/v1/bulk_requests/{summary['id']}/errors"))["data"]
    # PostgreSQL's text cannot hold the NUL itself: the pointer names it as U+FFFD.
    nul = "\ufffd" if api.app[SETTINGS].database_url else "\x00"
    assert [(e["row"], e["code"], e["pointer"]) for e in errors] == [
        (1, "invalid_characters", "/records/1/description"),
        (2, "invalid_characters", "/records/2/external_id"),
        (3, "invalid_characters", "/records/3/metadata/k"),
        (4, "invalid_characters", f"/records/4/metadata/outer/0/ke{nul}y"),
    ]


async def test_on_conflict_skip_and_error(api: Api) -> None:
    await api.create_stream()
    first = await api.submit([record(1, external_id="a"), record(2, external_id="b")])
    await api.wait_terminal(first["id"])
    skip = await api.submit(
        [record(3, external_id="a"), record(4, external_id="c"), record(5, external_id="c")]
    )
    done = await api.wait_terminal(skip["id"])
    assert (done["successful_items"], done["skipped_items"], done["failed_items"]) == (1, 2, 0)
    error = await api.submit(
        [record(6, external_id="b"), record(7, external_id="d"), record(8, external_id="d")],
        on_conflict="error",
    )
    done = await api.wait_terminal(error["id"])
    assert (done["successful_items"], done["skipped_items"], done["failed_items"]) == (1, 0, 2)
    errors = (await api.get(f"/v1/bulk_requests/{error['id']}/errors"))["data"]
    assert [(e["row"], e["code"], e["external_id"]) for e in errors] == [
        (0, "duplicate_external_id", "b"),
        (2, "duplicate_external_id", "d"),
    ]
    ids = [r["external_id"] for r in await api.all_pages("/v1/records")]
    assert sorted(ids) == ["a", "b", "c", "d"]


async def test_same_external_id_in_two_streams_is_no_conflict(api: Api) -> None:
    await api.create_stream("one")
    await api.create_stream("two")
    summary = await api.submit(
        [record(1, "one", external_id="x"), record(2, "two", external_id="x")], on_conflict="error"
    )
    assert (await api.wait_terminal(summary["id"]))["successful_items"] == 2


async def _nothing_created(api: Api) -> None:
    assert (await api.get("/v1/bulk_requests"))["data"] == []


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        ({}, 422, "/records"),
        ({"records": []}, 422, "/records"),
        ({"records": "nope"}, 422, "/records"),
        ({"records": {"a": 1}}, 422, "/records"),
        ({"records": [{"date": "2024-01-01"}, 5]}, 422, "/records/1"),
        ({"records": [None]}, 422, "/records/0"),
        ({"records": [{}], "on_conflict": "merge"}, 422, "/on_conflict"),
        ({"records": [{}], "extra": 1}, 422, "/extra"),
        ([1, 2], 422, ""),
        ("text", 422, ""),
    ],
)
async def test_request_level_problems_reject_the_whole_call(
    api: Api, body: Any, status: int, pointer: str
) -> None:
    code, problem = await api.call("POST", "/v1/records/bulk", json=body)
    assert code == status
    assert problem["type"] == "/problems/validation-error"
    assert problem["status"] == status
    assert problem["instance"] == "/v1/records/bulk"
    assert pointer in [e["pointer"] for e in problem["errors"]]
    await _nothing_created(api)


async def test_too_many_records(api: Api) -> None:
    code, problem = await api.call(
        "POST", "/v1/records/bulk", json={"records": [record(i) for i in range(1001)]}
    )
    assert code == 422
    assert problem["errors"][0]["code"] == "too_long"
    await _nothing_created(api)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"records": [NaN]}',
        b'{"records": [Infinity]}',
        b"\xff\xfe{}",
        b"",
        b'{"records": [1,]}',
    ],
)
async def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    code, problem = await api.call(
        "POST", "/v1/records/bulk", data=raw, headers={"Content-Type": "application/json"}
    )
    assert code == 400
    assert problem["type"] == "/problems/invalid-json"
    await _nothing_created(api)


async def test_wrong_content_type_is_415(api: Api) -> None:
    code, problem = await api.call(
        "POST", "/v1/records/bulk", data=b'{"records": []}', headers={"Content-Type": "text/plain"}
    )
    assert code == 415
    assert problem["type"] == "/problems/unsupported-media-type"


async def test_huge_body_is_413_and_changes_nothing(api: Api) -> None:
    raw = b'{"records": ["' + b"x" * (50 * 1024 * 1024) + b'"]}'
    code, problem = await api.call(
        "POST",
        "/v1/records/bulk",
        data=io.BytesIO(raw),
        headers={"Content-Type": "application/json"},
    )
    assert code == 413
    assert problem["type"] == "/problems/payload-too-large"
    await _nothing_created(api)


async def test_idempotent_replay_mismatch_and_race(api: Api) -> None:
    await api.create_stream()
    key = {"Idempotency-Key": "order-42"}
    first = await api.submit([record(1)], headers=key)
    status, replay = await api.call(
        "POST", "/v1/records/bulk", json={"records": [record(1)]}, headers=key
    )
    assert status == 200
    assert replay["id"] == first["id"]
    async with api.client.post(
        "/v1/records/bulk", json={"records": [record(1)]}, headers=api.headers(key)
    ) as resp:
        assert resp.headers["Idempotent-Replayed"] == "true"
    status, problem = await api.call(
        "POST", "/v1/records/bulk", json={"records": [record(2)]}, headers=key
    )
    assert status == 409
    assert problem["type"] == "/problems/idempotency-key-reused"

    race_key = {"Idempotency-Key": "race"}
    results = await asyncio.gather(
        *[
            api.call("POST", "/v1/records/bulk", json={"records": [record(3)]}, headers=race_key)
            for _ in range(20)
        ]
    )
    assert sorted(s for s, _ in results) == [200] * 19 + [202]
    assert len({body["id"] for _, body in results}) == 1
    listed = await api.all_pages("/v1/bulk_requests")
    assert len(listed) == 2


@pytest.mark.parametrize(
    "long_id",
    # The long external_id sends the body down the exact (Decimal) parse path instead of
    # the fast one: the outcome must not depend on which path read it.
    ["short", "a-1234567890123456789"],
)
async def test_idempotency_compares_amounts_by_value(api: Api, long_id: str) -> None:
    await api.create_stream()
    key = {"Idempotency-Key": f"spelling-{long_id}", "Content-Type": "application/json"}
    row = '{"date": "2024-01-01", "data_stream_key": "bank", "external_id": "%s", "amount": %s}'
    first = None
    for spelling in ("12.30", "12.3", '"12.30"', '"12.3000"'):
        body = '{"records": [%s]}' % (row % (long_id, spelling))
        status, summary = await api.call("POST", "/v1/records/bulk", data=body, headers=key)
        assert status == (202 if first is None else 200), (spelling, summary)
        first = first or summary["id"]
        assert summary["id"] == first
    body = '{"records": [%s]}' % (row % (long_id, "12.31"))
    status, _ = await api.call("POST", "/v1/records/bulk", data=body, headers=key)
    assert status == 409


async def test_idempotency_keys_are_scoped_to_the_environment(api: Api) -> None:
    other = await _other_environment(api)
    await api.create_stream()
    await other.create_stream()
    key = {"Idempotency-Key": "shared"}
    mine = await api.submit([record(1)], headers=key)
    theirs = await other.submit([record(1)], headers=key)
    assert mine["id"] != theirs["id"]


async def _other_environment(api: Api) -> Api:
    new = generate_api_key()
    await api.app[STORE].create_api_key("other", new.key_hash, new.public_id)
    return Api(api.client, new.key)


async def test_environments_are_isolated_on_every_route(api: Api) -> None:
    other = await _other_environment(api)
    await api.create_stream()
    summary = await api.submit([record(1), record(2, date="bad")])
    rid = summary["id"]
    await api.wait_terminal(rid)
    for path in (
        f"/v1/bulk_requests/{rid}",
        f"/v1/bulk_requests/{rid}/errors",
        "/v1/data_streams/bank",
    ):
        status, problem = await other.call("GET", path)
        assert status == 404, path
        assert problem["type"] == "/problems/not-found"
    for path in (f"/v1/bulk_requests/{rid}/cancel", f"/v1/bulk_requests/{rid}/retry"):
        assert (await other.call("POST", path))[0] == 404
    assert (await other.get("/v1/bulk_requests"))["data"] == []
    assert (await other.get("/v1/data_streams"))["data"] == []
    assert (await other.get("/v1/records"))["data"] == []
    assert (await other.get(f"/v1/records?bulk_request_id={rid}"))["data"] == []
    assert (await other.get("/v1/records?data_stream_key=bank"))["data"] == []
    # The other environment's rows naming "bank" do not reach this environment's stream.
    theirs = await other.submit([record(3)])
    done = await other.wait_terminal(theirs["id"])
    assert done["failed_items"] == 1
    assert len(await api.all_pages("/v1/records")) == 1
    # The same stream key can exist in both.
    await other.create_stream()


async def test_list_filters_and_pagination_visit_each_item_once(api: Api) -> None:
    await api.create_stream()
    await api.create_stream("cash")
    ids = [(await api.submit([record(i, "bank" if i % 2 else "cash")]))["id"] for i in range(23)]
    seen: list[int] = []
    cursor = None
    while True:
        page = await api.get("/v1/bulk_requests?limit=5" + (f"&cursor={cursor}" if cursor else ""))
        seen.extend(r["id"] for r in page["data"])
        # New requests arriving while paging do not disturb the walk.
        await api.submit([record(99)])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    for rid in ids:
        await api.wait_terminal(rid)
    cash = await api.all_pages("/v1/bulk_requests?data_stream_key=cash")
    assert {r["id"] for r in cash} == set(ids[0::2])
    completed = await api.all_pages("/v1/bulk_requests?status=completed&source=bulk_api")
    assert set(ids) <= {r["id"] for r in completed}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=201",
        "limit=abc",
        "limit=1.5",
        "cursor=abc",
        "cursor=WyJyZWNvcmRzIiwxXQ",
        "status=done",
        "source=ftp",
    ],
)
async def test_bad_list_parameters_are_400(api: Api, query: str) -> None:
    status, problem = await api.call("GET", f"/v1/bulk_requests?{query}")
    assert status == 400
    assert problem["type"] == "/problems/invalid-parameter"
    assert problem["errors"][0]["parameter"] in {"limit", "cursor", "status", "source"}


@pytest.mark.parametrize("rid", ["abc", "-1", "1.5", "99999999999999999999", "%C3%A9", "0"])
async def test_odd_ids_are_404(api: Api, rid: str) -> None:
    status, problem = await api.call("GET", f"/v1/bulk_requests/{rid}")
    assert status == 404
    assert problem["type"] == "/problems/not-found"
