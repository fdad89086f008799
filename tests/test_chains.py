"""Chains of retries (SPEC §7 "Chains"): no row is ever stored twice, wherever retried.

A request and its retries form a chain. Whatever member is retried, the new request
holds exactly the rows no member has stored or skipped, and hangs off the latest member.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from server.config import Settings
from tests.conftest import Api, record, wait_until
from tests.test_cancel_retry import ApiFactory, slow

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
