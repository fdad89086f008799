"""Property: SPEC §7's invariants hold across random submit/cancel/retry/restart sequences.

Every observation of every request must satisfy processed = successful + failed +
skipped ≤ total, counters never decrease, completed ⇒ processed = total, and a terminal
state never changes. At the end, each request's counters equal what is stored.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import create_app
from server.config import Settings
from server.types import TERMINAL_STATUSES
from tests.conftest import API_KEY, Api, record

COUNTERS = ("total_items", "processed_items", "successful_items", "failed_items", "skipped_items")

operation = st.one_of(
    st.tuples(
        st.just("submit"),
        st.integers(1, 120),
        st.sampled_from(["skip", "error"]),
        st.integers(0, 3),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("retry"), st.integers(0, 20)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("pause")),
)


class Observer:
    def __init__(self) -> None:
        self.last: dict[int, dict[str, Any]] = {}

    def check(self, row: dict[str, Any]) -> None:
        assert row["processed_items"] == (
            row["successful_items"] + row["failed_items"] + row["skipped_items"]
        ), row
        assert row["processed_items"] <= row["total_items"] or row["parsing"], row
        if row["status"] == "completed":
            assert row["processed_items"] == row["total_items"], row
        before = self.last.get(row["id"])
        if before is not None:
            for name in COUNTERS[1:]:
                assert row[name] >= before[name], (name, before, row)
            if before["status"] in TERMINAL_STATUSES:
                assert row["status"] == before["status"], (before, row)
                assert all(row[n] == before[n] for n in COUNTERS)
        self.last[row["id"]] = row


async def scenario(ops: list[tuple[Any, ...]], db_dir: Path) -> None:
    conf = Settings(
        db_path=db_dir / "bulk.db", workers=2, batch_size=7, time_slice=0.02, sweep_interval=3600
    )
    client = TestClient(TestServer(create_app(conf, bootstrap_api_key=API_KEY)))
    await client.start_server()
    api = Api(client)
    observer = Observer()
    ids: list[int] = []
    try:
        await api.create_stream()
        for op in ops:
            kind = op[0]
            if kind == "submit":
                _, size, on_conflict, bad_every = op
                rows = [
                    record(
                        i,
                        external_id=f"x{i % 50}",
                        date="2024-02-30"
                        if bad_every and i % (bad_every + 2) == 0
                        else "2024-02-01",
                    )
                    for i in range(size)
                ]
                ids.append((await api.submit(rows, on_conflict=on_conflict))["id"])
            elif kind in ("cancel", "retry") and ids:
                rid = ids[op[1] % len(ids)]
                status, body = await api.call("POST", f"/v1/bulk_requests/{rid}/{kind}")
                assert status in ((200, 202, 409) if kind == "cancel" else (201, 409)), body
                if kind == "retry" and status == 201:
                    ids.append(body["id"])
            elif kind == "restart":
                await client.close()
                client = TestClient(TestServer(create_app(conf, bootstrap_api_key=API_KEY)))
                await client.start_server()
                api = Api(client)
            elif kind == "pause":
                await asyncio.sleep(0.02)
            for row in await api.all_pages("/v1/bulk_requests"):
                observer.check(row)
        for rid in ids:
            observer.check(await api.wait_terminal(rid))
        for rid in ids:
            row = await api.get(f"/v1/bulk_requests/{rid}")
            observer.check(row)
            stored = await api.all_pages(f"/v1/records?bulk_request_id={rid}")
            errors = await api.all_pages(f"/v1/bulk_requests/{rid}/errors")
            assert len(stored) == row["successful_items"], row
            assert len(errors) == row["failed_items"], row
        external_ids = [r["external_id"] for r in await api.all_pages("/v1/records")]
        assert len(external_ids) == len(set(external_ids))
    finally:
        await client.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=12))
def test_counter_invariants_hold(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(ops, Path(tmp)))
