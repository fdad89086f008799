"""Exact money: amounts in, integer minor units stored, exact decimals out.

No float arithmetic anywhere. JSON numbers reach us as `int`, as `Decimal` (a body that
may hold a number a double cannot carry exactly is parsed with `parse_float=Decimal`), or
as a `float` only when its shortest repr() is the literal the client wrote (the orjson
fast path of api.common.read_json_document): that repr() is read as a decimal. Strings are
parsed as decimals, and the conversion to minor units is integer arithmetic on digits.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import cast

from server.constants import MAX_ABS_MINOR_UNITS
from server.currencies import CURRENCY_EXPONENTS

# ASCII digits only: `\d` would also admit other scripts' digits, which Decimal accepts.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class AmountError(ValueError):
    """An amount that cannot be stored exactly; `code` is the per-row error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def currency_exponent(code: str) -> int | None:
    """Decimal places of an ISO 4217 currency, or None when the code is unknown."""
    return CURRENCY_EXPONENTS.get(code)


# Padding that turns a fraction into minor units: index = decimals still missing.
_ZEROS = tuple("0" * n for n in range(10))


def to_minor_units(value: object, exponent: int) -> int:
    """Convert a major-unit amount to integer minor units, exactly, or raise AmountError."""
    if value.__class__ is float:
        # Only floats that hold their JSON literal exactly reach here (see
        # api.common.read_json_document): the shortest round-trip repr is that literal.
        value = repr(value)
    if isinstance(value, str) and value.isascii():
        # The common case, "-1234.56", with str methods and one int() alone: this is the
        # single most expensive step of validating a row. ASCII only, because
        # str.isdigit() and int() also accept other scripts' digits.
        whole, dot, fraction = value.partition(".")
        digits = whole[1:] if whole[:1] == "-" else whole
        if digits.isdigit() and len(digits) <= 16 and (fraction.isdigit() or not dot):
            if len(fraction) > exponent:
                fraction = fraction.rstrip("0")
                if len(fraction) > exponent:
                    raise _too_many_decimals(exponent)
            # "-12" + "5" + "0" → -1250: the sign stays in `whole`, int() reads it.
            minor = int(whole + fraction + _ZEROS[exponent - len(fraction)])
            if -MAX_ABS_MINOR_UNITS <= minor <= MAX_ABS_MINOR_UNITS:
                return minor
            raise AmountError("amount_out_of_range", "amount is too large")
    if isinstance(value, bool):
        raise AmountError("invalid_amount", "amount must be a number or a decimal string")
    if isinstance(value, int):
        scaled: int | None = value * 10**exponent if abs(value) <= MAX_ABS_MINOR_UNITS else None
        if scaled is None or abs(scaled) > MAX_ABS_MINOR_UNITS:
            raise AmountError("amount_out_of_range", "amount is too large")
        return scaled
    if isinstance(value, str):
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
    sign, digit_tuple, exp = value.as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digit_tuple)).rstrip("0")
    exp += len(digit_tuple) - len(text)
    shift = exp + exponent
    if shift < 0:
        raise _too_many_decimals(exponent)
    minor = int(text) * cast(int, 10**shift)  # shift >= 0: an int, never a float
    if minor > MAX_ABS_MINOR_UNITS:
        raise AmountError("amount_out_of_range", "amount is too large")
    return -minor if sign else minor


def _too_many_decimals(exponent: int) -> AmountError:
    places = "no decimals" if exponent == 0 else f"at most {exponent} decimals"
    return AmountError(
        "too_many_decimals", f"amount has more decimals than the currency allows ({places})"
    )


def canonical_amount_text(text: str) -> str:
    """'12.30' → '12.3', '100.0' → '100'; any other text is returned unchanged.

    Amounts are staged as text; writing each value one way makes an identical retry
    recognisable however the number was spelled (see the Idempotency-Key notes).
    """
    whole, dot, fraction = text.partition(".")
    if dot and fraction.isascii() and fraction.isdigit():
        fraction = fraction.rstrip("0")
        return f"{whole}.{fraction}" if fraction else whole
    return text


def format_major_units(minor: int, exponent: int) -> str:
    """Render minor units as the shortest exact decimal: 123450 (2) → '1234.5', 50000 → '500'."""
    if exponent == 0:
        return str(minor)
    whole, frac = divmod(abs(minor), 10**exponent)
    sign = "-" if minor < 0 else ""
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{exponent}d}".rstrip("0")
