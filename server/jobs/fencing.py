"""The claim fence every worker write goes through (batches, parsing, the pool's finish).

A worker's transaction names the claim it holds (`attempt`, `claimed_by`); when the row no
longer matches, the request was requeued or finished meanwhile, the transaction is rolled
back and the worker drops the request: it is someone else's now.
"""

from __future__ import annotations


class FencedOut(Exception):
    """The worker's claim is no longer current; its transaction was rolled back."""

    def __init__(self, request_id: int) -> None:
        super().__init__(f"claim on bulk request {request_id} is stale")
        self.request_id = request_id
