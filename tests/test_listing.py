"""server/db/listing.py: the one choice of records query both adapters run (their
results are checked end to end on both backends by tests/test_data_streams.py)."""

from __future__ import annotations

import pytest

from server.db.listing import records_query
from server.db.postgres.queries import load_queries as postgres_queries
from server.db.sqlite.queries import load_queries as sqlite_queries


@pytest.mark.parametrize(
    ("data_stream_key", "bulk_request_id", "expected"),
    [
        ("s", 7, "list_records_by_stream"),  # the stream query narrows by request itself
        ("s", None, "list_records_by_stream"),
        (None, 7, "list_records_by_request"),
        (None, None, "list_records"),
    ],
)
def test_the_records_query_is_chosen_by_the_filters_given(
    data_stream_key: str | None, bulk_request_id: int | None, expected: str
) -> None:
    query = records_query(
        3, data_stream_key=data_stream_key, bulk_request_id=bulk_request_id, after_id=5, limit=9
    )
    assert query.name == expected
    assert query.params == {
        "environment_id": 3,
        "data_stream_key": data_stream_key,
        "bulk_request_id": bulk_request_id,
        "after_id": 5,
        "limit": 9,
    }
    # Both dialects hold the chosen statement under that name.
    assert query.name in sqlite_queries()
    assert query.name in postgres_queries()
