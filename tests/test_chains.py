"""Chains of retries (SPEC §7 "Chains"): no row is ever stored twice, wherever retried.

A request and its retries form a chain. Whatever member is retried, the new request
holds exactly the rows no member has stored or skipped, and hangs off the latest member.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.app import create_app
from server.chains import Coverage, RowMap, RunBuilder, handled_rows
from server.config import Settings
from server.types import TERMINAL_STATUSES
from tests.conftest import API_KEY, Api, record, wait_until
from tests.test_cancel_retry import ApiFactory, slow
from tests.test_invariants import Observer
from tests.test_uploads import HEADER, csv_bytes, upload
from tests.test_worker import db_write

T = TypeVar("T")

ROWS = 1000


def _rows(count: int, *, with_ids: bool) -> list[dict[str, Any]]:
    # The description names the original row: it is how a stored record is traced back.
    return [
        record(i, description=f"row {i}", **({"external_id": f"id-{i}"} if with_ids else {}))
        for i in range(count)
    ]


async def _cancel_mid_way(api: Api, request_id: int) -> dict[str, Any]:
    """Cancel once some rows are stored and some are not; the terminal request."""
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{request_id}"),
        lambda r: r["status"] == "processing" and r["processed_items"] > 0,
    )
    await api.post(f"/v1/bulk_requests/{request_id}/cancel")
    done = await api.wait_terminal(request_id)
    assert done["status"] == "cancelled", done
    assert 0 < done["processed_items"] < done["total_items"], done
    return done


async def _stored_descriptions(api: Api) -> Counter[str]:
    return Counter(r["description"] for r in await api.all_pages("/v1/records"))


async def _assert_each_row_stored_once(api: Api, chain: list[int]) -> None:
    stored = await _stored_descriptions(api)
    assert [d for d, n in stored.items() if n > 1] == []
    assert set(stored) == {f"row {i}" for i in range(ROWS)}
    members = [await api.get(f"/v1/bulk_requests/{rid}") for rid in chain]
    assert sum(m["successful_items"] for m in members) == ROWS
    assert sum(m["skipped_items"] for m in members) == 0  # no row was offered twice


@pytest.mark.parametrize("with_ids", [False, True], ids=["no-external-id", "external-id"])
async def test_retrying_the_root_again_hangs_off_the_latest_retry(
    make_api: ApiFactory, settings: Settings, with_ids: bool
) -> None:
    """The sequence of issue 9: A cancelled, retry A → B, B cancelled, retry A again."""
    api = await make_api(slow(settings))
    await api.create_stream()
    a = await api.submit(_rows(ROWS, with_ids=with_ids))
    await _cancel_mid_way(api, a["id"])
    b = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    await _cancel_mid_way(api, b["id"])
    stored = sum((await _stored_descriptions(api)).values())

    c = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    assert c["parent_bulk_request_id"] == b["id"]
    assert c["total_items"] == ROWS - stored
    await api.wait_terminal(c["id"])
    await _assert_each_row_stored_once(api, [a["id"], b["id"], c["id"]])


async def test_cancelling_the_retry_while_retrying_the_root(
    make_api: ApiFactory, settings: Settings
) -> None:
    """The concurrent variant: cancel B and retry A at once, then retry A once B stopped."""
    api = await make_api(slow(settings))
    await api.create_stream()
    a = await api.submit(_rows(ROWS, with_ids=False))
    await _cancel_mid_way(api, a["id"])
    b = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{b['id']}"), lambda r: r["processed_items"] > 0
    )
    (cancel_status, _), (retry_status, raced) = await asyncio.gather(
        api.call("POST", f"/v1/bulk_requests/{b['id']}/cancel"),
        api.call("POST", f"/v1/bulk_requests/{a['id']}/retry"),
    )
    assert cancel_status in (200, 202)
    chain = [a["id"], b["id"]]
    if retry_status == 201:  # B was already stopped when the retry was decided
        assert raced["parent_bulk_request_id"] == b["id"]
        chain.append(raced["id"])
    else:  # B was still processing: the chain has a live member
        assert retry_status == 409, raced
        assert raced["type"] == "/problems/conflict"
        await api.wait_terminal(b["id"])
        c = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
        assert c["parent_bulk_request_id"] == b["id"]
        chain.append(c["id"])
    await api.wait_terminal(chain[-1])
    await _assert_each_row_stored_once(api, chain)


async def test_concurrent_retries_of_different_members_make_one_child(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(slow(settings))
    await api.create_stream()
    a = await api.submit(_rows(ROWS, with_ids=False))
    await _cancel_mid_way(api, a["id"])
    b = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    await _cancel_mid_way(api, b["id"])
    answers = await asyncio.gather(
        *[api.call("POST", f"/v1/bulk_requests/{rid}/retry") for rid in [a["id"], b["id"]] * 3]
    )
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409, 409, 409], answers
    (child,) = [body for status, body in answers if status == 201]
    assert child["parent_bulk_request_id"] == b["id"]
    for status, problem in answers:
        if status == 409:
            assert f"bulk request {child['id']} of this chain" in problem["detail"]
    await api.wait_terminal(child["id"])
    await _assert_each_row_stored_once(api, [a["id"], b["id"], child["id"]])


async def test_a_retry_made_before_chains_were_recorded_is_read_from_its_parent(
    make_api: ApiFactory, settings: Settings
) -> None:
    """A retry staged by the previous version has no row runs: its rows are re-derived as
    its parent's failed rows, then its never-processed ones (how that version built it)."""
    api = await make_api(slow(settings, batch_size=10, batch_pause=0.05))
    await api.create_stream()
    bad = {i for i in range(100) if i % 7 == 3}
    rows = [
        record(i, description=f"row {i}", date="2024-02-30" if i in bad else "2024-02-01")
        for i in range(100)
    ]
    a = await api.submit(rows)
    await _cancel_mid_way(api, a["id"])
    b = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    await db_write(api, "DELETE FROM retry_row_runs WHERE bulk_request_id = ?", (b["id"],))
    await _cancel_mid_way(api, b["id"])
    stored = sum((await _stored_descriptions(api)).values())

    c = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    assert (c["parent_bulk_request_id"], c["total_items"]) == (b["id"], 100 - stored)
    done = await api.wait_terminal(c["id"])
    assert (done["status"], done["failed_items"]) == ("completed", len(bad))
    assert await _stored_descriptions(api) == Counter(
        f"row {i}" for i in range(100) if i not in bad
    )


async def test_an_upload_retried_before_parsing_chains_from_the_retry_that_parsed_it(
    make_api: ApiFactory, settings: Settings
) -> None:
    """The chain's rows are the file's rows as the re-parsing retry staged them."""
    api = await make_api(slow(settings, batch_size=10, batch_pause=0.05))
    await api.create_stream()
    blocker = await api.submit([record(i) for i in range(1000)])  # holds the only worker
    lines = [["2024-01-01", f"{i}.00", "USD", f"file row {i}", "", "bank"] for i in range(100)]
    _, a = await upload(api, csv_bytes([HEADER, *lines]))
    await api.post(f"/v1/bulk_requests/{a['id']}/cancel", expect=200)  # still pending
    await api.post(f"/v1/bulk_requests/{blocker['id']}/cancel")
    b = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    assert b["parsing"] is True
    await _cancel_mid_way(api, b["id"])

    def from_the_file(stored: Counter[str]) -> Counter[str]:
        return Counter({d: n for d, n in stored.items() if d.startswith("file row ")})

    stored = from_the_file(await _stored_descriptions(api)).total()
    c = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    assert (c["parent_bulk_request_id"], c["total_items"]) == (b["id"], 100 - stored)
    await api.wait_terminal(c["id"])
    assert from_the_file(await _stored_descriptions(api)) == Counter(
        f"file row {i}" for i in range(100)
    )


@given(
    origin_total=st.integers(0, 60),
    data=st.data(),
)
def test_row_arithmetic_matches_a_row_by_row_model(origin_total: int, data: st.DataObject) -> None:
    """server/chains.py against the obvious row-by-row computation."""
    origin_rows = sorted(data.draw(st.sets(st.integers(0, max(0, origin_total - 1)))))
    origin_rows = [row for row in origin_rows if row < origin_total]
    builder = RunBuilder()
    for row in origin_rows:
        builder.add(row, row + 1)
    assert builder.row_count == len(origin_rows)
    # Adjacent rows are merged: one run per stretch of consecutive origin rows.
    assert len(builder.runs) == sum(
        1 for i, row in enumerate(origin_rows) if i == 0 or origin_rows[i - 1] != row - 1
    )
    row_map = RowMap(builder.runs)
    start = data.draw(st.integers(0, len(origin_rows)))
    end = data.draw(st.integers(start, len(origin_rows)))
    mapped = [row for a, b in row_map.to_origin(start, end) for row in range(a, b)]
    assert mapped == origin_rows[start:end]

    next_row = data.draw(st.integers(0, len(origin_rows)))
    errors = sorted(data.draw(st.sets(st.integers(0, max(0, next_row - 1))))) if next_row else []
    handled = [row for a, b in handled_rows(next_row, errors) for row in range(a, b)]
    assert handled == [row for row in range(next_row) if row not in errors]

    coverage = Coverage(origin_total)
    for a, b in handled_rows(next_row, errors):
        for origin_a, origin_b in row_map.to_origin(a, b):
            coverage.mark(origin_a, origin_b)
    gaps = [row for a, b in coverage.gaps() for row in range(a, b)]
    marked = {origin_rows[row] for row in handled}
    assert gaps == [row for row in range(origin_total) if row not in marked]


# --- the chain rule as a property ------------------------------------------------------------

# A submitted request: how many rows, which carry an external_id, how many fail validation.
SUBMISSION = {
    "size": st.integers(1, 40),
    "ids": st.sampled_from(["none", "all", "mixed"]),
    "bad_every": st.integers(0, 4),
    "on_conflict": st.sampled_from(["skip", "error"]),
}
# What happens to a request once it runs: nothing (it completes), or a cancel or a server
# restart once it has processed a chosen eighth of its rows.
INTERRUPTION = st.one_of(
    st.none(), st.tuples(st.sampled_from(["cancel", "restart"]), st.integers(0, 7))
)
Interruption = tuple[str, int] | None


@dataclass
class Chain:
    """One submitted request and its retries, as the test knows them."""

    number: int
    size: int
    invalid: frozenset[int]  # rows that fail validation, so no retry ever stores them
    members: list[int] = field(default_factory=list)  # request ids, oldest first

    def row_name(self, row: int) -> str:
        return f"c{self.number}:{row}"

    def owns(self, description: str) -> bool:
        return description.startswith(f"c{self.number}:")


class ChainMachine(RuleBasedStateMachine):
    """Random submit / cancel-at-a-row / retry-any-member / restart sequences against the
    real app, each step checked against the chain rule and SPEC §7's invariants.

    Every step starts with all requests terminal, and a cancel or restart lands at the
    row it aims at (tiny batches, a pause after each), so a sequence replays the same.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.conf = Settings(
            db_path=Path(self.tmp.name) / "bulk.db",
            workers=2,
            batch_size=3,
            batch_pause=0.01,
            sweep_interval=3600,
        )
        self.client: TestClient | None = None
        self.api = self.run(self._open())
        self.run(self.api.create_stream())
        self.chains: list[Chain] = []
        self.observer = Observer()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> Api:
        self.client = TestClient(TestServer(create_app(self.conf, bootstrap_api_key=API_KEY)))
        await self.client.start_server()
        return Api(self.client)

    async def _close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def _restart(self) -> None:
        await self._close()
        self.api = await self._open()

    def teardown(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.loop.close()
            self.tmp.cleanup()

    # --- reading the state ---------------------------------------------------------------

    def _chain(self, which: int) -> Chain:
        return self.chains[which % len(self.chains)]

    async def _members(self, chain: Chain) -> list[dict[str, Any]]:
        return [await self.api.get(f"/v1/bulk_requests/{rid}") for rid in chain.members]

    async def _stored(self, chain: Chain, *, except_request: int | None = None) -> Counter[str]:
        return Counter(
            r["description"]
            for r in await self.api.all_pages("/v1/records")
            if chain.owns(r["description"]) and r["bulk_request_id"] != except_request
        )

    async def _settle(self) -> None:
        for chain in self.chains:
            for rid in chain.members:
                await self.api.wait_terminal(rid)

    # --- acting ----------------------------------------------------------------------------

    async def _interrupt(self, rid: int, interruption: Interruption) -> None:
        """Cancel or restart once the request has processed the chosen share of its rows
        (polled finely: the worker pauses 10 ms after each batch, so it lands there)."""
        if interruption is not None:
            kind, eighths = interruption
            while True:
                row = await self.api.get(f"/v1/bulk_requests/{rid}")
                if row["status"] in TERMINAL_STATUSES:
                    break
                if row["processed_items"] >= row["total_items"] * eighths // 8:
                    if kind == "restart":
                        await self._restart()
                    else:
                        await self._cancel(rid)
                    break
                await asyncio.sleep(0.001)
        await self._settle()

    async def _cancel(self, rid: int) -> None:
        status, body = await self.api.call("POST", f"/v1/bulk_requests/{rid}/cancel")
        done = await self.api.wait_terminal(rid)
        if status == 409:
            assert body["type"] == "/problems/conflict"
            assert done["status"] in ("completed", "failed")
        else:
            assert status in (200, 202), (status, body)
            # 202: stops at its next heartbeat, unless its last batch committed first.
            assert done["status"] in (("cancelled",) if status == 200 else TERMINAL_STATUSES)

    async def _retry(self, chain: Chain, rid: int) -> int | None:
        """POST retry and check the answer against the chain rule; the child's id if 201."""
        before = await self._members(chain)
        requested = next(m for m in before if m["id"] == rid)
        closed = any(m["status"] == "completed" for m in before)
        settled = all(m["status"] in TERMINAL_STATUSES for m in before)
        status, body = await self.api.call("POST", f"/v1/bulk_requests/{rid}/retry")
        if status == 409:
            assert body["type"] == "/problems/conflict"
            # Refused only for a reason the rule names (terminal states never change, so
            # a settled, open chain must have been accepted).
            assert closed or not settled or requested["status"] not in ("failed", "cancelled")
            return None
        assert status == 201, (status, body)
        assert not closed, before
        return await self._check_child(chain, body)

    async def _check_child(self, chain: Chain, child: dict[str, Any]) -> int:
        assert child["parent_bulk_request_id"] == chain.members[-1]
        chain.members.append(child["id"])
        # Every other member is terminal now: the new request holds exactly the rows they
        # did not store (none was skipped: external ids are unique in this test).
        stored = await self._stored(chain, except_request=child["id"])
        assert child["total_items"] == chain.size - sum(stored.values()), (child, stored)
        return int(child["id"])

    # --- rules -----------------------------------------------------------------------------

    @initialize(**SUBMISSION, interruption=INTERRUPTION)
    def first_submit(
        self, size: int, ids: str, bad_every: int, on_conflict: str, interruption: Interruption
    ) -> None:
        self.submit(size, ids, bad_every, on_conflict, interruption)

    @precondition(lambda self: len(self.chains) < 4)
    @rule(**SUBMISSION, interruption=INTERRUPTION)
    def submit(
        self, size: int, ids: str, bad_every: int, on_conflict: str, interruption: Interruption
    ) -> None:
        chain = Chain(
            len(self.chains),
            size,
            frozenset(i for i in range(size) if bad_every and i % (bad_every + 2) == 1),
        )
        rows = []
        for i in range(size):
            row = record(i, description=chain.row_name(i))
            if ids == "all" or (ids == "mixed" and i % 2 == 0):
                row["external_id"] = chain.row_name(i)
            if i in chain.invalid:
                row["date"] = "2024-02-30"
            rows.append(row)
        summary = self.run(self.api.submit(rows, on_conflict=on_conflict))
        chain.members.append(summary["id"])
        self.chains.append(chain)
        self.run(self._interrupt(summary["id"], interruption))

    @rule(which=st.integers(0, 3), member=st.integers(0, 7), interruption=INTERRUPTION)
    def retry_any_member(self, which: int, member: int, interruption: Interruption) -> None:
        chain = self._chain(which)
        child = self.run(self._retry(chain, chain.members[member % len(chain.members)]))
        if child is not None:
            self.run(self._interrupt(child, interruption))

    @rule(which=st.integers(0, 3), members=st.lists(st.integers(0, 7), min_size=2, max_size=3))
    def retry_racing_cancel(self, which: int, members: list[int]) -> None:
        """Retry, then at once cancel the new request while retrying other members."""
        chain = self._chain(which)
        self.run(self._retry_racing_cancel(chain, members))

    async def _retry_racing_cancel(self, chain: Chain, members: list[int]) -> None:
        child = await self._retry(chain, chain.members[members[0] % len(chain.members)])
        if child is None:
            return
        retries = [
            self.api.call(
                "POST", f"/v1/bulk_requests/{chain.members[m % len(chain.members)]}/retry"
            )
            for m in members[1:]
        ]
        cancel, *answers = await asyncio.gather(
            self.api.call("POST", f"/v1/bulk_requests/{child}/cancel"), *retries
        )
        # 409: the child completed first (a small one can), which closes the chain.
        assert cancel[0] in (200, 202, 409), cancel
        created = [body for status, body in answers if status == 201]
        assert all(status in (201, 409) for status, _ in answers), answers
        # The child was live until its cancel committed: at most one retry came after,
        # and only if the cancel stopped it at once.
        assert len(created) <= 1, answers
        if created:
            assert cancel[0] == 200, (cancel, answers)
            await self._check_child(chain, created[0])
        await self._settle()

    @rule(which=st.integers(0, 3), member=st.integers(0, 7))
    def retry_until_completed(self, which: int, member: int) -> None:
        self.run(self._retry_until_completed(self._chain(which), member))

    async def _retry_until_completed(self, chain: Chain, member: int) -> None:
        for attempt in range(chain.size + 2):  # each retry stores at least one row
            latest = await self.api.wait_terminal(chain.members[-1])
            if latest["status"] == "completed":
                break
            child = await self._retry(chain, chain.members[(member + attempt) % len(chain.members)])
            assert child is not None, "a settled chain with no completed member must accept"
        else:
            raise AssertionError(f"chain {chain.members} never completed")
        members = await self._members(chain)
        stored = await self._stored(chain)
        valid = {chain.row_name(i) for i in range(chain.size) if i not in chain.invalid}
        assert stored == Counter(valid), stored  # each valid original row exactly once
        assert sum(m["successful_items"] for m in members) == len(valid)
        assert sum(m["skipped_items"] for m in members) == 0
        assert members[-1]["failed_items"] == len(chain.invalid)
        assert [m["status"] for m in members].count("completed") == 1

    @rule()
    def restart(self) -> None:
        self.run(self._restart())

    # --- after every step ------------------------------------------------------------------

    @invariant()
    def chain_rule_and_counters_hold(self) -> None:
        self.run(self._check_everything())

    async def _check_everything(self) -> None:
        for row in await self.api.all_pages("/v1/bulk_requests"):
            self.observer.check(row)
        records = await self.api.all_pages("/v1/records")
        counts = Counter(r["description"] for r in records)
        assert [d for d, n in counts.items() if n > 1] == []  # no original row stored twice
        for chain in self.chains:
            members = await self._members(chain)
            # A chain is a line: each retry hangs off the member before it.
            parents = [m["parent_bulk_request_id"] for m in members]
            assert parents == [None, *chain.members[:-1]], parents
            assert all(
                r["bulk_request_id"] in chain.members
                for r in records
                if chain.owns(r["description"])
            )
            stored = sum(1 for r in records if chain.owns(r["description"]))
            assert stored == sum(m["successful_items"] for m in members)


ChainMachine.TestCase.settings = hypothesis_settings(
    # Half the profile's examples (60 in "ci", 2000 in "long"): each runs the
    # real app through up to 20 steps.
    max_examples=max(1, hypothesis_settings.default.max_examples // 2),
    stateful_step_count=20,
)
test_chain_rule_holds_for_any_sequence = ChainMachine.TestCase
