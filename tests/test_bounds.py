"""Bounded memory (SPEC §11) in the process: staged chunks, and the CSV error export.

The export streams, has at most 256 columns (so it can be uploaded again), and pages
with `limit` / `cursor` exactly like its JSON variant (issue 15 item 5).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.api.common import STORE
from server.api.error_export import OMITTED_COLUMN, csv_line
from server.config import Settings
from server.constants import MAX_CSV_COLUMNS, PARSE_CHUNK_BYTES, PARSE_CHUNK_ROWS
from server.jobs.parsing import take_chunk
from server.types import SourceRow
from tests.conftest import Api, record
from tests.db_access import stored_rows
from tests.test_cancel_retry import ApiFactory, slow
from tests.test_chains import _cancel_mid_way
from tests.test_staging import payload

ERRORS = "/v1/bulk_requests/{}/errors"


def test_staged_chunks_are_bounded_in_bytes_as_well_as_rows() -> None:
    wide = iter([SourceRow({}, n, None, 60 * 1024) for n in range(1000)])
    sizes = []
    while chunk := take_chunk(wide):
        sizes.append(sum(row.size for row in chunk))
    assert len(sizes) > 1
    assert max(sizes) <= PARSE_CHUNK_BYTES + 60 * 1024
    narrow = iter([SourceRow({}, n, None, 50) for n in range(PARSE_CHUNK_ROWS + 1)])
    assert len(take_chunk(narrow)) == PARSE_CHUNK_ROWS


async def staged_chunk_sizes(api: Api, request_id: int) -> list[tuple[int, int]]:
    """(rows, bytes of JSON) of each chunk staged for the request, straight from the database."""
    found = await stored_rows(
        api.app[STORE],
        "SELECT row_count, body FROM request_chunks WHERE bulk_request_id = ? ORDER BY first_row",
        request_id,
    )
    return [(row["row_count"], len(payload(row["body"]))) for row in found]


async def submit_large(api: Api, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST a body over 1 MB as a stream (aiohttp warns about large raw bytes)."""
    body = io.BytesIO(orjson.dumps({"records": records}))
    headers = api.headers({"Content-Type": "application/json"})
    async with api.client.post("/v1/records/bulk", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        accepted: dict[str, Any] = await resp.json()
    return accepted


WIDE_ROW_BYTES = 15_000  # within MAX_METADATA_BYTES: a valid, wide row


def wide_rows() -> list[dict[str, Any]]:
    return [
        record(i, description=f"row {i}", metadata={"note": f"{i:05d}" + "x" * WIDE_ROW_BYTES})
        for i in range(1000)
    ]


async def test_a_large_post_is_staged_in_chunks_bounded_in_bytes(
    api: Api, settings: Settings
) -> None:
    """Regression (issue 9.3): a 15 MB POST was one chunk, decoded whole by a worker."""
    await api.create_stream()
    accepted = await submit_large(api, wide_rows())
    chunks = await staged_chunk_sizes(api, accepted["id"])
    assert [sum(count for count, _ in chunks), len(chunks) > 1] == [1000, True]
    assert max(size for _, size in chunks) <= PARSE_CHUNK_BYTES + WIDE_ROW_BYTES + 1000
    done = await api.wait_terminal(accepted["id"])
    assert (done["status"], done["successful_items"]) == ("completed", 1000)
    assert len(await api.all_pages("/v1/records")) == 1000


async def test_a_retry_stages_wide_rows_in_chunks_bounded_in_bytes(
    make_api: ApiFactory, settings: Settings
) -> None:
    """Regression (issue 9.3): a retry buffered up to 2000 rows before writing a chunk;
    with rows of up to 64 KiB its peak RSS went from 123 to 537 MB."""
    api = await make_api(slow(settings, batch_size=10, batch_pause=0.05))
    await api.create_stream()
    origin = await submit_large(api, wide_rows())
    await _cancel_mid_way(api, origin["id"])
    child = await api.post(f"/v1/bulk_requests/{origin['id']}/retry", expect=201)
    chunks = await staged_chunk_sizes(api, child["id"])
    assert sum(count for count, _ in chunks) == child["total_items"]
    assert len(chunks) > 1
    assert max(size for _, size in chunks) <= PARSE_CHUNK_BYTES + WIDE_ROW_BYTES + 1000
    await api.post(f"/v1/bulk_requests/{child['id']}/cancel")  # not needed to finish


@given(st.lists(st.one_of(st.none(), st.text(), st.integers()), min_size=1, max_size=12))
def test_csv_line_writes_exactly_what_csv_writer_writes(values: list[Any]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(["" if v is None else v for v in values])
    assert csv_line(values) == buffer.getvalue()


async def _failed_rows(api: Api, records: list[dict[str, Any]]) -> int:
    await api.create_stream()
    summary = await api.submit(records)
    done = await api.wait_terminal(summary["id"])
    assert done["failed_items"] == len(records), done
    request_id: int = summary["id"]
    return request_id


async def _csv(api: Api, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async with api.client.get(path, headers=api.headers(headers)) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_export_has_at_most_256_columns_and_loses_no_metadata(api: Api) -> None:
    # JSON submissions can carry any number of metadata keys; before, each distinct key
    # became a column (100,000 columns, 7.7 s for 100 rows).
    rows = [
        record(n, date="2024-02-30", metadata={f"r{n}k{k}": f"v{n}.{k}" for k in range(150)})
        for n in range(3)
    ]
    request_id = await _failed_rows(api, rows)
    status, _, text = await _csv(api, ERRORS.format(request_id) + "?format=csv")
    assert status == 200
    header, *lines = list(csv.reader(io.StringIO(text)))
    assert len(header) == MAX_CSV_COLUMNS
    assert header[-1] == OMITTED_COLUMN
    for n, line in enumerate(lines):
        cells = dict(zip(header, line, strict=True))
        metadata = {
            name.removeprefix("metadata."): value
            for name, value in cells.items()
            if name.startswith("metadata.") and value
        }
        if cells[OMITTED_COLUMN]:
            metadata.update(orjson.loads(cells[OMITTED_COLUMN]))
        assert metadata == rows[n]["metadata"]
        assert cells["error_code"] == "invalid_date"


async def test_export_with_few_metadata_keys_has_a_column_each_and_no_extra(api: Api) -> None:
    request_id = await _failed_rows(
        api, [record(n, date="2024-02-30", metadata={"b": "1", "a": n}) for n in range(2)]
    )
    _, _, text = await _csv(api, ERRORS.format(request_id), Accept="text/csv")
    header, first, second = list(csv.reader(io.StringIO(text)))
    assert header[-2:] == ["metadata.a", "metadata.b"]
    assert (first[-2:], second[-2:]) == (["0", "1"], ["1", "1"])


async def test_csv_export_pages_with_limit_and_cursor_like_the_json_list(api: Api) -> None:
    request_id = await _failed_rows(api, [record(n, date="2024-13-01") for n in range(5)])
    path = ERRORS.format(request_id) + "?format=csv"
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        status, headers, text = await _csv(
            api, path + "&limit=2" + (f"&cursor={cursor}" if cursor else "")
        )
        assert status == 200
        _header, *lines = list(csv.reader(io.StringIO(text)))
        seen.extend(line[0] for line in lines)
        pages += 1
        cursor = headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert (seen, pages) == (["0", "1", "2", "3", "4"], 3)
    # The cursor is a row position: the JSON list's next_cursor works for the CSV too.
    json_page = await api.get(ERRORS.format(request_id) + "?limit=3")
    _, headers, text = await _csv(api, path + f"&cursor={json_page['next_cursor']}")
    assert [line[0] for line in list(csv.reader(io.StringIO(text)))[1:]] == ["3", "4"]
    assert "X-Next-Cursor" not in headers  # without limit: everything after the cursor


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=-5", "limit"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("cursor=zzz", "cursor"),
        ("cursor=" + "WyJyZWNvcmRzIiwxXQ", "cursor"),  # another list's cursor
    ],
)
@pytest.mark.parametrize("how", ["format=csv", "accept"])
async def test_csv_export_validates_limit_and_cursor_as_the_json_list_does(
    api: Api, query: str, parameter: str, how: str
) -> None:
    request_id = await _failed_rows(api, [record(0, date="2024-13-01")])
    url = ERRORS.format(request_id) + "?" + query
    headers = {"Accept": "text/csv"}
    if how == "format=csv":
        url += "&format=csv"
        headers = {}
    for variant in (url, ERRORS.format(request_id) + "?" + query):  # CSV, then JSON
        async with api.client.get(variant, headers=api.headers(headers)) as resp:
            assert resp.status == 400, (variant, resp.status)
            assert resp.content_type == "application/problem+json"
            assert resp.headers["X-Request-ID"]
            body = await resp.json(content_type=None)
        assert body["type"] == "/problems/invalid-parameter"
        assert [e["parameter"] for e in body["errors"]] == [parameter]


async def test_unknown_format_is_a_400_even_when_csv_is_accepted(api: Api) -> None:
    request_id = await _failed_rows(api, [record(0, date="2024-13-01")])
    status, _, text = await _csv(api, ERRORS.format(request_id) + "?format=xml", Accept="text/csv")
    assert status == 400
    assert orjson.loads(text)["type"] == "/problems/invalid-parameter"
