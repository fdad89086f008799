"""A terminal request never says `parsing: true` (SPEC §7, issue 15.7).

The stored `parsing` flag means "this upload's file has not been staged yet": the worker
and retry need it after the request ended (an upload cancelled mid-parse is retried by
parsing the same file again). The payload's `parsing` says what the request is doing, so
it is false once the request is terminal, on every path that ends an upload before its
file was parsed: cancelled while pending, cancelled mid-parse, a file rejected as a
whole, a file gone (a crash path; see test_crash.py), and in every answer that carries
it: show, list, the event stream, cancel and an idempotent upload replay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.api.common import STORE
from server.config import Settings
from server.types import TERMINAL_STATUSES
from tests.conftest import Api, wait_until
from tests.db_access import stored_uploads
from tests.test_events import stream
from tests.test_uploads import HEADER, csv_bytes, upload

ApiFactory = Callable[[Settings], Awaitable[Api]]
# Enough rows that parsing takes many staged chunks (PARSE_CHUNK_ROWS each), so a cancel
# sent as soon as the first chunk is staged lands while the file is still being parsed.
BIG_FILE_ROWS = 200_000
REPLAY_KEY = {"Idempotency-Key": "terminal-parsing-upload"}


def big_csv(rows: int = BIG_FILE_ROWS) -> bytes:
    return csv_bytes(
        [HEADER]
        + [["2024-01-01", f"{i}.00", "USD", f"r{i}", f"e{i}", "checking"] for i in range(rows)]
    )


async def assert_every_answer_says_not_parsing(
    api: Api, request_id: int, content: bytes, **fields: str
) -> Any:
    """The request is terminal, and no answer that describes it says it is parsing."""
    shown = await api.get(f"/v1/bulk_requests/{request_id}")
    assert shown["status"] in TERMINAL_STATUSES, shown
    assert shown["parsing"] is False, shown
    listed = await api.get(f"/v1/bulk_requests?status={shown['status']}")
    (entry,) = [r for r in listed["data"] if r["id"] == request_id]
    assert entry == shown
    async with stream(api, f"/v1/bulk_requests/{request_id}/events") as sse:
        events = await sse.all()
    assert [(e.event, e.data["parsing"]) for e in events] == [("done", False)]
    # The same upload again under the same key: the replayed summary describes it now.
    _status, replay = await upload(api, content, expect=200, headers=REPLAY_KEY, **fields)
    assert (replay["id"], replay["status"], replay["parsing"]) == (
        request_id,
        shown["status"],
        False,
    )
    if shown["status"] == "cancelled":
        status, again = await api.call("POST", f"/v1/bulk_requests/{request_id}/cancel")
        assert (status, again) == (200, shown)
    return shown


async def test_an_upload_cancelled_mid_parse_says_it_is_not_parsing(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=1, time_slice=1000.0))
    await api.create_stream("checking")
    content = big_csv()
    _, summary = await upload(api, content, headers=REPLAY_KEY)
    assert summary["parsing"] is True
    path = f"/v1/bulk_requests/{summary['id']}"
    await wait_until(lambda: api.get(path), lambda r: r["parsing"] and r["total_items"] > 0)
    async with stream(api, f"{path}/events") as sse:
        status, cancelled = await api.call("POST", f"{path}/cancel")
        assert status == 202, cancelled  # a worker holds it: it stops after this chunk
        assert cancelled["parsing"] is True  # still parsing until the worker stops
        events = await sse.all()
    assert events[-1].event == "done"
    assert (events[-1].data["status"], events[-1].data["parsing"]) == ("cancelled", False)
    shown = await assert_every_answer_says_not_parsing(api, summary["id"], content)
    # Stopped part-way through the file: only some rows were ever staged, none processed.
    assert 0 < shown["total_items"] < BIG_FILE_ROWS, shown
    assert shown["processed_items"] == 0


async def test_an_upload_cancelled_before_parsing_says_it_is_not_parsing(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(dataclasses.replace(settings, workers=0))  # nobody parses it
    await api.create_stream("checking")
    content = big_csv(10)
    _, summary = await upload(api, content, headers=REPLAY_KEY)
    status, cancelled = await api.call("POST", f"/v1/bulk_requests/{summary['id']}/cancel")
    assert status == 200
    assert (cancelled["status"], cancelled["parsing"]) == ("cancelled", False)
    await assert_every_answer_says_not_parsing(api, summary["id"], content)


async def test_a_file_rejected_as_a_whole_says_it_is_not_parsing(api: Api) -> None:
    content = b"date,amount\n"  # a header and no rows: the whole file is rejected
    _, summary = await upload(api, content, format="csv", headers=REPLAY_KEY)
    done = await api.wait_terminal(summary["id"])
    assert done["status"] == "failed"
    await assert_every_answer_says_not_parsing(api, summary["id"], content, format="csv")


async def test_an_upload_whose_file_is_gone_says_it_is_not_parsing(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    # The file vanished before a worker got to it (an operator cleaning the upload
    # directory, a crash restore without it): the request fails instead of parsing.
    idle = await make_api(dataclasses.replace(settings, workers=0))
    await idle.create_stream("checking")
    content = big_csv(10)
    _, summary = await upload(idle, content, headers=REPLAY_KEY)
    for name in await stored_uploads(idle.app[STORE]):
        await idle.app[STORE].delete_upload(name)
    await idle.client.close()
    api = await make_api(settings)  # the same database, now with workers
    done = await api.wait_terminal(summary["id"])
    assert (done["status"], done["error_message"]) == (
        "failed",
        "the uploaded file is no longer on disk",
    )
    await assert_every_answer_says_not_parsing(api, summary["id"], content)
