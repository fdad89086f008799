"""The claim fence every worker write goes through (batches, parsing, the terminal write).

A worker's transaction names the claim it holds (`attempt`, `claimed_by`); when the row no
longer matches, the request was requeued or finished meanwhile, the transaction is rolled
back and the worker drops the request: it is someone else's now.
"""

from __future__ import annotations

from typing import Any

from server.db.sqlite.store import Store
from server.db.sqlite.tx import WriteTx
from server.outcomes import terminal_transition
from server.types import JSON, Status


class FencedOut(Exception):
    """The worker's claim is no longer current; its transaction was rolled back."""

    def __init__(self, request_id: int) -> None:
        super().__init__(f"claim on bulk request {request_id} is stale")
        self.request_id = request_id


async def finish_fenced(
    store: Store,
    job: JSON,
    worker: str,
    status: Status,
    *,
    error_message: str | None = None,
    error_details: JSON | None = None,
    keep_upload: bool = True,
) -> JSON:
    """The fenced terminal transition (with its outbox event), one transaction: the
    pool's `finish` and any other ParseHost run exactly this, so none can skip the event."""

    def work(tx: WriteTx) -> JSON:
        row = tx.finish_request(
            job,
            worker,
            status,
            error_message=error_message,
            error_details=error_details,
            keep_upload=keep_upload,
        )
        if row is None:
            raise FencedOut(job["id"])
        extra: dict[str, Any] = {"error": error_message} if error_message else {}
        tx.emit(row, terminal_transition(status), **extra)
        return row

    return await store.write(work)
