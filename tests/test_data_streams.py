"""Data streams and the records listing (SPEC §5)."""

from __future__ import annotations

import pytest

from tests.conftest import Api, record


async def test_create_get_list_and_duplicate(api: Api) -> None:
    created = await api.post(
        "/v1/data_streams", {"key": "acct-1", "name": "Checking €"}, expect=201
    )
    assert created["key"] == "acct-1"
    assert created["currency"] == "USD"
    assert created["name"] == "Checking €"
    assert await api.get("/v1/data_streams/acct-1") == created
    status, problem = await api.call("POST", "/v1/data_streams", json={"key": "acct-1"})
    assert status == 409
    assert problem["type"] == "/problems/conflict"
    for n in range(4):
        await api.create_stream(f"s{n}", "EUR")
    listed = await api.all_pages("/v1/data_streams", limit=2)
    assert [s["key"] for s in listed] == ["acct-1", "s0", "s1", "s2", "s3"]
    assert (await api.call("GET", "/v1/data_streams/missing"))[0] == 404


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/key"),
        ({"key": ""}, "/key"),
        ({"key": "a b"}, "/key"),
        ({"key": 5}, "/key"),
        ({"key": "k" * 129}, "/key"),
        ({"key": "ok", "currency": "usd"}, "/currency"),
        ({"key": "ok", "currency": "ABC"}, "/currency"),
        ({"key": "ok", "name": 3}, "/name"),
        ({"key": "ok", "color": "red"}, "/color"),
    ],
)
async def test_invalid_streams_are_422_and_create_nothing(
    api: Api, body: dict[str, object], pointer: str
) -> None:
    status, problem = await api.call("POST", "/v1/data_streams", json=body)
    assert status == 422
    assert pointer in [e["pointer"] for e in problem["errors"]]
    assert (await api.get("/v1/data_streams"))["data"] == []


async def test_records_listing_filters_and_pages(api: Api) -> None:
    await api.create_stream("a")
    await api.create_stream("b", "JPY")
    first = await api.submit([record(i, "a") for i in range(30)])
    second = await api.submit([record(i, "b", amount=i * 100) for i in range(20)])
    await api.wait_terminal(first["id"])
    await api.wait_terminal(second["id"])
    everything = await api.all_pages("/v1/records", limit=7)
    assert len(everything) == 50
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)
    only_b = await api.all_pages("/v1/records?data_stream_key=b", limit=6)
    assert {r["data_stream_key"] for r in only_b} == {"b"}
    assert [r["amount"] for r in only_b] == [i * 100 for i in range(20)]
    assert {r["currency"] for r in only_b} == {"JPY"}
    mismatch = f"/v1/records?data_stream_key=a&bulk_request_id={second['id']}"
    assert await api.all_pages(mismatch) == []
    assert len(await api.all_pages(f"/v1/records?bulk_request_id={first['id']}")) == 30
    status, problem = await api.call("GET", "/v1/records?bulk_request_id=x")
    assert status == 400
    assert problem["errors"][0]["parameter"] == "bulk_request_id"
    assert set(everything[0]) == {
        "id",
        "data_stream_key",
        "date",
        "amount",
        "currency",
        "description",
        "external_id",
        "metadata",
        "bulk_request_id",
        "created_at",
    }
