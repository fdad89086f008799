"""Property: whatever a client sends, the answer is a 2xx or a 4xx problem, never a 5xx,
and a refused request changes nothing (SPEC §4, §11; issue 9.2).

Bodies are generated as raw bytes, not through a JSON encoder, so they can hold what
encoders never write: lone surrogates (escaped, or as the raw bytes an encoder with
`surrogatepass` writes), the same key twice, numbers beyond 64 bits or beyond a double,
and nesting far past any limit, around a skeleton of real fields so that the checks
behind the first ones are reached too. An accepted bulk request must then complete (row
errors are fine, a worker crash is not). The second property does the same for query
parameters and path ids. One server serves every example of a test (a fresh one per
example would cost more than the example); the "ci" profile bounds and seeds them, the
"long" one (BULK_FUZZ=long) runs thousands with a random seed.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from server.app import create_app
from server.config import Settings
from server.types import TERMINAL_STATUSES
from tests.conftest import API_KEY, Api, wait_until

# --- raw JSON ------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    members: list[tuple[str, Any]]  # a list, not a dict: a key may come twice


@dataclass(frozen=True)
class Deep:
    levels: int
    bracket: str  # "[" or "{"


@dataclass(frozen=True)
class Number:
    text: str  # written as is: 1e400, 2**70, -0, 1E-400 …


def _dump(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Obj):
        inner = ", ".join(
            f"{_dump(k, ascii_only)}: {_dump(v, ascii_only)}" for k, v in value.members
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v, ascii_only) for v in value) + "]"
    if isinstance(value, Deep):
        if value.bracket == "[":
            return "[" * value.levels + "]" * value.levels
        return '{"d": ' * value.levels + "0" + "}" * value.levels
    if isinstance(value, Number):
        return value.text
    return json.dumps(value, ensure_ascii=ascii_only)  # str, int, float, bool, None


def encode(value: Any, ascii_only: bool) -> bytes:
    # Without ensure_ascii a lone surrogate stays a character; surrogatepass writes it
    # as the three bytes a UTF-8 encoder would, had surrogates been characters.
    return _dump(value, ascii_only).encode("utf-8", "surrogatepass")


CHARACTERS = st.one_of(
    st.characters(),  # any code point but surrogates
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from(list('\x00"\\/~:{[]}\u2028\ufeff')),
)
TEXT = st.one_of(
    st.text(CHARACTERS, max_size=12),
    st.sampled_from(["", "bank", "2024-01-31", "12.34", "USD", "skip", "error", "~1/0"]),
)
FIELD_NAMES = st.sampled_from(
    ["date", "data_stream_key", "amount", "currency", "description", "external_id", "metadata"]
)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        ["1e400", "-1e400", "1E-400", "-0", "0.1e1", "123456789012345678901234567890"]
    ).map(Number),
    st.integers(60, 80).map(lambda n: Number(str(2**n))),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
DEEP = st.builds(
    Deep, st.sampled_from([31, 32, 33, 40, 300, 1000, 1100, 3000]), st.sampled_from("[{")
)


def _objects(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Obj]:
    keys = st.one_of(TEXT, FIELD_NAMES)
    members = st.lists(st.tuples(keys, children), max_size=5)
    # Now and then a member repeated, so a duplicate key is common, not a rare draw.
    repeated = members.flatmap(
        lambda m: st.just(m) if not m else st.sampled_from(m).map(lambda first: [*m, first])
    )
    return st.builds(Obj, st.one_of(members, repeated))


VALUES = st.recursive(
    st.one_of(SCALARS, DEEP),
    lambda children: st.one_of(st.lists(children, max_size=4), _objects(children)),
    max_leaves=12,
)
PLAUSIBLE = {
    "date": st.sampled_from(["2024-01-31", "2024-02-30", "31/01/2024"]),
    "data_stream_key": st.sampled_from(["bank", "nope"]),
    "amount": st.one_of(st.sampled_from(["12.34", "1.234", "-5"]), NUMBERS),
    "currency": st.sampled_from(["USD", "JPY", "usd"]),
}


@st.composite
def records(draw: st.DrawFn) -> Obj:
    """A record: mostly plausible fields, any of them replaced, repeated or added to."""
    members: list[tuple[str, Any]] = [
        (k, draw(s)) for k, s in PLAUSIBLE.items() if draw(st.booleans()) or k != "currency"
    ]
    for _ in range(draw(st.integers(0, 3))):
        members.append((draw(st.one_of(FIELD_NAMES, TEXT)), draw(VALUES)))
    if members and draw(st.integers(0, 4)) == 0:
        members.append(draw(st.sampled_from(members)))
    return Obj(draw(st.permutations(members)))


BULK_BODIES = st.one_of(
    VALUES,
    st.builds(
        lambda rows, extra: Obj([("records", rows), *extra]),
        st.lists(st.one_of(records(), VALUES), min_size=1, max_size=4),
        st.lists(st.tuples(st.sampled_from(["on_conflict", "records", "x"]), VALUES), max_size=2),
    ),
)
STREAM_BODIES = st.one_of(
    VALUES,
    st.builds(
        lambda members: Obj(members),
        st.lists(
            st.tuples(
                st.sampled_from(["key", "name", "currency", "other"]), st.one_of(TEXT, VALUES)
            ),
            max_size=4,
        ),
    ),
)

# --- one server per test -------------------------------------------------------------


class Live:
    """A real app on a real SQLite file, driven from sync hypothesis tests."""

    def __init__(self, db: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = Settings(
            db_path=db, workers=1, batch_size=50, sweep_interval=3600, time_slice=0.25
        )
        self.api: Api = self.run(self._start())
        self.client = self.api.client
        self.request_id: int = self.run(self._seed())

    async def _start(self) -> Api:
        app = create_app(self.settings, bootstrap_api_key=API_KEY)
        client = TestClient(TestServer(app))
        await client.start_server()
        return Api(client)

    async def _seed(self) -> int:
        """A stream, and a terminal request with a row error, for real paths to name."""
        await self.api.create_stream("bank")
        row = {"date": "2024-02-30", "data_stream_key": "bank", "amount": 1}
        request_id: int = (await self.api.submit([row]))["id"]
        await self.api.wait_terminal(request_id)
        return request_id

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = Live(tmp_path_factory.mktemp("fuzz") / "bulk.db")
    yield server
    server.close()


async def _state(api: Api) -> tuple[int, int]:
    """(newest bulk request id, number of data streams): what a refused call must not change."""
    newest = (await api.get("/v1/bulk_requests?limit=1"))["data"]
    streams = await api.all_pages("/v1/data_streams")
    return (newest[0]["id"] if newest else 0), len(streams)


async def _check(api: Api, method: str, url: str | URL, **kwargs: Any) -> tuple[int, Any]:
    async with api.client.request(
        method, url, headers=api.headers(kwargs.pop("headers", None)), **kwargs
    ) as resp:
        raw = await resp.read()
        assert resp.status < 500, (resp.status, raw[:500])
        assert resp.headers.get("X-Request-ID")
        if resp.status >= 400:
            assert resp.content_type == "application/problem+json", (resp.status, raw[:300])
            problem = orjson.loads(raw)
            assert problem["status"] == resp.status
            assert problem["type"].startswith("/problems/")
            return resp.status, problem
        return resp.status, raw


async def _post_json(live: Live, path: str, raw: bytes, idempotency_key: str | None) -> None:
    api = live.api
    before = await _state(api)
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    status, answer = await _check(api, "POST", path, data=raw, headers=headers)
    after = await _state(api)
    if status >= 400 or status == 200:  # refused, or an idempotent replay: nothing new
        assert after == before, (status, answer)
        return
    created = orjson.loads(answer)
    if path == "/v1/records/bulk":
        assert after == (created["id"], before[1])
        done = await wait_until(
            lambda: api.get(f"/v1/bulk_requests/{created['id']}"),
            lambda r: r["status"] in TERMINAL_STATUSES,
        )
        # Row errors are fine; a row the worker could not handle would fail the request.
        assert done["status"] == "completed", done
        assert done["processed_items"] == done["total_items"]
    elif path == "/v1/data_streams":
        assert after == (before[0], before[1] + 1)


@pytest.mark.parametrize("route", ["/v1/records/bulk", "/v1/data_streams", "cancel", "retry"])
@given(
    bulk=BULK_BODIES,
    stream=STREAM_BODIES,
    ascii_only=st.booleans(),
    idempotency_key=st.one_of(st.none(), st.sampled_from(["fuzz-1", "fuzz-2"])),
)
def test_any_json_body_gets_2xx_or_a_4xx_problem_and_a_refusal_changes_nothing(
    live: Live, route: str, bulk: Any, stream: Any, ascii_only: bool, idempotency_key: str | None
) -> None:
    if route in ("cancel", "retry"):
        # These take no body; whatever is sent must not matter.
        path = f"/v1/bulk_requests/{live.request_id}/{route}"
        raw = encode(bulk, ascii_only)
    else:
        path = route
        raw = encode(bulk if route == "/v1/records/bulk" else stream, ascii_only)
    live.run(_post_json(live, path, raw, idempotency_key))


# --- query parameters and path ids ---------------------------------------------------


def _cursor(value: Any) -> str:
    raw = json.dumps(value).encode()  # json, not orjson: it writes integers of any size
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CURSOR_KINDS = {
    "/v1/records": "records",
    "/v1/bulk_requests": "bulk_requests",
    "/v1/data_streams": "data_streams",
    "/v1/bulk_requests/{id}/errors": "errors",
}
POSITIONS = st.one_of(
    # The edges first: generation favours the first choices.
    st.sampled_from([2**63, 2**64 - 1, -1, 2**64, -(2**63) - 1, 2**63 - 1, 0, 1]),
    st.integers(-(2**70), 2**70),
    TEXT,
    st.none(),
)
PARAM_VALUES = st.one_of(
    TEXT,
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["0", "1", "200", "201", "-5", "1e3", "٣", "csv", "json", "pending", "bulk_api"]
    ),
)


@st.composite
def queries(draw: st.DrawFn, route: str) -> list[tuple[str, str]]:
    """Query parameters, often a forged cursor of the route's own kind (as an attacker
    would make one: base64 of the JSON the server issues, with another position)."""
    own = st.just(CURSOR_KINDS.get(route, "records"))
    kind = st.one_of(own, st.sampled_from(["x", *CURSOR_KINDS.values()]))
    cursor = st.one_of(st.tuples(kind, POSITIONS).map(lambda t: _cursor(list(t))), TEXT)
    names = st.sampled_from(
        ["limit", "status", "source", "data_stream_key", "bulk_request_id", "format"]
    )
    entry = st.one_of(
        st.tuples(st.just("cursor"), cursor),
        st.tuples(names, PARAM_VALUES),
        st.tuples(TEXT, TEXT),
    )
    params = draw(st.lists(entry, max_size=3))
    if draw(st.booleans()):
        params.insert(draw(st.integers(0, len(params))), ("cursor", draw(cursor)))
    return params


PATH_IDS = st.one_of(
    st.integers(-5, 2**70).map(str),
    st.sampled_from(
        ["1", "0", "00001", "1.0", "1e3", "٣", "9223372036854775808", "18446744073709551616"]
    ),
    TEXT,
)
GET_ROUTES = [
    "/v1/records",
    "/v1/bulk_requests",
    "/v1/data_streams",
    "/v1/data_streams/{key}",
    "/v1/bulk_requests/{id}",
    "/v1/bulk_requests/{id}/errors",
    "/v1/bulk_requests/{id}/events",
]  # one test per route: generation alone would spend most examples on one


def _percent(text: str) -> str:
    # Surrogates go out as the bytes surrogatepass writes, percent-encoded: the server
    # decodes them itself and must cope.
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@pytest.mark.parametrize("route", GET_ROUTES)
@given(data=st.data(), path_id=PATH_IDS, use_real_id=st.booleans())
def test_any_query_and_path_id_gets_2xx_or_a_4xx_problem(
    live: Live, route: str, data: st.DataObject, path_id: str, use_real_id: bool
) -> None:
    params = data.draw(queries(route), label="params")
    ident = str(live.request_id) if use_real_id else path_id
    key = "bank" if use_real_id else path_id
    path = route.replace("{id}", _percent(ident)).replace("{key}", _percent(key))
    query = "&".join(f"{_percent(k)}={_percent(v)}" for k, v in params)
    url = URL(f"{path}?{query}" if query else path, encoded=True)
    live.run(_check(live.api, "GET", url, timeout=10))
