"""The accept's fast path (issue 14): a body whose every row msgspec proves ordinary is
staged as validated records the worker only binds. It must change speed, never an
answer: the same records and row errors, the same idempotency fingerprints, old chunks
still readable, retries working, streams decided as before."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.api.common import SETTINGS, STORE
from server.config import Settings
from server.db.port import Storage
from server.ingest.validation import StreamRef, ValidRecord
from server.jobs.worker import WorkerPool
from server.staging import (
    RAW_BODY_V1,
    VALIDATED_V1,
    ValidatedRows,
    decode_chunk,
    encode_validated,
)
from tests.conftest import Api, record, wait_until
from tests.db_access import stored_rows
from tests.test_atomic import slow, submit_atomic

MakeApi = Callable[[Settings], Awaitable[Api]]
STREAMS = {"bank": "USD", "yen": "JPY", "dinar": "BHD"}
JSON_TYPE = {"Content-Type": "application/json"}


async def _post_text(api: Api, body: bytes, headers: dict[str, str] | None = None) -> Any:
    status, answer = await api.call(
        "POST", "/v1/records/bulk", data=body, headers={**JSON_TYPE, **(headers or {})}
    )
    assert status in (200, 202), (status, answer)
    return answer


async def _query(store: Storage, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in await stored_rows(store, sql)]


async def _chunk_kinds(store: Storage) -> list[str]:
    query = "SELECT body FROM request_chunks ORDER BY bulk_request_id, first_row"
    bodies = [row[0] for row in await _query(store, query)]
    kinds = {VALIDATED_V1: "validated", RAW_BODY_V1: "raw"}
    return [kinds.get(b[:1], "json") for b in bodies]


def _row_text(fields: list[tuple[str, str]]) -> bytes:
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields) + "}").encode()


def _random_row(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """One row as (key, JSON text) pairs: every spelling an ordinary row may take."""
    key = rng.choice(sorted(STREAMS))
    exponent = {"bank": 2, "yen": 0, "dinar": 3}[key]
    whole = rng.choice(["0", "7", "-12", str(rng.randrange(10**15))])
    places = rng.randrange(exponent + 1)
    number = whole + ("." + "".join(rng.choice("0123456789") for _ in range(places)))
    amount = rng.choice([whole, number, f'"{number}"', number + "0" * rng.randrange(3)])
    if amount.endswith(".") or amount.endswith('."'):
        amount = whole
    fields = [
        ("data_stream_key", f'"{key}"'),
        ("date", f'"2024-{rng.randrange(1, 13):02}-{rng.randrange(1, 29):02}"'),
        ("amount", amount),
    ]
    optional = {
        "currency": ["null", f'"{STREAMS[key]}"'],
        "description": ["null", '""', f'"row {n}"', '"caf\\u00e9 \\"q\\" \\u2615"', '"tab\\t"'],
        "external_id": ["null", f'"x-{n}"'],
    }
    for name, choices in optional.items():
        if rng.random() < 0.6:
            fields.append((name, rng.choice(choices)))
    rng.shuffle(fields)
    return fields


def _bodies(seed: int, count: int) -> list[bytes]:
    """Bodies of ordinary rows (the fast path) and bodies with one row it must leave to
    the precise path (a row error, a colon in a string, metadata)."""
    rng = random.Random(seed)
    bodies = []
    n = 0
    for b in range(count):
        rows = []
        for _ in range(rng.randrange(1, 40)):
            rows.append(_row_text(_random_row(rng, n)))
            n += 1
        if b % 4 == 3:
            odd = rng.choice(
                [
                    b'{"data_stream_key": "bank", "date": "2024-02-30", "amount": 1}',
                    b'{"data_stream_key": "bank", "date": "2024-02-03", "amount": "1.234"}',
                    b'{"data_stream_key": "nope", "date": "2024-02-03", "amount": 1}',
                    b'{"data_stream_key": "bank", "date": "2024-02-03", "amount": 1, '
                    b'"description": "ref: 12"}',
                    b'{"data_stream_key": "bank", "date": "2024-02-03", "amount": 1, '
                    b'"metadata": {"a": [1]}}',
                ]
            )
            rows.insert(rng.randrange(len(rows) + 1), odd)
        bodies.append(b'{"records": [' + b", ".join(rows) + b"]}")
    return bodies


async def _make_with_streams(make_api: MakeApi, settings: Settings, name: str) -> Api:
    directory = settings.db_path.parent / name
    directory.mkdir()
    api = await make_api(dataclasses.replace(settings, db_path=directory / "bulk.db"))
    for key, currency in STREAMS.items():
        await api.create_stream(key, currency)
    return api


def _sqlite_query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _stored(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every column a request's outcome is made of, quoted (type and bytes)."""
    return {
        "records": _sqlite_query(
            db,
            "SELECT quote(data_stream_id), quote(bulk_request_id), quote(row_index), quote(date),"
            " quote(amount_minor), quote(currency), quote(description), quote(external_id),"
            " quote(metadata) FROM records ORDER BY bulk_request_id, row_index",
        ),
        "row_errors": _sqlite_query(
            db,
            "SELECT quote(bulk_request_id), quote(row), quote(line), quote(external_id),"
            " quote(code), quote(message), quote(pointer), quote(source)"
            " FROM row_errors ORDER BY bulk_request_id, row",
        ),
        "requests": _sqlite_query(
            db,
            "SELECT id, status, on_conflict, total_items, processed_items, successful_items,"
            " failed_items, skipped_items, data_stream_id FROM bulk_requests ORDER BY id",
        ),
    }


@pytest.mark.sqlite_only("compares two SQLite files column by column with quote()")
async def test_fast_and_precise_paths_store_identical_records_and_row_errors(
    make_api: MakeApi, settings: Settings
) -> None:
    fast = await _make_with_streams(make_api, settings, "fast")
    precise = await _make_with_streams(make_api, settings, "precise")
    bodies = _bodies(seed=14, count=40)
    ids = []
    for body in bodies:
        ids.append((await _post_text(fast, body))["id"])
        # `"sk\u0069p"` is "skip" to every JSON parser, but not the literal bytes the fast
        # path accepts: the same request, decided the precise way.
        precise_body = body[:-1] + b', "on_conflict": "sk\\u0069p"}'
        assert (await _post_text(precise, precise_body))["id"] == ids[-1]
    for api in (fast, precise):
        for request_id in ids:
            await api.wait_terminal(request_id)
    fast_stored = _stored(fast.app[SETTINGS].db_path)
    precise_stored = _stored(precise.app[SETTINGS].db_path)
    assert len(fast_stored["records"]) > 500
    assert fast_stored["row_errors"], "some bodies hold a row error"
    assert fast_stored == precise_stored


async def test_a_provable_body_is_staged_validated_and_any_other_as_json(
    make_api: MakeApi, settings: Settings
) -> None:
    """Unkeyed bodies of scalar rows are staged raw, whatever their rows hold (the
    worker finishes them); a keyed provable body is staged validated (its fingerprint
    needs the parse anyway); anything else as JSON."""
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream("bank", "USD")
    store = api.app[STORE]
    await api.post(
        "/v1/records/bulk",
        {"records": [record(1), record(2, external_id="e2")]},
        expect=202,
        headers={"Idempotency-Key": "k"},
    )
    assert await _chunk_kinds(store) == ["validated"]
    for body in [
        {"records": [record(1), record(2, amount="1.234")]},  # a row error
        {"records": [record(1, stream="later")]},  # a stream unknown at accept
        {"records": [record(1), record(2)]},
        {"records": [record(1)], "on_conflict": "error"},  # duplicates would need the row
        {"records": [record(1, metadata={"a": 1})]},
        {"records": [record(1, description="ref: 12")]},  # the ':' proof cannot tell
    ]:
        await api.post("/v1/records/bulk", body, expect=202)
    assert await _chunk_kinds(store) == ["validated"] + ["raw"] * 3 + ["json"] * 3
    (body,) = (await _query(store, "SELECT body FROM request_chunks WHERE bulk_request_id = 1"))[0]
    rows = decode_chunk(body)
    assert isinstance(rows, ValidatedRows)
    assert rows.streams == {"bank": StreamRef(1, "USD")}
    assert rows.records == [
        ValidRecord(1, "2024-01-31", 125, "USD", "row 1", None, None),
        ValidRecord(1, "2024-01-31", 225, "USD", "row 2", "e2", None),
    ]


# The fingerprints the service stored for these bodies before the fast path existed
# (main @ cf29f47, /tmp/perf2/golden.py): a client replaying one must still match.
GOLDEN = [
    (
        b'{"records": [{"data_stream_key": "bank", "date": "2024-01-31", "amount": 12.5, '
        b'"description": "caf\\u00e9"}, {"data_stream_key": "bank", "date": "2024-02-29", '
        b'"amount": 7, "currency": null, "external_id": "a-1"}, {"data_stream_key": "bank", '
        b'"date": "2024-03-01", "amount": "3.10", "currency": "USD", "description": null}]}',
        "ce7484e4e0dbd499e058a1b8725b84f8cefbad94851b04eb06b700df1fc3b9d9",
    ),
    (
        b'{"records": [{"data_stream_key": "yen", "date": "2024-01-31", "amount": -1200}], '
        b'"on_conflict": "skip"}',
        "6baad16aac0fd5c93b9f43367e5b7a9c4749b9c9336f00b705c58a5ec1b54f98",
    ),
]


async def test_idempotency_fingerprints_are_unchanged_by_the_fast_path(
    make_api: MakeApi, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream("bank", "USD")
    await api.create_stream("yen", "JPY")
    for n, (body, fingerprint) in enumerate(GOLDEN):
        key = {"Idempotency-Key": f"k{n}"}
        first = await _post_text(api, body, key)
        assert (await _chunk_kinds(api.app[STORE]))[-1] == "validated"
        stored = await _query(
            api.app[STORE], f"SELECT fingerprint FROM idempotency_keys WHERE key = 'k{n}'"
        )
        assert stored == [(fingerprint,)]
        # A replay, spelled differently (the precise path): the same request.
        status, replay = await api.call(
            "POST", "/v1/records/bulk", json=orjson.loads(body), headers=key
        )
        assert (status, replay["id"]) == (200, first["id"])
    # A request first accepted the precise way (as before this change) and replayed
    # through the fast path matches too.
    key = {"Idempotency-Key": "precise-first"}
    spelled = GOLDEN[1][0].replace(b'"skip"', b'"sk\\u0069p"')
    first = await _post_text(api, spelled, key)
    assert (await _chunk_kinds(api.app[STORE]))[-1] == "json"
    status, replay = await api.call(
        "POST", "/v1/records/bulk", data=GOLDEN[1][0], headers={**JSON_TYPE, **key}
    )
    assert (status, replay["id"]) == (200, first["id"])


async def _run_workers(api: Api, settings: Settings, request_ids: list[int]) -> list[Any]:
    """Process with a real worker pool the app (started with workers=0) did not start."""
    pool = WorkerPool(api.app[STORE], dataclasses.replace(settings, workers=1))
    await pool.start()
    try:
        return [await api.wait_terminal(request_id) for request_id in request_ids]
    finally:
        await pool.stop()


async def test_chunks_staged_before_validated_ones_still_decode(
    make_api: MakeApi, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream("bank", "USD")
    row = {"date": "2024-01-31", "data_stream_key": "bank", "amount": 1.5}
    # As earlier versions wrote them: zlib'd JSON, and plain JSON.
    old_chunks = [
        zlib.compress(orjson.dumps([[None, row, None], [None, {**row, "amount": "x"}, None]]), 1),
        b'[[null, {"date": "2024-01-31", "data_stream_key": "bank", "amount": 2}, null]]',
    ]
    ids = []
    for body in old_chunks:
        count = len(decode_chunk(body))  # type: ignore[arg-type]
        made, _ = await api.app[STORE].create_records_request(
            1,
            on_conflict="skip",
            total_items=count,
            chunks=[(0, count, body)],
            data_stream_key="bank",
            claim=None,
        )
        ids.append(made.id)
    first, second = await _run_workers(api, settings, ids)
    assert (first["successful_items"], first["failed_items"]) == (1, 1)
    assert (second["status"], second["successful_items"]) == ("completed", 1)
    assert await _query(api.app[STORE], "SELECT amount_minor FROM records ORDER BY id") == [
        (150,),
        (200,),
    ]


async def test_a_stream_created_after_accept_is_found_by_the_worker(
    make_api: MakeApi, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream("bank", "USD")
    waiting = await api.submit([record(1), record(2, stream="later"), record(3, stream="never")])
    assert (await _chunk_kinds(api.app[STORE])) == ["raw"]
    await api.create_stream("later", "EUR")
    (done,) = await _run_workers(api, settings, [waiting["id"]])
    assert (done["successful_items"], done["failed_items"]) == (2, 1)
    errors = await api.get(f"/v1/bulk_requests/{waiting['id']}/errors")
    assert [(e["row"], e["code"]) for e in errors["data"]] == [(2, "unknown_data_stream")]


async def test_validated_rows_are_checked_against_the_environments_streams(
    make_api: MakeApi, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))
    await api.create_stream("bank", "USD")
    records = [ValidRecord(1, "2024-01-31", 100, "USD", None, None, None)]
    ids = []
    for claimed in [StreamRef(1, "USD"), StreamRef(1, "EUR"), StreamRef(7, "USD")]:
        body = encode_validated(ValidatedRows({"bank": claimed}, records))
        made, _ = await api.app[STORE].create_records_request(
            1,
            on_conflict="skip",
            total_items=1,
            chunks=[(0, 1, body)],
            data_stream_key="bank",
            claim=None,
        )
        ids.append(made.id)
    right, wrong_currency, wrong_id = await _run_workers(api, settings, ids)
    assert (right["status"], right["successful_items"]) == ("completed", 1)
    for failed in (wrong_currency, wrong_id):
        assert failed["status"] == "failed"
        assert failed["successful_items"] == 0
    assert await _query(api.app[STORE], "SELECT bulk_request_id FROM records") == [(ids[0],)]


async def test_a_fast_staged_request_cancelled_midway_retries_its_remaining_rows(
    make_api: MakeApi, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, batch_size=10, batch_pause=0.3))
    await api.create_stream("bank", "USD")
    rows = [record(n, external_id=f"r{n}") for n in range(60)]
    first = await api.submit(rows)
    assert (await _chunk_kinds(api.app[STORE])) == ["raw"]
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{first['id']}"), lambda r: r["processed_items"] >= 10
    )
    await api.post(f"/v1/bulk_requests/{first['id']}/cancel", expect=202)
    cancelled = await api.wait_terminal(first["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["processed_items"] < 60
    child = await api.post(f"/v1/bulk_requests/{first['id']}/retry", expect=201)
    assert child["total_items"] == 60 - cancelled["processed_items"]
    # A raw body's rows are copied as the precise path stages them (decode_chunk).
    assert (await _chunk_kinds(api.app[STORE]))[-1] == "json"
    done = await api.wait_terminal(child["id"], within=60)
    assert done["status"] == "completed"
    stored = await _query(
        api.app[STORE], "SELECT external_id, amount_minor FROM records ORDER BY id"
    )
    assert sorted(stored) == sorted((f"r{n}", n * 100 + 25) for n in range(60))


async def test_a_validated_row_whose_external_id_an_atomic_request_holds_is_a_row_error(
    make_api: MakeApi, settings: Settings
) -> None:
    """A row staged validated keeps no text; when another (running) atomic request's
    hidden records hold its external_id, its row error still gets a source: the fields
    it was sent with, rebuilt from its record (SPEC §14 external_id_reserved)."""
    api = await make_api(slow(settings, workers=2, batch_pause=0.02))
    await api.create_stream("bank", "USD")
    atomic = await submit_atomic(api, [record(i, external_id=f"a{i}") for i in range(300)])
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{atomic['id']}"),
        lambda r: r["processed_items"] >= 10,
    )
    fast = await _post_text(
        api,
        b'{"records": [{"date": "2024-01-31", "data_stream_key": "bank", "amount": 2.5,'
        b' "external_id": "a0", "description": "held"},'
        b' {"date": "2024-01-31", "data_stream_key": "bank", "amount": 3, "external_id": "free"}]}',
    )
    # Staged raw, proved by the worker: the same record_source as a validated chunk's.
    assert (await _chunk_kinds(api.app[STORE]))[-1] == "raw"
    done = await api.wait_terminal(fast["id"])
    assert (done["status"], done["successful_items"], done["failed_items"]) == ("completed", 1, 1)
    (error,) = await api.all_pages(f"/v1/bulk_requests/{fast['id']}/errors")
    assert (error["row"], error["code"]) == (0, "external_id_reserved")
    ((source,),) = await _query(
        api.app[STORE], f"SELECT source FROM row_errors WHERE bulk_request_id = {fast['id']}"
    )
    assert orjson.loads(source)[1] == {
        "data_stream_key": "bank",
        "date": "2024-01-31",
        "amount": "2.5",
        "currency": "USD",
        "description": "held",
        "external_id": "a0",
    }
    await api.post(f"/v1/bulk_requests/{atomic['id']}/cancel", expect=202)
    await api.wait_terminal(atomic["id"])
