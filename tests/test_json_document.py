"""server/ingest/json_document.py: a large body is parsed without orjson's document
tree, to the same values (constants.ORJSON_MAX_TEXT_BYTES)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from server.constants import ORJSON_MAX_TEXT_BYTES
from server.ingest.json_document import parse_document
from tests.test_memory import max_size_json_body, traced_peak

# Numbers the scan lets orjson parse: no exponent, under 16 number characters.
_PLAIN_NUMBERS = st.integers(-(10**14) + 1, 10**14 - 1) | st.decimals(
    min_value=-(10**9), max_value=10**9, places=4, allow_nan=False, allow_infinity=False
).map(float)
# Strings without digits, e or what orjson writes as \u00XX: the number scan of
# parse_document matches inside strings. No lone surrogates: orjson cannot write them.
_TEXT = st.text(st.characters(exclude_characters="0123456789eE", exclude_categories=["Cc", "Cs"]))
_SCALARS = st.none() | st.booleans() | _PLAIN_NUMBERS | _TEXT
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


def test_a_max_size_body_parses_within_a_fraction_of_orjsons_peak() -> None:
    """orjson's tree took this 20 MB body to a 383 MB peak for 143 MB of objects."""
    raw = max_size_json_body(0)
    document, peak = traced_peak(lambda: parse_document(raw))
    assert len(document.value["records"]) == 1000
    assert not document.may_hold_decimals
    assert peak < 5 * len(raw), f"parsing {len(raw) / 1e6:.0f} MB peaked at {peak / 1e6:.0f} MB"


@settings(max_examples=40, deadline=None)
@given(values=st.lists(_VALUES, min_size=1, max_size=5))
def test_a_large_body_parses_to_the_values_orjson_gives(values: list[Any]) -> None:
    padding = "p" * (ORJSON_MAX_TEXT_BYTES + 1)
    raw = orjson.dumps({"records": [{"metadata": value} for value in values], "pad": padding})
    document = parse_document(raw)
    assert not document.may_hold_decimals
    # Compared as JSON text: 1 and 1.0, or 0.0 and -0.0, are equal in Python.
    assert orjson.dumps(document.value) == orjson.dumps(orjson.loads(raw))


def test_a_large_body_with_a_lone_surrogate_parses_to_the_string_it_holds() -> None:
    """orjson refuses it; the checks after parsing refuse the body (422 invalid_unicode,
    tests/test_input_bounds.py test_a_large_body_with_bad_input_is_a_4xx_problem)."""
    raw = (
        b'{"records": [{"description": "\\ud800"}], "pad": "' + b"p" * ORJSON_MAX_TEXT_BYTES + b'"}'
    )
    document = parse_document(raw)
    assert document.value["records"] == [{"description": "\ud800"}]
