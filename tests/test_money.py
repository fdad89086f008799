"""server/money.py: the fast string path agrees with exact Decimal arithmetic."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.constants import MAX_ABS_MINOR_UNITS
from server.money import AmountError, format_major_units, to_minor_units


def reference(text: str, exponent: int) -> set[int | str]:
    """What the amount may become, computed with Decimal only (slow, obviously right).

    An amount both too precise and too large may be reported as either.
    """
    minor = Decimal(text).scaleb(exponent)
    problems: set[int | str] = set()
    if minor != minor.to_integral_value():
        problems.add("too_many_decimals")
    if abs(minor) > MAX_ABS_MINOR_UNITS:
        problems.add("amount_out_of_range")
    return problems or {int(minor)}


def outcome(text: str, exponent: int) -> int | str:
    try:
        return to_minor_units(text, exponent)
    except AmountError as exc:
        return exc.code


amount_texts = st.builds(
    lambda sign, whole, dot, fraction: f"{sign}{whole}{dot}{fraction}",
    st.sampled_from(["", "-", "+"]),
    st.text("0123456789", min_size=1, max_size=18),
    st.sampled_from(["", "."]),
    st.text("0123456789", max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(amount_texts, st.sampled_from([0, 2, 3]))
def test_decimal_strings_match_exact_arithmetic(text: str, exponent: int) -> None:
    assert outcome(text, exponent) in reference(text, exponent)


@pytest.mark.parametrize(
    ("value", "exponent", "expected"),
    [
        ("12.34", 2, 1234),
        ("-0.50", 2, -50),
        ("12.", 2, 1200),
        (".5", 2, 50),
        ("1e2", 2, 10000),
        ("1500.0", 0, 1500),
        (7, 3, 7000),
        ("١٢", 2, "invalid_amount"),  # Arabic-Indic digits: int() would take them
        ("1 2", 2, "invalid_amount"),
        ("-", 2, "invalid_amount"),
        ("12.3.4", 2, "invalid_amount"),
        ("1.005", 2, "too_many_decimals"),
        ("90071992547409.92", 2, "amount_out_of_range"),
        (True, 2, "invalid_amount"),
    ],
)
def test_edge_cases(value: object, exponent: int, expected: int | str) -> None:
    if isinstance(expected, int):
        assert to_minor_units(value, exponent) == expected
    else:
        with pytest.raises(AmountError) as raised:
            to_minor_units(value, exponent)
        assert raised.value.code == expected


@given(st.integers(-MAX_ABS_MINOR_UNITS, MAX_ABS_MINOR_UNITS), st.sampled_from([0, 2, 3]))
def test_formatting_round_trips(minor: int, exponent: int) -> None:
    assert to_minor_units(format_major_units(minor, exponent), exponent) == minor
