"""Models both adapters build the same way from rows read by column name.

A `sqlite3.Row`, a dict of one and an `asyncpg.Record` all answer `row["column"]`, and
the queries behind these models select the same column names in both dialects
(queries.sql, held equal by tests/test_pg_schema.py), so one function serves both. The
bulk request itself is built beside each driver (sqlite/rows.py reads it by position,
which measured faster; postgres/rows.py by name).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from server.db.payload import MODES, SOURCES, STATUSES
from server.db.port import StatusSourceTotals
from server.models import ChainMember


class NamedRow(Protocol):
    def __getitem__(self, column: str, /) -> Any: ...


def chain_member(row: NamedRow) -> ChainMember:
    """From list_chains_of, which selects only these columns."""
    return ChainMember(
        id=row["id"],
        status=STATUSES[row["status"]],
        parsing=bool(row["parsing"]),
        upload_path=row["upload_path"],
        error_message=row["error_message"],
        failed_items=row["failed_items"],
        next_row=row["next_row"],
        total_items=row["total_items"],
        parent_bulk_request_id=row["parent_bulk_request_id"],
        mode=MODES[row["mode"]],
    )


def chains_of(rows: Iterable[NamedRow]) -> list[list[ChainMember]]:
    """list_chains_of's rows (ordered by chain, oldest first) as one list per chain."""
    chains: dict[int, list[ChainMember]] = {}
    for row in rows:
        chains.setdefault(row["chain_root"], []).append(chain_member(row))
    return list(chains.values())


def status_source_totals(rows: Iterable[NamedRow]) -> list[StatusSourceTotals]:
    """metrics_bulk_requests' rows: per (status, source), request count and row counters."""
    return [
        StatusSourceTotals(
            status=STATUSES[r["status"]],
            source=SOURCES[r["source"]],
            requests=r["requests"],
            successful=r["successful"],
            failed=r["failed"],
            skipped=r["skipped"],
        )
        for r in rows
    ]
