"""Property: a bulk body staged raw (RAW_BODY_V1: the accept decides only what concerns
the whole request, the worker finishes each row) gets exactly the answer the precise
path gives — the same status and problem body at accept, and the same records, row
errors and request counters once processed — for arbitrary bodies: lone surrogates,
huge numbers, deep nesting, NUL, too-long strings, repeated keys, unknown streams and
every row error, around mostly ordinary rows so that many bodies are staged raw.

Two real apps on two SQLite files serve every example (one pair per module, like
tests/test_fuzz_inputs.py): the body as sent to one, and to the other with
`"on_conflict": "sk\\u0069p"` — "skip" to every JSON parser, but not the bytes the raw
and fast paths accept, so the precise path decides there.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from server.api.common import SETTINGS, STORE
from server.app import create_app
from server.config import Settings
from server.constants import MAX_DESCRIPTION_CHARS
from server.staging import RAW_BODY_V1
from tests.conftest import API_KEY, Api
from tests.db_access import stored_rows
from tests.test_fast_path import STREAMS, _stored
from tests.test_fuzz_inputs import VALUES, Number, Obj, encode, records

JSON_TYPE = {"Content-Type": "application/json"}
PRECISE_SKIP = ("on_conflict", Number('"sk\\u0069p"'))


class Pair:
    """The raw-path app and the precise-path app, on one loop, driven from sync tests."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.apis: list[Api] = []
        for name in ("raw", "precise"):
            (directory / name).mkdir()
            self.apis.append(self.run(self._start(directory / name)))

    async def _start(self, directory: Path) -> Api:
        settings = Settings(
            db_path=directory / "bulk.db",
            workers=1,
            batch_size=7,  # several batches per body: a raw chunk is finished once, used often
            sweep_interval=3600,
            time_slice=0.25,
        )
        client = TestClient(TestServer(create_app(settings, bootstrap_api_key=API_KEY)))
        await client.start_server()
        api = Api(client)
        for key, currency in STREAMS.items():
            await api.create_stream(key, currency)
        return api

    def db(self, n: int) -> Path:
        return self.apis[n].app[SETTINGS].db_path

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        for api in self.apis:
            self.run(api.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    apps = Pair(tmp_path_factory.mktemp("raw-body"))
    yield apps
    apps.close()


def _text(value: str) -> Number:
    return Number(orjson.dumps(value).decode())


# Rows the raw path stages (scalars only, no metadata), ordinary or with a row error,
# and the values that must still refuse or reroute the whole body.
ORDINARY_FIELDS = {
    "data_stream_key": st.sampled_from([*STREAMS, "nope", ""]),
    "date": st.sampled_from(["2024-01-31", "2024-02-29", "2023-02-29", "2024-1-31", "x"]),
    "amount": st.one_of(
        st.sampled_from(["12.34", "-5", "0", "7.250", "1.234", "1e2", "99999999999999999"]).map(
            Number
        ),
        st.sampled_from(["12.34", "-5", "1.2.3", "", " 1", "+1"]).map(_text),
        st.sampled_from(["1e400", "123456789012345678901234567890", "1" + "0" * 400]).map(Number),
        st.sampled_from([None, True, 3.5, 2**70]),
    ),
}
OPTIONAL_FIELDS = {
    "currency": st.sampled_from([None, "USD", "JPY", "BHD", "usd", "XXX"]),
    "description": st.one_of(
        st.sampled_from(
            [None, "", "row", "caf\u00e9", "a\x00b", "x" * (MAX_DESCRIPTION_CHARS + 1)]
        ),
        st.sampled_from(['"\\ud800"', '"a\\udc00"', '"\\u0000"', '"ref: 12"']).map(Number),
    ),
    "external_id": st.sampled_from([None, "e1", "e2", "", "x" * 300, "n\x00ul"]),
}


@st.composite
def ordinary_rows(draw: st.DrawFn) -> Obj:
    members: list[tuple[str, Any]] = [(k, draw(s)) for k, s in ORDINARY_FIELDS.items()]
    members += [(k, draw(s)) for k, s in OPTIONAL_FIELDS.items() if draw(st.booleans())]
    if draw(st.integers(0, 9)) == 0:
        members.append(draw(st.sampled_from(members)))  # a repeated key
    if draw(st.integers(0, 9)) == 0:
        members.pop(draw(st.integers(0, len(members) - 1)))  # a required field missing
    if draw(st.integers(0, 9)) == 0:
        members.append((draw(st.sampled_from(["amount", "metadata", "x"])), draw(VALUES)))
    return Obj(draw(st.permutations(members)))


ROWS = st.lists(
    st.one_of(ordinary_rows(), ordinary_rows(), ordinary_rows(), records(), VALUES),
    min_size=1,
    max_size=6,
)


async def _post(api: Api, body: bytes) -> tuple[int, Any]:
    status, answer = await api.call("POST", "/v1/records/bulk", data=body, headers=JSON_TYPE)
    if isinstance(answer, dict):
        # Times and the request id differ between the two apps; everything else must not.
        answer = {k: v for k, v in answer.items() if not k.endswith("_at") and k != "request_id"}
    return status, answer


async def _example(pair: Pair, rows: list[Any], say_skip: bool, ascii_only: bool) -> None:
    raw_app, precise_app = pair.apis
    members: list[tuple[str, Any]] = [("records", rows)]
    body = encode(Obj([*members, ("on_conflict", "skip")] if say_skip else members), ascii_only)
    precise_body = encode(Obj([*members, PRECISE_SKIP]), ascii_only)
    answers = [await _post(raw_app, body), await _post(precise_app, precise_body)]
    assert answers[0] == answers[1], body[:400]
    status, summary = answers[0]
    if status == 202:
        for api in pair.apis:
            done = await api.wait_terminal(summary["id"])
            assert done["status"] == "completed", done
        assert _stored(pair.db(0)) == _stored(pair.db(1)), body[:400]


@given(rows=ROWS, say_skip=st.booleans(), ascii_only=st.booleans())
def test_a_body_staged_raw_gets_the_precise_paths_answer_and_outcome(
    pair: Pair, rows: list[Any], say_skip: bool, ascii_only: bool
) -> None:
    pair.run(_example(pair, rows, say_skip, ascii_only))


async def test_bodies_like_the_generated_ones_are_staged_raw(
    make_api: Callable[[Settings], Awaitable[Api]], settings: Settings
) -> None:
    """Bodies like the property's, row errors included, do take the raw path (else the
    property above would only compare the precise path with itself)."""
    api = await make_api(dataclasses.replace(settings, workers=0))
    for key, currency in STREAMS.items():
        await api.create_stream(key, currency)
    row = Obj([("data_stream_key", "bank"), ("date", "2024-02-30"), ("amount", Number("1"))])
    odd = Obj([("data_stream_key", "nope"), ("date", "2024-02-03"), ("amount", _text("1.234"))])
    big = Obj([("data_stream_key", "yen"), ("date", "2024-02-03"), ("amount", Number("1" * 30))])
    for rows in ([row], [row, odd, big]):
        status, _ = await _post(api, encode(Obj([("records", rows)]), ascii_only=True))
        assert status == 202
    chunks = await stored_rows(api.app[STORE], "SELECT body FROM request_chunks")
    assert [bytes(c["body"][:1]) for c in chunks] == [RAW_BODY_V1, RAW_BODY_V1]
