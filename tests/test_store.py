"""Unit tests of server/db/sqlite/store.py on the fast store: typed reads, page order, the
idempotency window's exact edge, and which staged chunk a row position lands in."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from server.batches import validate_batch
from server.bulk_requests import submit_records
from server.clock import parse_rfc3339
from server.constants import IDEMPOTENCY_KEY_TTL_SECONDS
from server.db.payload import stored_row
from server.db.sqlite.store import Store
from server.ingest.validation import StreamRef
from server.models import (
    ActiveApiKey,
    ApiKeyListing,
    BulkRequest,
    DataStream,
    Record,
    RowError,
)
from server.staging import encode_items
from server.types import Status
from tests.conftest import claim_next, make_environment, make_stream
from tests.db_access import stored_request_row, stored_value, table_columns

WORKER = "unit-store-1"


def rec(n: int, stream: str = "bank", **extra: object) -> dict[str, object]:
    return {"date": "2024-01-31", "data_stream_key": stream, "amount": f"{n}.00", **extra}


async def completed_request(store: Store, env: int, records: list[dict[str, object]]) -> int:
    """A request whose rows were all applied by one batch; its id."""
    await submit_records(store, env, records, "error", None, body_bytes=100)
    job = await claim_next(store, WORKER)
    assert job is not None
    streams = await store.find_data_streams(env, {"bank", "cash"})
    items = [[None, r, None] for r in records]
    await store.commit_batch(job, WORKER, validate_batch(0, items, streams))
    return int(job.id)


async def test_data_streams_are_typed_unique_per_environment_and_paged_by_id(
    store: Store,
) -> None:
    env = await make_environment(store)
    other = await make_environment(store, "other")
    created = [await make_stream(store, env, key) for key in ("c", "a", "b")]
    assert all(isinstance(s, DataStream) for s in created)
    assert await store.create_data_stream(env, "a", None, "EUR") is None  # key taken
    assert (await make_stream(store, other, "a")).key == "a"  # but free elsewhere

    first = await store.list_data_streams(env, after_id=0, limit=2)
    rest = await store.list_data_streams(env, after_id=first[-1].id, limit=2)
    assert [s.key for s in first + rest] == ["c", "a", "b"]  # creation (id) order
    assert await store.get_data_stream(env, "b") == created[2]
    assert await store.get_data_stream(other, "b") is None
    assert await store.find_data_streams(env, ["a", "zzz"]) == {
        "a": StreamRef(created[1].id, "USD")
    }


async def test_records_are_typed_and_paged_ascending_with_filters(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env, "bank")
    await make_stream(store, env, "cash", "JPY")
    first = await completed_request(store, env, [rec(1), rec(2, "cash"), rec(3)])
    second = await completed_request(store, env, [rec(4, external_id="x", metadata={"k": 1})])

    everything = await store.list_records(
        env, data_stream_key=None, bulk_request_id=None, after_id=0, limit=10
    )
    assert all(isinstance(r, Record) for r in everything)
    assert [r.amount_minor for r in everything] == [100, 2, 300, 400]
    last = everything[-1]
    assert (last.data_stream_key, last.external_id, last.metadata) == ("bank", "x", '{"k":1}')
    assert last.bulk_request_id == second

    page = await store.list_records(
        env, data_stream_key=None, bulk_request_id=None, after_id=everything[1].id, limit=1
    )
    assert page == [everything[2]]
    by_stream = await store.list_records(
        env, data_stream_key="cash", bulk_request_id=None, after_id=0, limit=10
    )
    assert [(r.currency, r.amount_minor) for r in by_stream] == [("JPY", 2)]
    by_request = await store.list_records(
        env, data_stream_key=None, bulk_request_id=first, after_id=0, limit=10
    )
    assert [r.id for r in by_request] == [r.id for r in everything[:3]]
    other = await make_environment(store, "other")
    assert (
        await store.list_records(
            other, data_stream_key=None, bulk_request_id=None, after_id=0, limit=10
        )
        == []
    )


async def test_row_errors_are_typed_and_paged_by_row(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    request_id = await completed_request(
        store, env, [rec(1, amount="x"), rec(2), rec(3, date="bad"), rec(4, currency="ZZZ")]
    )
    errors = await store.list_row_errors(request_id, after_row=-1, limit=10)
    assert all(isinstance(e, RowError) for e in errors)
    assert [(e.row, e.code, e.pointer) for e in errors] == [
        (0, "invalid_amount", "/records/0/amount"),
        (2, "invalid_date", "/records/2/date"),
        (3, "invalid_currency", "/records/3/currency"),
    ]
    assert await store.list_row_errors(request_id, after_row=0, limit=1) == [errors[1]]
    assert await store.list_row_errors(request_id, after_row=3, limit=10) == []


async def test_bulk_requests_page_newest_first_with_filters(store: Store) -> None:
    env = await make_environment(store)
    await make_stream(store, env)
    ids = [await completed_request(store, env, [rec(n)]) for n in range(3)]
    await submit_records(store, env, [rec(9)], "error", None, body_bytes=10)  # left pending

    newest = await store.list_bulk_requests(
        env, status=None, source=None, data_stream_key=None, before_id=2**62, limit=2
    )
    assert [r.id for r in newest] == [ids[2] + 1, ids[2]]
    older = await store.list_bulk_requests(
        env, status=None, source=None, data_stream_key=None, before_id=newest[-1].id, limit=5
    )
    assert [r.id for r in older] == [ids[1], ids[0]]
    done = await store.list_bulk_requests(
        env, status=Status.COMPLETED, source=None, data_stream_key="bank", before_id=2**62, limit=9
    )
    assert [r.id for r in done] == ids[::-1]
    assert all(r.data_stream_key == "bank" for r in done)


async def test_api_keys_read_back_as_typed_models_and_revoke_once(store: Store) -> None:
    key_id = await store.create_api_key("default", "hash-1", "pub1")
    assert await store.ensure_api_key("default", "hash-1") is False  # exists already
    found = await store.find_api_key("hash-1")
    assert isinstance(found, ActiveApiKey)
    assert (found.id, found.environment, found.last_used_at) == (key_id, "default", None)
    await store.touch_api_key(key_id)
    touched = await store.find_api_key("hash-1")
    assert touched is not None
    assert touched.last_used_at is not None

    [listing] = await store.list_api_keys()
    assert isinstance(listing, ApiKeyListing)
    assert (listing.public_id, listing.revoked_at) == ("pub1", None)
    assert await store.revoke_api_key(key_id) is True
    assert await store.revoke_api_key(key_id) is False  # already revoked: nothing changes
    assert await store.find_api_key("hash-1") is None
    # The operator's key (BULK_API_KEY) comes back on restart: the revoked row revives.
    assert await store.ensure_api_key("default", "hash-1") is True
    assert await store.find_api_key("hash-1") is not None
    assert await store.count_api_keys() == 1


async def test_an_idempotency_key_expires_exactly_at_its_ttl(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = await make_environment(store)
    request_id = (await submit_records(store, env, [rec(1)], "error", None, 10))[0].id
    await store.write(lambda tx: tx.save_idempotency_key(env, "k1", "fp", request_id))
    created = await stored_value(store, "SELECT created_at FROM idempotency_keys")
    ttl = timedelta(seconds=IDEMPOTENCY_KEY_TTL_SECONDS)

    def at(moment: datetime) -> None:
        monkeypatch.setattr("server.db.sqlite.tx.utc_now", lambda: moment)
        monkeypatch.setattr("server.db.postgres.tx.utc_now", lambda: moment)

    at(parse_rfc3339(created) + ttl - timedelta(microseconds=1))
    kept = await store.write(lambda tx: tx.get_idempotency_key(env, "k1"))
    assert kept == {"fingerprint": "fp", "bulk_request_id": request_id}
    assert await store.delete_expired_idempotency_keys() == 0

    at(parse_rfc3339(created) + ttl)
    assert await store.write(lambda tx: tx.get_idempotency_key(env, "k1")) is None
    assert await store.delete_expired_idempotency_keys() == 1


async def test_get_chunk_at_finds_the_chunk_holding_a_row_position(store: Store) -> None:
    env = await make_environment(store)
    request_id = (await submit_records(store, env, [rec(0)], "error", None, 10))[0].id
    body = encode_items([[None, rec(n), None] for n in range(3)])
    # The first request's own chunk holds row 0; add two more runs: rows 1-3 and 4-6.
    await store.write(lambda tx: tx.insert_chunk(request_id, 1, 3, body))
    await store.write(lambda tx: tx.insert_chunk(request_id, 4, 3, body))

    async def first_row_at(row: int) -> int | None:
        found = await store.get_chunk_at(request_id, row)
        return None if found is None else found.first_row

    assert [await first_row_at(r) for r in (0, 1, 3, 4, 6)] == [0, 1, 1, 4, 4]
    # Past the end the last chunk is still the candidate: the caller checks its bounds.
    found = await store.get_chunk_at(request_id, 7)
    assert found is not None
    assert found.first_row + found.row_count <= 7
    assert await store.get_chunk_at(request_id, -1) is None
    assert await store.get_chunk_at(request_id + 1, 0) is None


async def test_a_bulk_request_model_has_every_column_in_table_order(store: Store) -> None:
    """The row→model function (each adapter's rows.py) reads every column, and the
    outbox payload writes them back in table order: a migration's new column without
    its field fails here (and at the first read)."""
    columns = await table_columns(store, "bulk_requests")
    fields = [f.name for f in dataclasses.fields(BulkRequest)]
    assert fields == [*columns, "data_stream_key", "has_data_stream_key"]
    env = await make_environment(store)
    await make_stream(store, env)
    request_id = (await submit_records(store, env, [rec(1)], "error", None, 10))[0].id
    request = await store.get_bulk_request(env, request_id)
    assert request is not None
    as_read = await stored_request_row(store, request_id)
    assert list(stored_row(request).items()) == list(as_read.items())
    assert (request.status, request.parsing, request.data_stream_key) == (
        Status.PENDING,
        False,
        "bank",
    )
