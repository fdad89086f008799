"""Every bad input is a 4xx problem and changes nothing (SPEC §11; issues 9.2, 9.6, 15.1, 15.4).

Each case here was a 500 (or aiohttp's text/plain page, or silently accepted) before
the fix; the generated counterparts are in test_fuzz_inputs.py.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import orjson
import pytest
from aiohttp import FormData

from server.constants import ORJSON_MAX_TEXT_BYTES
from tests.conftest import Api, record

BULK = "/v1/records/bulk"
JSON_HEADERS = {"Content-Type": "application/json"}
RECORD = '{"date": "2024-01-31", "data_stream_key": "bank", "amount": "1.25"%s}'


async def post_raw(api: Api, path: str, raw: bytes, **headers: str) -> tuple[int, Any]:
    # As a stream: aiohttp warns that a large bytes body would block its loop.
    data = io.BytesIO(raw)
    async with api.client.post(path, data=data, headers=api.headers(JSON_HEADERS | headers)) as r:
        assert r.headers["X-Request-ID"]
        body = await r.read()
        if r.status >= 400:
            assert r.content_type == "application/problem+json", (r.status, body[:300])
        return r.status, orjson.loads(body) if body else None


async def assert_nothing_created(api: Api, streams: int = 1) -> None:
    assert (await api.get("/v1/bulk_requests"))["data"] == []
    assert len((await api.get("/v1/data_streams"))["data"]) == streams


def bulk(*extra: str) -> bytes:
    return ('{{"records": [{}]}}'.format(", ".join(RECORD % e for e in extra))).encode()


def codes(problem: Any) -> list[tuple[str, str]]:
    return [(e["pointer"], e["code"]) for e in problem["errors"]]


# --- 9.2: lone surrogates ----------------------------------------------------------


SURROGATE_FIELDS = {
    "description": (', "description": "a\\ud800b"', "/records/0/description"),
    "external_id": (', "external_id": "\\udfff"', "/records/0/external_id"),
    "metadata key": (', "metadata": {"\\ud800": 1}', "/records/0/metadata/\\ud800"),
    "metadata value": (', "metadata": {"k": ["x", "\\ud83d"]}', "/records/0/metadata/k/1"),
    "record field name": (', "\\ud800": 1', "/records/0/\\ud800"),
}


@pytest.mark.parametrize("raw_bytes", [False, True], ids=["escaped", "raw-bytes"])
@pytest.mark.parametrize("case", list(SURROGATE_FIELDS))
async def test_lone_surrogates_in_a_record_are_422(api: Api, case: str, raw_bytes: bool) -> None:
    await api.create_stream()
    extra, pointer = SURROGATE_FIELDS[case]
    body = bulk(extra)
    if raw_bytes:  # the same surrogate as the UTF-8-style bytes a careless encoder writes
        text = body.decode("ascii").encode("ascii").decode("unicode_escape")
        body = text.encode("utf-8", "surrogatepass")
    status, problem = await post_raw(api, BULK, body)
    assert status == 422, problem
    assert codes(problem) == [(pointer, "invalid_unicode")]
    await assert_nothing_created(api)


async def test_lone_surrogate_in_data_stream_key_of_a_record_is_422(api: Api) -> None:
    await api.create_stream()
    raw = b'{"records": [{"date": "2024-01-31", "data_stream_key": "\\ud800", "amount": 1}]}'
    status, problem = await post_raw(api, BULK, raw)
    assert (status, codes(problem)) == (422, [("/records/0/data_stream_key", "invalid_unicode")])
    await assert_nothing_created(api)


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
async def test_unknown_top_level_field_named_with_a_surrogate_is_an_echoable_422(
    api: Api, accept: str
) -> None:
    await api.create_stream()
    raw = b'{"records": [' + (RECORD % "").encode() + b'], "\\ud800x": 1}'
    status, problem = await post_raw(api, BULK, raw, Accept=accept)
    assert status == 422
    # The name is echoed as the characters of its escape, not dropped or mangled.
    assert codes(problem) == [("/\\ud800x", "unknown_field")]
    status, problem = await post_raw(api, "/v1/data_streams", b'{"key": "k", "\\udc80": 1}')
    assert (status, codes(problem)) == (422, [("/\\udc80", "unknown_field")])
    await assert_nothing_created(api)


@pytest.mark.parametrize(
    ("name", "code"),
    [("\\ud800", "invalid_unicode"), ("cut\\u0000here", "invalid_characters")],
)
async def test_data_stream_name_with_surrogate_or_nul_is_422(
    api: Api, name: str, code: str
) -> None:
    raw = b'{"key": "s1", "name": "' + name.encode() + b'"}'
    status, problem = await post_raw(api, "/v1/data_streams", raw)
    assert (status, codes(problem)) == (422, [("/name", code)])
    assert (await api.get("/v1/data_streams"))["data"] == []


# --- 9.2: nesting ------------------------------------------------------------------


def nested_object(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


async def test_metadata_nests_at_most_32_levels(api: Api) -> None:
    await api.create_stream()
    status, problem = await post_raw(api, BULK, bulk(f', "metadata": {nested_object(33)}'))
    assert (status, codes(problem)) == (422, [("/records/0/metadata" + "/a" * 32, "too_deep")])
    await assert_nothing_created(api)
    summary = await api.post(
        BULK, orjson.loads(bulk(f', "metadata": {nested_object(32)}')), expect=202
    )
    done = await api.wait_terminal(summary["id"])
    assert done["successful_items"] == 1


@pytest.mark.parametrize(
    "where",
    [
        ', "metadata": {"deep": %s}',
        ', "amount": %s',
        ', "description": %s',
        ', "metadata": {"a": 1}, "currency": %s',
    ],
)
async def test_arrays_nested_1000_deep_in_any_field_are_422(api: Api, where: str) -> None:
    await api.create_stream()
    deep = "[" * 1000 + "]" * 1000
    status, problem = await post_raw(api, BULK, bulk(where % deep))
    assert status == 422, problem
    assert {e["code"] for e in problem["errors"]} == {"too_deep"}
    await assert_nothing_created(api)


@pytest.mark.parametrize("path", [BULK, "/v1/data_streams"])
async def test_a_body_nested_beyond_any_parser_is_422_too_deep(api: Api, path: str) -> None:
    status, problem = await post_raw(api, path, b"[" * 100_000 + b"]" * 100_000)
    assert (status, codes(problem)) == (422, [("", "too_deep")])
    status, problem = await post_raw(api, path, b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert status == 422, problem


# --- 15.1: numbers that cannot be stored, in every field ------------------------------


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotency-key"])
@pytest.mark.parametrize(
    ("value", "pointer"),
    [
        ("[13020867532603699232768]", "/records/0/amount/0"),
        ('{"x": 1e400}', "/records/0/amount/x"),
        ("[-9223372036854775809]", "/records/0/amount/0"),
    ],
)
async def test_amount_holding_an_unstorable_number_is_422(
    api: Api, value: str, pointer: str, idempotent: bool
) -> None:
    await api.create_stream()
    raw = b'{"records": [{"date": "2024-01-31", "data_stream_key": "bank", "amount": %s}]}' % (
        value.encode()
    )
    headers = {"Idempotency-Key": "k-1"} if idempotent else {}
    status, problem = await post_raw(api, BULK, raw, **headers)
    assert (status, codes(problem)) == (422, [(pointer, "out_of_range")])
    await assert_nothing_created(api)


@pytest.mark.parametrize("field", ["date", "currency", "description", "external_id"])
async def test_every_field_gets_the_same_number_check(api: Api, field: str) -> None:
    await api.create_stream()
    status, problem = await post_raw(api, BULK, bulk(f', "{field}": [1e400]'))
    assert (status, codes(problem)) == (422, [(f"/records/0/{field}/0", "out_of_range")])


async def test_a_scalar_amount_beyond_64_bits_stays_a_row_error(api: Api) -> None:
    await api.create_stream()
    raw = bulk(', "metadata": {"k": [1]}').replace(b'"1.25"', b"13020867532603699232768")
    status, summary = await post_raw(api, BULK, raw)
    assert status == 202, summary
    await api.wait_terminal(summary["id"])
    errors = (await api.get(f"/v1/bulk_requests/{summary['id']}/errors"))["data"]
    assert [e["code"] for e in errors] == ["amount_out_of_range"]


# --- 9.2: cursors and path ids --------------------------------------------------------


def forged_cursor(kind: str, position: int) -> str:
    raw = orjson.dumps([kind, position])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("position", [2**63, 2**64 - 1, -1])
@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/records", "records"),
        ("/v1/bulk_requests", "bulk_requests"),
        ("/v1/data_streams", "data_streams"),
        ("/v1/bulk_requests/{id}/errors", "errors"),
    ],
)
async def test_forged_cursor_beyond_64_bits_is_400(
    api: Api, path: str, kind: str, position: int
) -> None:
    await api.create_stream()
    summary = await api.submit([record(1, date="2024-02-30")])
    await api.wait_terminal(summary["id"])
    url = path.format(id=summary["id"]) + f"?cursor={forged_cursor(kind, position)}"
    status, problem = await api.call("GET", url)
    assert status == 400, problem
    assert problem["errors"][0]["parameter"] == "cursor"


@pytest.mark.parametrize(
    "template",
    [
        "GET /v1/bulk_requests/{id}",
        "GET /v1/bulk_requests/{id}/errors",
        "GET /v1/bulk_requests/{id}/events",
        "POST /v1/bulk_requests/{id}/cancel",
        "POST /v1/bulk_requests/{id}/retry",
    ],
)
@pytest.mark.parametrize("request_id", [2**63, 2**64, 10**40, 9223372036854775807])
async def test_path_ids_beyond_64_bits_are_404(api: Api, template: str, request_id: int) -> None:
    method, path = template.split()
    status, problem = await api.call(method, path.format(id=request_id))
    assert status == 404, problem
    assert problem["type"] == "/problems/not-found"


# --- 9.6: duplicate keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "pointer"),
    [
        (
            b'{"records": [{"date": "2024-01-31", "data_stream_key": "bank", '
            b'"amount": "1.00", "amount": "1000.00"}]}',
            "/records/0/amount",
        ),
        # The same key spelled with an escape is still the same key.
        (
            b'{"records": [{"date": "2024-01-31", "data_stream_key": "bank", '
            b'"amount": 1, "\\u0061mount": 2}]}',
            "/records/0/amount",
        ),
        (b'{"records": [' + (RECORD % "").encode() + b'], "records": [{}]}', "/records"),
        (bulk(', "metadata": {"a": {"b": 1, "b": 2}}'), "/records/0/metadata/a/b"),
        (
            bulk(', "description": "at 12:30 {x}"', ', "metadata": {"k": 1, "k": 1}'),
            "/records/1/metadata/k",
        ),
    ],
)
async def test_duplicate_keys_are_422(api: Api, raw: bytes, pointer: str) -> None:
    await api.create_stream()
    status, problem = await post_raw(api, BULK, raw)
    assert (status, codes(problem)) == (422, [(pointer, "duplicate_key")]), problem
    await assert_nothing_created(api)


async def test_duplicate_key_in_a_data_stream_is_422(api: Api) -> None:
    status, problem = await post_raw(api, "/v1/data_streams", b'{"key": "a", "key": "b"}')
    assert (status, codes(problem)) == (422, [("/key", "duplicate_key")])
    assert (await api.get("/v1/data_streams"))["data"] == []


@pytest.mark.parametrize(
    "extra",
    [
        ', "description": "colon: brace { bracket [ and \\"quoted: {\\""',
        ', "metadata": {"a": {"b": [1, {"c": "d"}]}, "e": "x:y"}',
        ', "metadata": {"\\u00e9t\\u00e9": "\\u003a", "n": 1e5}',
        ', "description": "\\u005b\\u007b\\u003a"',
    ],
)
async def test_bodies_without_duplicates_are_accepted(api: Api, extra: str) -> None:
    """No false positives from the counting proofs: structural bytes and escapes in strings."""
    await api.create_stream()
    status, summary = await post_raw(api, BULK, bulk(extra, "", extra))
    assert status == 202, summary
    done = await api.wait_terminal(summary["id"])
    assert done["successful_items"] == 3


# --- bodies over 1 MiB, parsed by the standard library's json (ORJSON_MAX_TEXT_BYTES) ---


def large_bulk(last: str) -> bytes:
    """1000 valid records of about 1.3 kB each (over 1 MiB), the last one ending in `last`."""
    fields = ', "description": "%s", "external_id": "x%d", "metadata": {"pad": "%s"}'
    records = [RECORD % (fields % ("d" * 1000, n, "p" * 200)) for n in range(999)]
    body = '{"records": [' + ", ".join([*records, RECORD % last]) + "]}"
    assert len(body) > ORJSON_MAX_TEXT_BYTES
    return body.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize(
    ("last", "status", "code"),
    [
        (', "description": "a\\ud800b"', 422, "invalid_unicode"),
        (', "description": "a\ud800b"', 422, "invalid_unicode"),  # as raw bytes
        (', "metadata": {"n": NaN}', 400, None),
        (', "metadata": {"n": Infinity}', 400, None),
        (', "amount": 2, "amount": 3', 422, "duplicate_key"),
        (', "metadata": {"n": 1, "n": 2}', 422, "duplicate_key"),
        (', "metadata": {"n": 1', 400, None),
    ],
    ids=["escaped-surrogate", "raw-surrogate", "nan", "infinity", "dup-field", "dup-meta", "cut"],
)
async def test_a_large_body_with_bad_input_is_a_4xx_problem(
    api: Api, last: str, status: int, code: str | None
) -> None:
    await api.create_stream()
    answer, problem = await post_raw(api, BULK, large_bulk(last))
    assert answer == status, problem
    if code is None:
        assert problem["type"] == "/problems/invalid-json"
    else:
        assert [c for _, c in codes(problem)] == [code]
        assert codes(problem)[0][0].startswith("/records/999/")
    await assert_nothing_created(api)


async def test_a_large_valid_body_is_accepted_whole(api: Api) -> None:
    await api.create_stream()
    answer, summary = await post_raw(api, BULK, large_bulk(', "metadata": {"n": 1.5}'))
    assert answer == 202, summary
    done = await api.wait_terminal(summary["id"])
    assert (done["status"], done["successful_items"]) == ("completed", 1000)


# --- 9.6 and 15.4: uploads ------------------------------------------------------------

CSV = b"date,amount,data_stream_key\r\n2024-01-31,1.25,bank\r\n"


async def upload(api: Api, filename: str = "rows.csv", **fields: str) -> tuple[int, Any]:
    form = FormData()
    form.add_field("file", CSV, filename=filename, content_type="text/csv")
    for name, value in fields.items():
        form.add_field(name, value)
    return await api.call("POST", "/v1/uploads", data=form)


async def test_a_10000_character_filename_is_stored_cut_to_255(api: Api) -> None:
    await api.create_stream()
    status, summary = await upload(api, filename="é" * 9996 + ".csv")
    assert status == 202, summary
    assert summary["filename"] == "é" * 255
    done = await api.wait_terminal(summary["id"])
    assert (done["filename"], done["successful_items"]) == ("é" * 255, 1)


async def test_a_part_header_too_long_even_for_a_filename_is_a_400_problem(api: Api) -> None:
    status, problem = await upload(api, filename="a" * 200_000)
    assert status == 400, problem
    assert "longer than 128 KiB" in problem["detail"]
    await assert_nothing_created(api, streams=0)


async def test_a_filename_that_is_not_utf8_is_stored_with_replacement_characters(api: Api) -> None:
    await api.create_stream()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="r\xff\xfe.csv"\r\n\r\n'
        + CSV
        + b"\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    status, summary = await api.call("POST", "/v1/uploads", data=body, headers=headers)
    assert status == 202, summary
    assert summary["filename"].startswith("r\ufffd")
    assert summary["filename"].endswith(".csv")


@pytest.mark.parametrize("name", ["format", "on_conflict", "data_stream_key"])
async def test_an_empty_form_field_is_422_naming_it(api: Api, name: str) -> None:
    await api.create_stream()
    status, problem = await upload(api, **{name: ""})
    assert status == 422, problem
    assert codes(problem) == [(f"/{name}", "empty")]
    await assert_nothing_created(api)
    # Left out, each takes its documented default.
    status, summary = await upload(api)
    assert status == 202, summary
