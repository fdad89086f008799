"""Property: at every instant a client looks, an atomic request shows 0 records or all.

Random interleavings of atomic and partial submissions (with bad rows and shared
external ids), cancels, retries and restarts against the real app; after every step
each records read is checked against the requests' states read right after it.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from server.app import create_app
from server.config import Settings
from tests.conftest import API_KEY, Api, record

operation = st.one_of(
    st.tuples(
        st.just("submit"),
        st.integers(1, 60),  # rows
        st.sampled_from(["atomic", "partial"]),
        st.sampled_from(["skip", "error"]),
        st.integers(0, 40),  # a bad row every n rows (0: none)
        st.integers(0, 3),  # which window of shared external ids
    ),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("retry"), st.integers(0, 20)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("pause")),
)


async def check_reads(api: Api, atomic: set[int]) -> None:
    """Every records read, then the requests: an atomic request's records are visible
    only once it has completed, and then all of them (its successful_items)."""
    by_request = [
        Counter(r["bulk_request_id"] for r in await api.all_pages(path))
        for path in ("/v1/records", "/v1/records?data_stream_key=bank")
    ]
    rows = {r["id"]: r for r in await api.all_pages("/v1/bulk_requests")}
    for counts in by_request:
        for request_id in atomic:
            shown = counts.get(request_id, 0)
            row = rows[request_id]
            assert shown == 0 or (
                row["status"] == "completed" and shown == row["successful_items"]
            ), (shown, row)


async def scenario(ops: list[tuple[Any, ...]], db_dir: Path) -> None:
    conf = Settings(
        db_path=db_dir / "bulk.db", workers=2, batch_size=4, time_slice=0.02, sweep_interval=3600
    )
    client = await start(conf)
    api = Api(client)
    ids: list[int] = []
    atomic: set[int] = set()
    try:
        await api.create_stream()
        for op in ops:
            kind = op[0]
            if kind == "submit":
                _, size, mode, on_conflict, bad_every, window = op
                rows = [
                    record(
                        i,
                        external_id=f"x{window * 10 + i % 25}",
                        date="2024-02-30" if bad_every and i % bad_every == 0 else "2024-02-01",
                    )
                    for i in range(size)
                ]
                body = {"records": rows, "mode": mode, "on_conflict": on_conflict}
                answer = await api.post("/v1/records/bulk", body, expect=202)
                ids.append(answer["id"])
                if mode == "atomic":
                    atomic.add(answer["id"])
            elif kind in ("cancel", "retry") and ids:
                rid = ids[op[1] % len(ids)]
                status, body = await api.call("POST", f"/v1/bulk_requests/{rid}/{kind}")
                assert status in ((200, 202, 409) if kind == "cancel" else (201, 409)), body
                if kind == "retry" and status == 201:
                    ids.append(body["id"])
                    if body["mode"] == "atomic":
                        atomic.add(body["id"])
            elif kind == "restart":
                await client.close()
                client = await start(conf)
                api = Api(client)
            elif kind == "pause":
                await asyncio.sleep(0.02)
            await check_reads(api, atomic)
        for rid in ids:
            await api.wait_terminal(rid)
        await check_reads(api, atomic)
        for rid in ids:
            row = await api.get(f"/v1/bulk_requests/{rid}")
            shown = len(await api.all_pages(f"/v1/records?bulk_request_id={rid}"))
            if rid in atomic and row["status"] != "completed":
                assert shown == 0, row
            else:
                assert shown == row["successful_items"], row
        external_ids = [r["external_id"] for r in await api.all_pages("/v1/records")]
        assert len(external_ids) == len(set(external_ids))
    finally:
        await client.close()


async def start(conf: Settings) -> TestClient[Any, Any]:
    client = TestClient(TestServer(create_app(conf, bootstrap_api_key=API_KEY)))
    await client.start_server()
    return client


@settings(max_examples=30)
@given(st.lists(operation, min_size=1, max_size=10))
def test_an_atomic_request_is_never_seen_in_part(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(ops, Path(tmp)))
