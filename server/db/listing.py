"""Which named query a listing runs, and with what: decided once for both adapters.

Both queries.sql files (server/db/sqlite/, server/db/postgres/) hold the same names
(tests/test_pg_schema.py), so the choice among them is the adapters' common ground: each
runs the chosen name through its own statements and driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NamedQuery:
    """A statement of queries.sql, by name, and the values bound to its parameters."""

    name: str
    params: dict[str, Any]


def records_query(
    environment_id: int,
    *,
    data_stream_key: str | None,
    bulk_request_id: int | None,
    after_id: int,
    limit: int,
) -> NamedQuery:
    """GET /v1/records: by stream when one is named (the request filter then narrows it
    in the same query), else by request, else the environment's records."""
    params = {
        "environment_id": environment_id,
        "data_stream_key": data_stream_key,
        "bulk_request_id": bulk_request_id,
        "after_id": after_id,
        "limit": limit,
    }
    if data_stream_key is not None:
        return NamedQuery("list_records_by_stream", params)
    if bulk_request_id is not None:
        return NamedQuery("list_records_by_request", params)
    return NamedQuery("list_records", params)
