"""SPEC §7's rules for cancelling and retrying, stated once.

Pure functions of the rows a storage adapter reads inside its transaction: every
adapter calls these, and the API's `can_cancel` / `can_retry` are "no refusal".
"""

from __future__ import annotations

from collections.abc import Sequence

from server.models import BulkRequest, ChainMember
from server.types import TERMINAL_STATUSES

# SPEC §7: only a request that ended without completing can be retried.
RETRYABLE_STATUSES = frozenset({"failed", "cancelled"})
# SPEC §7: only a request that has not ended can be cancelled.
CANCELLABLE_STATUSES = frozenset({"pending", "processing"})


def cancel_refusal(row: BulkRequest) -> str | None:
    """Why the request cannot be cancelled (409), or None (cancelled ones included)."""
    status = row.status
    if status == "cancelled" or status in CANCELLABLE_STATUSES:
        return None
    return f"bulk request {row.id} is {status}; it can no longer be cancelled"


def retry_refusal(request_id: int, chain: Sequence[ChainMember]) -> str | None:
    """Why member `request_id` of `chain` (oldest first) cannot be retried now, or None.

    `create_retry` answers 409 with this reason, and the payload's `can_retry` is "no
    reason". It reads only the members' rows: a retry holds exactly the rows no earlier
    member stored or skipped, so what the chain has left to retry is what its latest
    member did not handle (its failed rows and the rows it never reached); the adapter
    builds exactly those from the chain's coverage (server/chains.py).
    """
    requested = next(member for member in chain if member.id == request_id)
    if requested.status not in RETRYABLE_STATUSES:
        return (
            f"bulk request {request_id} is {requested.status}; "
            "only failed or cancelled requests can be retried"
        )
    for member in chain:
        if member.status not in TERMINAL_STATUSES:
            return (
                f"bulk request {member.id} of this chain of retries is {member.status}; "
                "wait for it to end (or cancel it), then retry"
            )
        if member.status == "completed":
            return (
                f"bulk request {member.id} of this chain of retries completed, so every "
                f"row has been processed; its failed rows are at "
                f"/v1/bulk_requests/{member.id}/errors: fix them and submit them again"
            )
    latest = chain[-1]
    if latest.parsing:
        # The chain stopped before its file was parsed: a retry parses the file again,
        # unless the file was rejected as a whole (then it was deleted).
        if not latest.upload_path:
            return (
                f"bulk request {latest.id} was rejected as a whole file "
                f"({latest.error_message}); upload a corrected file instead"
            )
        return None
    if latest.failed_items == 0 and latest.next_row >= latest.total_items:
        origin = next(member for member in chain if not member.parsing)
        return f"the chain of bulk request {origin.id} has no failed or unprocessed rows"
    return None
