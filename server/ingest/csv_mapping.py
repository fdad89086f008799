"""CSV as users have it (SPEC §15): amounts, dates, column targets and the delimiter.

Pure functions over text, no I/O: the CSV reader calls them once per file (the header,
the delimiter) or once per row (`RowConverter`). Amounts are rewritten as plain decimal
text ("-1234.56") that validation then turns into exact minor units, so no float and no
rounding ever come in between, and a converted row means exactly what the same row sent
as JSON would.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, localcontext
from functools import lru_cache

from server.types import JSON, FileRejected, RowProblem

RECORD_TARGETS = ("date", "amount", "currency", "description", "external_id", "data_stream_key")
METADATA_PREFIX = "metadata."
DEBIT = "debit"
CREDIT = "credit"
PAIR_TARGETS = (DEBIT, CREDIT)
# The form's words for the delimiters, and the character each one is.
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "|": "|"}
DECIMAL_SEPARATORS = (".", ",")
# Separators between groups of three digits, besides the other of "." and ",": a space,
# a no-break space and a narrow no-break space (French, Nordic) and an apostrophe (Swiss).
_GROUP_MARKS = " '\u00a0\u202f"
# Text that is already a plain decimal (or something validation judges itself, like 1e3):
# under "." it goes to validation untouched, so a CSV accepts every amount JSON does.
PLAIN_AMOUNT_CHARS = "0123456789.-"


def _number_pattern(decimal: str) -> re.Pattern[str]:
    thousands = re.escape(("," if decimal == "." else ".") + _GROUP_MARKS)
    # Groups of exactly three after the first: "12,50" under "." is a mistyped decimal
    # comma, not 1250, and is refused rather than guessed.
    return re.compile(
        rf"(?P<whole>[0-9]{{1,3}}(?P<mark>[{thousands}])[0-9]{{3}}(?:(?P=mark)[0-9]{{3}})*"
        rf"|[0-9]*)(?:{re.escape(decimal)}(?P<fraction>[0-9]+))?"
    )


_NUMBERS = {decimal: _number_pattern(decimal) for decimal in DECIMAL_SEPARATORS}


def _strip_currency(text: str, leading: bool) -> tuple[str, bool]:
    """Text without one currency symbol (Unicode category Sc) at its start or end."""
    if not text:
        return text, False
    symbol = text[0] if leading else text[-1]
    if unicodedata.category(symbol) != "Sc":
        return text, False
    rest = text[1:] if leading else text[:-1]
    return rest.strip(), True


def read_amount(text: str, decimal: str) -> str | None:
    """A bank's amount as plain decimal text, or None when it is not one.

    Understood: thousands separators in groups of three (`1,234.56`, `1.234,56`,
    `1 234,56`, `1'234.56`), one currency symbol before or after the number (`$12`,
    `-€12`, `€-12`, `12,00 €`), a sign before it (`-12.00`, `+12`), a minus after it
    (`12.00-`, as SAP writes it) or parentheses around it (`(12.00)`, `($12.00)`).
    """
    rest = text.strip()
    negative = False
    if rest[:1] == "(" and rest[-1:] == ")":
        negative = True
        rest = rest[1:-1].strip()
    rest, symbol = _strip_currency(rest, leading=True)
    sign = rest[:1]
    if sign in ("-", "+"):
        if negative:
            return None  # "(-12)": two signs
        negative = sign == "-"
        rest = rest[1:].strip()
        if not symbol:
            rest, symbol = _strip_currency(rest, leading=True)
    if not symbol:
        rest, symbol = _strip_currency(rest, leading=False)
    if rest[-1:] == "-" and sign not in ("-", "+") and not negative:
        negative = True
        rest = rest[:-1].strip()
        if not symbol:
            rest, symbol = _strip_currency(rest, leading=False)
    found = _NUMBERS[decimal].fullmatch(rest)
    if found is None:
        return None
    whole = found["whole"]
    if found["mark"]:
        whole = whole.replace(found["mark"], "")
    fraction = found["fraction"]
    if not whole and fraction is None:
        return None  # no digits at all
    digits = whole.lstrip("0") or "0"
    body = f"{digits}.{fraction}" if fraction is not None else digits
    return f"-{body}" if negative else body


def is_plain_amount(text: str) -> bool:
    """Digits, dots and a leading minus only: nothing for read_amount to do under "."."""
    return not text.strip(PLAIN_AMOUNT_CHARS) and text[-1:] != "-"


def debit_credit_amount(debit: str | None, credit: str | None, decimal: str) -> str:
    """amount = |credit| − |debit|, exactly, as plain decimal text.

    Either may be None (an empty cell); the caller checks that one is not. Raises
    ValueError naming the cell that is not an amount.
    """
    plain: list[str] = []
    for name, cell in ((CREDIT, credit), (DEBIT, debit)):
        text = "0" if cell is None else read_amount(cell, decimal)
        if text is None:
            raise ValueError(name)
        plain.append(text.lstrip("-"))  # the magnitude counts; the column gives the sign
    credit_text, debit_text = plain
    # One side empty (nearly every row of such an export): no arithmetic needed.
    if debit is None:
        return credit_text
    if credit is None:
        return f"-{debit_text}"
    # Decimal of a string is exact; the precision holds every digit the difference can
    # have (the texts are plain digits), so the subtraction is exact too.
    with localcontext() as context:
        context.prec = len(credit_text) + len(debit_text) + 2
        difference = Decimal(credit_text) - Decimal(debit_text)
    return format(difference, "f")


# --- dates --------------------------------------------------------------------------

# Two dates whose day, month and year all differ, so a pattern that leaves one out (or
# reads a field twice) cannot give both back.
_PROBE_DATES = (datetime(2024, 11, 23, 13, 45, 56), datetime(1999, 3, 7, 8, 5, 9))


def date_format_problem(pattern: str) -> str | None:
    """Why `pattern` cannot read dates, or None: it must give a date back exactly."""
    for probe in _PROBE_DATES:
        try:
            written = probe.strftime(pattern)
            read = datetime.strptime(written, pattern)
        except (ValueError, re.error) as exc:  # "%d%d": strptime's own regex refuses it
            return f"{pattern!r} is not a usable strptime pattern ({exc})"
        if read.date() != probe.date():
            return (
                f"{pattern!r} does not read a whole date back: it needs a year, a month "
                "and a day (for example %d.%m.%Y or %m/%d/%Y)"
            )
    return None


@lru_cache(maxsize=8192)
def read_date(text: str, pattern: str) -> str | None:
    """`text` read with `pattern` as YYYY-MM-DD, or None. Cached: dates repeat in a file."""
    try:
        return datetime.strptime(text.strip(), pattern).date().isoformat()
    except (ValueError, re.error):
        return None


# --- the header ---------------------------------------------------------------------


def detect_delimiter(line: str) -> str:
    """The delimiter of a header line: the candidate found most often outside quotes.

    A tie goes to the earlier of `,` `;` tab `|`, and a line with none of them (one
    column) is read with `,`.
    """
    unquoted = "".join(line.split('"')[::2])
    counts = [(unquoted.count(char), -order, char) for order, char in enumerate(",;\t|")]
    count, _, char = max(counts)
    return char if count else ","


def default_target(name: str) -> str | None:
    """What a header cell means without a mapping: our column names (any case) and
    `metadata.<key>` (the key keeps its case, so the error export round-trips)."""
    lowered = name.lower()
    if lowered in RECORD_TARGETS:
        return lowered
    if lowered.startswith(METADATA_PREFIX):
        return METADATA_PREFIX + name[len(METADATA_PREFIX) :]
    return None


def column_targets(
    header: Sequence[str], line: int, columns: Mapping[str, str | None] | None
) -> list[str | None]:
    """The target of each header cell (None: ignored), or FileRejected.

    Mapped names are matched trimmed and ignoring case; a column the mapping does not
    name keeps its default meaning, and `null` ignores one. Rejected: a mapped column
    the header lacks (all of them are named), one the header has twice, and two
    columns giving the same target.
    """
    names = [cell.strip() for cell in header]
    mapping = {name.strip().casefold(): (name, target) for name, target in (columns or {}).items()}
    targets: list[str | None] = []
    matched: dict[str, int] = {}
    for index, name in enumerate(names):
        folded = name.casefold()
        if folded in mapping:
            if folded in matched:
                raise FileRejected(
                    f"line {line}: the header has the column {name!r} twice, and columns "
                    "maps it: name each mapped column once",
                    {"line": line, "column": name},
                )
            matched[folded] = index
            targets.append(mapping[folded][1])
        else:
            targets.append(default_target(name))
    missing = [
        given
        for folded, (given, target) in mapping.items()
        if folded not in matched and target is not None
    ]
    if missing:
        shown = ", ".join(repr(name) for name in missing)
        present = ", ".join(repr(name[:40]) for name in names[:12])
        raise FileRejected(
            f"line {line}: the header has no column {shown} named in columns "
            f"(its columns are {present}{', …' if len(names) > 12 else ''})",
            {"line": line, "missing_columns": missing},
        )
    _reject_shared_targets(names, targets, line)
    return targets


def _reject_shared_targets(names: list[str], targets: list[str | None], line: int) -> None:
    given_by: dict[str, str] = {}
    for name, target in zip(names, targets, strict=True):
        if target is None:
            continue
        if target in given_by:
            first = given_by[target]
            if first.casefold() == name.casefold():
                message = f"the column {name!r} appears more than once in the header"
            else:
                message = (
                    f"the columns {first!r} and {name!r} both give {target}; map one of them "
                    "to null in columns"
                )
            raise FileRejected(f"line {line}: {message}", {"line": line, "column": name})
        given_by[target] = name
    # debit and credit together give the amount: an amount column as well would be two.
    if "amount" in given_by and DEBIT in given_by:
        raise FileRejected(
            f"line {line}: the column {given_by['amount']!r} gives amount, and "
            f"{given_by[DEBIT]!r} and {given_by[CREDIT]!r} (debit and credit) give it too; "
            "map one of them to null in columns",
            {"line": line, "column": given_by["amount"]},
        )


# --- rows ---------------------------------------------------------------------------


class RowConverter:
    """Rewrites one row's fields in place to our formats; returns the row's problem.

    Made once per file. `fields` are the non-blank cells by target (debit and credit
    included, which it replaces by `amount`).
    """

    __slots__ = ("_date_format", "_decimal", "_names", "_pair", "only_amounts")

    def __init__(
        self, *, decimal: str, date_format: str | None, pair: bool, names: Mapping[str, str]
    ) -> None:
        self._decimal = decimal
        self._date_format = date_format
        self._pair = pair
        self._names = names  # target → the header's name for it, for messages
        # A row whose amount is plain needs nothing (see is_plain_amount): the reader
        # checks that inline, before calling, on its hot path.
        self.only_amounts = decimal == "." and date_format is None and not pair

    def __call__(self, fields: JSON) -> RowProblem | None:
        if self._pair:
            problem = self._debit_credit(fields)
            if problem is not None:
                return problem
        else:
            amount = fields.get("amount")
            if amount is not None:
                problem = self._amount(fields, amount)
                if problem is not None:
                    return problem
        if self._date_format is not None:
            raw = fields.get("date")
            if raw is not None:
                iso = read_date(raw, self._date_format)
                if iso is None:
                    return RowProblem(
                        "invalid_date",
                        f"{self._label('date')} {raw[:40]!r} is not a date in "
                        f"the format {self._date_format!r}",
                        "/date",
                    )
                fields["date"] = iso
        return None

    def settle(self, fields: JSON) -> RowProblem | None:
        """The row's problem once converted, skipping the call when only a plain amount
        could need work and it is plain (the reader's hot path, and lean_csv's)."""
        if self.only_amounts:
            amount = fields.get("amount")
            if not (
                isinstance(amount, str) and (amount.strip(PLAIN_AMOUNT_CHARS) or amount[-1] == "-")
            ):
                return None
        return self(fields)

    def _amount(self, fields: JSON, amount: str) -> RowProblem | None:
        if self._decimal == "." and is_plain_amount(amount):
            return None
        plain = read_amount(amount, self._decimal)
        if plain is not None:
            fields["amount"] = plain
        elif self._decimal == ",":
            return self._not_an_amount("amount", amount)
        # Under "." anything else goes to validation as it is (1e3 and +5 are amounts
        # there, and its message for the rest is the JSON API's).
        return None

    def _debit_credit(self, fields: JSON) -> RowProblem | None:
        debit = fields.pop(DEBIT, None)
        credit = fields.pop(CREDIT, None)
        if debit is None and credit is None:
            return RowProblem(
                "required",
                f"the row has no amount: {self._label(DEBIT)} and {self._label(CREDIT)} "
                "are both empty",
                "/amount",
            )
        try:
            fields["amount"] = debit_credit_amount(debit, credit, self._decimal)
        except ValueError as exc:
            target = str(exc)
            return self._not_an_amount(target, debit if target == DEBIT else credit)
        return None

    def _label(self, target: str) -> str:
        """The header's name for a target, quoted ('Betrag'), or the target (amount)."""
        name = self._names.get(target)
        return repr(name) if name is not None else target

    def _not_an_amount(self, target: str, cell: str | None) -> RowProblem:
        shown = (cell or "")[:40]
        separator = "a decimal comma" if self._decimal == "," else "a decimal point"
        return RowProblem(
            "invalid_amount",
            f"{self._label(target)} {shown!r} is not an amount written with "
            f"{separator} (decimal_separator {self._decimal!r})",
            "/amount",
        )
