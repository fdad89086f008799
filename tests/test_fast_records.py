"""server/ingest/fast_records.py: the msgspec fast path builds exactly the record the
precise validator builds, or leaves the row to it (so every row error keeps its code
and pointer)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from server.ingest.fast_records import (
    decode_fast_body,
    every_record,
    fast_body_records,
    fast_record,
    split_records,
    stream_keys,
    validate_rows,
)
from server.ingest.json_checks import duplicate_key_issue, value_issues
from server.ingest.validation import StreamRef, ValidRecord, validate_row
from server.types import RowProblem

STREAMS = {"usd": StreamRef(1, "USD"), "jpy": StreamRef(2, "JPY"), "bhd": StreamRef(3, "BHD")}
REFUSED = RowProblem("request_refused", "the body itself is refused")


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def precise(raw: bytes) -> ValidRecord | RowProblem:
    """What the service does with one row's text today: the exact parse (numbers a double
    may not hold become Decimal), the body checks that refuse a request (bad JSON, a key
    named twice, lone surrogates, nesting, numbers beyond storage), then validate_row."""
    try:
        value = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return REFUSED
    if duplicate_key_issue(raw) is not None or next(value_issues(value, ""), None) is not None:
        return REFUSED
    return validate_row(value, STREAMS)


# --- arbitrary rows, as JSON text --------------------------------------------------------

KEYS = ["date", "data_stream_key", "amount", "currency", "description", "external_id"]
odd_text = st.text(
    st.characters(codec=None, categories=None, exclude_categories=()), max_size=12
) | st.sampled_from(["\ud800", "a\udfff", "\x00", "é", "😀", "ref: 1", "a" * 1001, ""])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | odd_text
    | st.decimals(allow_nan=False, allow_infinity=False).map(str)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)
number_literals = st.from_regex(
    r"\A-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?\Z", fullmatch=True
)


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` seven times in eight: most rows must get far enough to reach the fast path."""
    return st.integers(0, 7).flatmap(lambda n: odd if n == 0 else usual)


plain_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00:"), max_size=20)
plain_amounts = st.from_regex(r"\A-?(0|[1-9][0-9]{0,13})(\.[0-9]{1,3})?\Z", fullmatch=True)
plausible: dict[str, st.SearchStrategy[str]] = {
    "date": _mostly(
        st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}"),
        st.sampled_from(["2024-02-30", "2024-1-01", "٢٠٢٤-01-01", "2024-01-01 "]),
    ).map(_text),
    "data_stream_key": _mostly(st.sampled_from(["usd", "jpy", "bhd"]), odd_text).map(_text),
    "amount": _mostly(
        plain_amounts | plain_amounts.map(_text),
        number_literals
        | number_literals.map(_text)
        | st.sampled_from(['"+1"', '" 1"', '"1_000"', "true", "9007199254740991", "-0"]),
    ),
    "currency": _mostly(st.sampled_from(["USD", "JPY", "BHD"]), odd_text | st.just("usd")).map(
        _text
    ),
    "description": _mostly(plain_text, odd_text).map(_text),
    "external_id": _mostly(plain_text, odd_text).map(_text),
    "metadata": json_values.map(_text),
}
member = st.one_of(
    *(st.tuples(st.just(k), s | json_values.map(_text)) for k, s in plausible.items()),
    st.tuples(odd_text, json_values.map(_text)),
)
deep = st.integers(1, 40).map(lambda n: "[" * n + "]" * n)


@st.composite
def rows_as_text(draw: st.DrawFn) -> bytes:
    """Mostly near-valid rows (each known field usually plausible, sometimes anything),
    and sometimes a repeated key, an unknown one, metadata or deep nesting."""
    members = [
        (key, draw(plausible[key] if draw(st.integers(0, 19)) else json_values.map(_text)))
        for key in KEYS
        if key in KEYS[:3] or draw(st.booleans())
    ]
    extra = st.one_of(
        member, st.tuples(st.just("metadata"), deep), st.tuples(st.just("amount"), st.just("1"))
    )
    members += draw(st.lists(extra, max_size=2)) if draw(st.integers(0, 2)) == 0 else []
    members = draw(st.permutations(members))
    body = "{" + ", ".join(f"{_text(k)}: {v}" for k, v in members) + "}"
    if draw(st.booleans()):
        return _ascii_escaped(body).encode()  # lone surrogates as \\udXXX, as encoders write
    return body.encode("utf-8", "surrogatepass")  # ... or as raw (invalid UTF-8) bytes


def _ascii_escaped(text: str) -> str:
    """Non-ASCII characters (only ever inside JSON strings) as \\uXXXX escapes."""
    out = []
    for char in text:
        code = ord(char)
        if code < 0x80:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            high, low = divmod(code - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
    return "".join(out)


@given(rows_as_text())
def test_fast_path_and_precise_validator_agree_on_arbitrary_rows(raw: bytes) -> None:
    expected = precise(raw)
    fast = fast_record(raw, STREAMS)
    assert fast is None or fast == expected, (raw, fast, expected)
    assert validate_rows([raw], STREAMS, precise) == [expected]


valid_rows = st.fixed_dictionaries(
    {
        "data_stream_key": st.sampled_from(["usd", "jpy", "bhd"]),
        "date": st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}"),
        "amount": st.integers(-(10**8), 10**8).map(lambda n: f"{n // 1000}{n % 2 * '.00'}"),
    },
    optional={
        "description": st.text(st.characters(exclude_characters="\x00:", codec="utf-8")),
        "external_id": st.text(
            st.characters(exclude_characters="\x00:", codec="utf-8"), min_size=1, max_size=255
        ),
        "currency": st.none(),
    },
)


@given(valid_rows, st.booleans())
def test_ordinary_valid_rows_take_the_fast_path_with_the_same_record(
    row: dict[str, Any], amount_as_number: bool
) -> None:
    text = _text({**row, "amount": 0})
    amount = row["amount"] if amount_as_number else _text(row["amount"])
    raw = text.replace('"amount": 0', f'"amount": {amount}').encode()
    record = fast_record(raw, STREAMS)
    assert record is not None, raw
    assert record == precise(raw)


def test_exact_amounts_never_go_through_a_float() -> None:
    # 0.1 + 0.2 style literals and the largest exact amount stay exact.
    for literal, minor in [("0.30", 30), ("90071992547409.91", 2**53 - 1), ("-0.07", -7)]:
        raw = f'{{"data_stream_key": "usd", "date": "2024-01-01", "amount": {literal}}}'
        record = fast_record(raw.encode(), STREAMS)
        assert record is not None
        assert record.amount_minor == minor


def test_rows_it_cannot_prove_ordinary_are_left_to_the_precise_path() -> None:
    base = '"data_stream_key": "usd", "date": "2024-01-01"'
    for tail in [
        '"amount": 1, "amount": 2',  # a repeated key: the body is refused
        '"amount": 1e2',  # an exponent
        '"amount": "1.234"',  # too many decimals: the precise path words the error
        '"amount": 1, "metadata": {}',
        '"amount": 1, "currency": "XXX"',
        '"amount": 1, "description": "a\\u0000b"',
        '"amount": 1, "external_id": "\\u0000"',
        '"amount": 1, "extra": 1',
    ]:
        raw = f"{{{base}, {tail}}}".encode()
        assert fast_record(raw, STREAMS) is None, raw
    assert validate_rows([f'{{{base}, "amount": "1.234"}}'.encode()], STREAMS, precise) == [
        RowProblem(
            "too_many_decimals",
            "amount has more decimals than the currency allows (at most 2 decimals)",
            "/amount",
        )
    ]


def test_split_records_gives_each_rows_text() -> None:
    body = b'{"records": [{"a": 1}, {"b": [2, 3]}], "on_conflict": "skip"}'
    assert split_records(body) == [b'{"a": 1}', b'{"b": [2, 3]}']
    assert split_records(b'{"records": 1}') is None
    assert split_records(b"[") is None


odd: dict[str, st.SearchStrategy[str]] = {
    "date": st.sampled_from(["2024-02-30", "2024-1-01", "٢٠٢٤-01-01", "2024-01-01 ", "x"]).map(
        _text
    ),
    "data_stream_key": (odd_text | st.just("nope")).map(_text),
    "amount": number_literals
    | number_literals.map(_text)
    | st.sampled_from(['"+1"', '" 1"', '"1_000"', "true", "null", "-0", '"1.999"', "[1]"]),
    "currency": (odd_text | st.sampled_from(["usd", "XXX", "JPY", "BHD"])).map(_text),
    "description": (st.sampled_from(["é" * 1000, "é" * 1001, "a\x00"]) | odd_text).map(_text),
    "external_id": (st.sampled_from(["é" * 255, "é" * 256, "\x00b"]) | odd_text).map(_text),
    "metadata": json_values.map(_text) | deep,
}


@st.composite
def one_field_off(draw: st.DrawFn) -> bytes:
    """A valid row with one field replaced, added or repeated with something odd: the
    rows where a fast path is most tempted to accept what it should not."""
    row = draw(valid_rows)
    field = draw(st.sampled_from(sorted(odd)))
    members = [(k, _text(v)) for k, v in row.items()]
    replacement = (field, draw(odd[field]))
    if draw(st.booleans()):
        members = [m for m in members if m[0] != field] + [replacement]
    else:
        members.append(replacement)
    text = "{" + ", ".join(f"{_text(k)}: {v}" for k, v in members) + "}"
    return draw(
        st.sampled_from([text.encode("utf-8", "surrogatepass"), _ascii_escaped(text).encode()])
    )


@given(one_field_off())
def test_fast_path_and_precise_validator_agree_one_field_off(raw: bytes) -> None:
    expected = precise(raw)
    fast = fast_record(raw, STREAMS)
    assert fast is None or fast == expected, (raw, fast, expected)


def _ordinary(row: dict[str, Any]) -> bytes:
    return _text(row).encode()


@given(st.lists(valid_rows.map(_ordinary) | one_field_off() | rows_as_text(), max_size=6))
def test_the_whole_body_pass_agrees_row_by_row(raws: list[bytes]) -> None:
    body = b'{"records": [' + b", ".join(raws) + b'], "on_conflict": "skip"}'
    results = fast_body_records(body, STREAMS)
    if results is not None:
        assert len(results) == len(raws)
        for raw, fast in zip(raws, results, strict=True):
            assert fast is None or fast == precise(raw), (raw, fast)


@given(st.lists(valid_rows, min_size=1, max_size=20))
def test_a_body_of_ordinary_rows_takes_the_one_pass_path(rows: list[dict[str, Any]]) -> None:
    body = _text({"records": rows}).encode()
    assert fast_body_records(body, STREAMS) == [precise(_ordinary(r)) for r in rows]


def test_the_whole_body_pass_leaves_a_repeated_key_to_the_precise_path() -> None:
    row = '{"data_stream_key": "usd", "date": "2024-01-01", "amount": 1'
    assert fast_body_records(f'{{"records": [{row}}}]}}'.encode(), STREAMS) is not None
    for body in [
        f'{{"records": [{row}, "amount": 2}}]}}',
        f'{{"records": [{row}}}], "records": []}}',
        f'{{"records": [{row}}}], "other": 1}}',
    ]:
        assert fast_body_records(body.encode(), STREAMS) is None, body


@given(st.lists(valid_rows.map(_ordinary) | one_field_off() | rows_as_text(), max_size=6))
def test_every_record_is_the_whole_body_pass_or_nothing(raws: list[bytes]) -> None:
    """What the accept stages (every_record) is the body pass's records when it proves
    every row, and nothing (the precise path) when one row is left to validate_row."""
    body = b'{"records": [' + b", ".join(raws) + b"]}"
    decoded = decode_fast_body(body)
    results = fast_body_records(body, STREAMS)
    if decoded is None:
        assert results is None
        return
    assert results is not None
    expected = None if None in results else results
    assert every_record(decoded, STREAMS) == expected
    assert stream_keys(decoded) == {json.loads(raw)["data_stream_key"] for raw in raws}
