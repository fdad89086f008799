"""`can_cancel` / `can_retry` on the bulk-request payload (SPEC §7, issue 11.5).

The flags say what the API would accept now, so the dashboard does not re-derive the
rules. Each test checks a flag against what the API then does: a request whose
payload says `can_retry: false` answers 409 to a retry, one that says true gets a 201.
"""

from __future__ import annotations

from typing import Any

from server.config import Settings
from tests.conftest import Api, record, wait_until
from tests.test_cancel_retry import ApiFactory, slow
from tests.test_chains import ROWS, _cancel_mid_way, _rows
from tests.test_events import idle, stream
from tests.test_uploads import upload
from tests.test_worker import db_write


def _flags(payload: dict[str, Any]) -> tuple[bool, bool]:
    return payload["can_cancel"], payload["can_retry"]


async def _all_flags(api: Api, ids: list[int]) -> dict[int, tuple[bool, bool]]:
    """The flags as GET answers them, checked equal to what the list answers."""
    single = {rid: _flags(await api.get(f"/v1/bulk_requests/{rid}")) for rid in ids}
    listed = {r["id"]: _flags(r) for r in await api.all_pages("/v1/bulk_requests")}
    assert {rid: listed[rid] for rid in ids} == single
    return single


async def _refused(api: Api, request_id: int, reason: str) -> None:
    status, problem = await api.call("POST", f"/v1/bulk_requests/{request_id}/retry")
    assert status == 409, problem
    assert reason in problem["detail"]


async def test_flags_over_the_lifecycle_and_a_chain(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(slow(settings))
    await api.create_stream()
    a = await api.submit(_rows(ROWS, with_ids=False))
    pending = await api.submit([record(1)])  # waits behind A on the one worker
    assert (await _all_flags(api, [pending["id"]])) == {pending["id"]: (True, False)}
    await _refused(api, pending["id"], "only failed or cancelled")

    running = await wait_until(
        lambda: api.get(f"/v1/bulk_requests/{a['id']}"), lambda r: r["processed_items"] > 0
    )
    assert (running["status"], _flags(running)) == ("processing", (True, False))
    # Cancelling: the worker stops at its next heartbeat; cancelling again changes nothing.
    status, cancelling = await api.call("POST", f"/v1/bulk_requests/{a['id']}/cancel")
    if status == 202:
        assert (cancelling["status"], _flags(cancelling)) == ("processing", (False, False))
    done = await api.wait_terminal(a["id"])
    assert (done["status"], _flags(done)) == ("cancelled", (False, True))

    b = await api.post(f"/v1/bulk_requests/{a['id']}/retry", expect=201)
    assert b["parent_bulk_request_id"] == a["id"]
    # A live member blocks the whole chain: A's flag changed without A changing.
    flags = await _all_flags(api, [a["id"], b["id"]])
    assert flags[a["id"]] == (False, False)
    assert flags[b["id"]][1] is False
    await _refused(api, a["id"], "wait for it to end")

    await _cancel_mid_way(api, b["id"])
    assert await _all_flags(api, [a["id"], b["id"]]) == {
        a["id"]: (False, True),
        b["id"]: (False, True),
    }
    c = await api.post(f"/v1/bulk_requests/{b['id']}/retry", expect=201)
    assert c["parent_bulk_request_id"] == b["id"]
    done = await api.wait_terminal(c["id"])
    assert done["status"] == "completed"
    # A completed member: every row has been processed, no member can be retried.
    assert await _all_flags(api, [a["id"], b["id"], c["id"]]) == {
        a["id"]: (False, False),
        b["id"]: (False, False),
        c["id"]: (False, False),
    }
    for member in (a, b, c):
        await _refused(api, member["id"], "completed")


async def test_a_chain_with_nothing_left_cannot_be_retried(api: Api, settings: Settings) -> None:
    """A cancelled request whose every row was stored or skipped has nothing to retry."""
    await api.create_stream()
    summary = await api.submit([record(1), record(2)])
    await api.wait_terminal(summary["id"])
    # The state a cancel landing right after the last batch's rows would leave.
    await db_write(
        api,
        "UPDATE bulk_requests SET status = 'cancelled' WHERE id = ?",
        (summary["id"],),
    )
    assert _flags(await api.get(f"/v1/bulk_requests/{summary['id']}")) == (False, False)
    await _refused(api, summary["id"], "has no failed or unprocessed rows")


async def test_a_file_rejected_as_a_whole_cannot_be_retried(api: Api) -> None:
    _, summary = await upload(api, b"not,a,known,header\n1,2,3,4\n")
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "failed", done
    assert _flags(done) == (False, False)
    await _refused(api, summary["id"], "rejected as a whole file")


async def test_the_event_stream_carries_the_flags(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(idle(settings))  # no workers: the request stays pending
    await api.create_stream()
    summary = await api.submit([record(1), record(2)])
    path = f"/v1/bulk_requests/{summary['id']}/events"
    async with stream(api, path) as sse:
        first = await sse.next(5)
        assert first is not None
        assert _flags(first.data) == (True, False)
        await api.post(f"/v1/bulk_requests/{summary['id']}/cancel", expect=200)
        events = await sse.all()
    assert [e.event for e in events] == ["done"]
    assert _flags(events[0].data) == (False, True)
    assert events[0].data == await api.get(f"/v1/bulk_requests/{summary['id']}")
