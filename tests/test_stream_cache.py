"""server/stream_cache.py: streams found are kept, keys not found are asked again, and
the memory is bounded; the accepts and the workers' batches share one cache."""

from __future__ import annotations

import pytest

from server.api.common import POOL, STREAMS
from server.db.port import Storage
from server.ingest.validation import StreamRef
from server.stream_cache import StreamCache
from tests.conftest import Api, make_environment, make_stream


async def test_a_found_stream_is_kept_and_a_missing_one_is_asked_again(store: Storage) -> None:
    env = await make_environment(store)
    bank = await make_stream(store, env, "bank", "EUR")
    cache = StreamCache()
    assert await cache.lookup(store, env, ["bank", "later"]) == {"bank": StreamRef(bank.id, "EUR")}
    later = await make_stream(store, env, "later")
    # Created after the first look: found now, since a miss is never remembered.
    found = await cache.lookup(store, env, ["later"])
    assert found == {"bank": StreamRef(bank.id, "EUR"), "later": StreamRef(later.id, "USD")}
    other = await make_environment(store, "other")
    assert await cache.lookup(store, other, ["bank"]) == {}  # per environment


async def test_past_its_bound_the_cache_forgets_other_environments(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.stream_cache.MAX_CACHED_STREAMS", 2)
    first, second = await make_environment(store, "a"), await make_environment(store, "b")
    for env in (first, second):
        await make_stream(store, env, "one")
        await make_stream(store, env, "two")
    cache = StreamCache()
    await cache.lookup(store, first, ["one", "two"])
    assert cache.size == 2
    found = await cache.lookup(store, second, ["one"])
    assert set(found) == {"one"}
    assert cache.size == 1  # the first environment's two were dropped


async def test_the_accepts_and_the_workers_share_one_cache(api: Api) -> None:
    assert api.app[POOL].streams is api.app[STREAMS]
