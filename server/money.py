"""Exact money: amounts in, integer minor units stored, exact decimals out.

No float arithmetic anywhere: JSON numbers reach us as `Decimal` (the request body is
parsed with `parse_float=Decimal`) or `int`, strings are parsed as decimals, and the
conversion to minor units is integer arithmetic on the decimal's digits.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from server.constants import MAX_ABS_MINOR_UNITS
from server.currencies import CURRENCY_EXPONENTS

_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# The common case, "-1234.56": handled with integer arithmetic alone (no Decimal), which
# is most of the per-row cost of validation. Up to 16 integer digits (the magnitude
# bound is checked after), any number of decimals (checked against the exponent).
_PLAIN_DECIMAL = re.compile(r"(-?)(\d{1,16})(?:\.(\d+))?")


class AmountError(ValueError):
    """An amount that cannot be stored exactly; `code` is the per-row error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def currency_exponent(code: str) -> int | None:
    """Decimal places of an ISO 4217 currency, or None when the code is unknown."""
    return CURRENCY_EXPONENTS.get(code)


def to_minor_units(value: object, exponent: int) -> int:
    """Convert a major-unit amount to integer minor units, exactly, or raise AmountError."""
    if isinstance(value, bool):
        raise AmountError("invalid_amount", "amount must be a number or a decimal string")
    if isinstance(value, int):
        minor = value * 10**exponent if abs(value) <= MAX_ABS_MINOR_UNITS else None
        if minor is None or abs(minor) > MAX_ABS_MINOR_UNITS:
            raise AmountError("amount_out_of_range", "amount is too large")
        return minor
    if isinstance(value, float):
        # Not produced by our own parsing; accepted as the shortest decimal that
        # round-trips, which is what the sender wrote for any sane amount.
        value = repr(value)
    if isinstance(value, str):
        plain = _PLAIN_DECIMAL.fullmatch(value)
        if plain is not None:
            return _plain_to_minor(plain, exponent)
        if not _DECIMAL_TEXT.fullmatch(value):
            raise AmountError("invalid_amount", "amount must be a decimal number such as 12.34")
        try:
            value = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid text
            raise AmountError("invalid_amount", "amount is not a decimal number") from None
    if not isinstance(value, Decimal):
        raise AmountError("invalid_amount", "amount must be a number or a decimal string")
    if not value.is_finite():
        raise AmountError("invalid_amount", "amount must be a finite number")
    if value.is_zero():
        return 0
    # adjusted() is the power of ten of the leading digit: bound it before any
    # arithmetic so that 1e400 or 1e-999999999 cost nothing.
    if value.adjusted() > 16:
        raise AmountError("amount_out_of_range", "amount is too large")
    sign, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits)).rstrip("0")
    exp += len(digits) - len(text)
    shift = exp + exponent
    if shift < 0:
        places = "no decimals" if exponent == 0 else f"at most {exponent} decimals"
        raise AmountError(
            "too_many_decimals", f"amount has more decimals than the currency allows ({places})"
        )
    minor = int(text) * 10**shift
    if minor > MAX_ABS_MINOR_UNITS:
        raise AmountError("amount_out_of_range", "amount is too large")
    return -minor if sign else minor


def _plain_to_minor(match: re.Match[str], exponent: int) -> int:
    sign, whole, fraction = match.groups()
    fraction = (fraction or "").rstrip("0")
    if len(fraction) > exponent:
        places = "no decimals" if exponent == 0 else f"at most {exponent} decimals"
        raise AmountError(
            "too_many_decimals", f"amount has more decimals than the currency allows ({places})"
        )
    minor = int(whole) * 10**exponent + (int(fraction.ljust(exponent, "0")) if fraction else 0)
    if minor > MAX_ABS_MINOR_UNITS:
        raise AmountError("amount_out_of_range", "amount is too large")
    return -minor if sign else minor


def format_major_units(minor: int, exponent: int) -> str:
    """Render minor units as the shortest exact decimal: 123450 (2) → '1234.5', 50000 → '500'."""
    if exponent == 0:
        return str(minor)
    whole, frac = divmod(abs(minor), 10**exponent)
    sign = "-" if minor < 0 else ""
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{exponent}d}".rstrip("0")
