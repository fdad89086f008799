"""The CSV upload options of SPEC §15: read from the form's text, checked, and stored.

No HTTP here: `parse_csv_options` raises InvalidCsvOptions with one OptionProblem per
mistake (a JSON Pointer into the form, a code, a message), and the upload handler
turns them into its 422. The options are stored on the request as the JSON of
`CsvOptions.to_json()`, which is also what the payload shows as `csv_options`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from server.constants import MAX_CSV_COLUMNS, MAX_DATE_FORMAT_CHARS
from server.ingest.csv_mapping import (
    CREDIT,
    DEBIT,
    DECIMAL_SEPARATORS,
    DELIMITERS,
    METADATA_PREFIX,
    RECORD_TARGETS,
    date_format_problem,
)
from server.ingest.json_checks import pointer_token
from server.types import JSON

FIELDS = ("columns", "date_format", "decimal_separator", "delimiter")
TARGETS_TEXT = ", ".join(RECORD_TARGETS) + f", {METADATA_PREFIX}<name>, {DEBIT}, {CREDIT} or null"


@dataclass(frozen=True, slots=True)
class CsvOptions:
    columns: Mapping[str, str | None] | None = None  # header name → target; None: no mapping
    date_format: str | None = None  # a strptime pattern; None: ISO YYYY-MM-DD, strictly
    decimal_separator: str = "."
    delimiter: str | None = None  # a DELIMITERS word; None: detected from the header line

    def to_json(self) -> JSON:
        return {
            "columns": dict(self.columns) if self.columns is not None else None,
            "date_format": self.date_format,
            "decimal_separator": self.decimal_separator,
            "delimiter": self.delimiter,
        }

    @staticmethod
    def from_stored(text: str | None) -> CsvOptions:
        """The options stored on a request (NULL: made before they existed, the defaults)."""
        if not text:
            return DEFAULT_CSV_OPTIONS
        stored = orjson.loads(text)
        return CsvOptions(
            columns=stored["columns"],
            date_format=stored["date_format"],
            decimal_separator=stored["decimal_separator"],
            delimiter=stored["delimiter"],
        )


DEFAULT_CSV_OPTIONS = CsvOptions()


@dataclass(frozen=True, slots=True)
class OptionProblem:
    pointer: str
    code: str
    message: str


class InvalidCsvOptions(ValueError):
    def __init__(self, problems: list[OptionProblem]) -> None:
        super().__init__("; ".join(problem.message for problem in problems))
        self.problems = problems


def parse_csv_options(form: Mapping[str, str]) -> CsvOptions:
    """The options from the form's text fields (absent ones take their defaults)."""
    problems: list[OptionProblem] = []
    columns = _columns(form["columns"], problems) if "columns" in form else None
    date_format = form.get("date_format")
    if date_format is not None:
        why = (
            f"at most {MAX_DATE_FORMAT_CHARS} characters"
            if len(date_format) > MAX_DATE_FORMAT_CHARS
            else date_format_problem(date_format)
        )
        if why is not None:
            problems.append(OptionProblem("/date_format", "invalid_date_format", why))
    decimal = form.get("decimal_separator", ".")
    if decimal not in DECIMAL_SEPARATORS:
        problems.append(
            OptionProblem(
                "/decimal_separator", "invalid_choice", 'decimal_separator must be "." or ","'
            )
        )
    delimiter = form.get("delimiter")
    if delimiter is not None and delimiter not in DELIMITERS:
        problems.append(
            OptionProblem(
                "/delimiter",
                "invalid_choice",
                'delimiter must be ",", ";", "tab" or "|" (leave it out to detect it)',
            )
        )
    if problems:
        raise InvalidCsvOptions(problems)
    return CsvOptions(columns, date_format, decimal, delimiter)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(ValueError):
    pass


def _columns(text: str, problems: list[OptionProblem]) -> dict[str, str | None] | None:
    try:
        # json, not orjson: a key given twice must be refused, not silently the last.
        parsed = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        problems.append(
            OptionProblem("/columns", "duplicate_column", f"columns names {exc.args[0]!r} twice")
        )
        return None
    except (ValueError, RecursionError):
        problems.append(
            OptionProblem(
                "/columns",
                "invalid_json",
                'columns must be a JSON object such as {"Posting Date": "date"}',
            )
        )
        return None
    if not isinstance(parsed, dict):
        problems.append(
            OptionProblem(
                "/columns",
                "invalid_type",
                'columns must be a JSON object such as {"Posting Date": "date"}',
            )
        )
        return None
    if len(parsed) > MAX_CSV_COLUMNS:
        problems.append(
            OptionProblem("/columns", "too_many", f"columns maps at most {MAX_CSV_COLUMNS} columns")
        )
        return None
    columns: dict[str, str | None] = {}
    by_target: dict[str, str] = {}
    folded_names: dict[str, str] = {}
    for name, target in parsed.items():
        pointer = f"/columns/{pointer_token(name)}"
        folded = name.strip().casefold()
        if not folded:
            problems.append(OptionProblem(pointer, "invalid", "a column name must not be empty"))
            continue
        if folded in folded_names:
            problems.append(
                OptionProblem(
                    pointer,
                    "duplicate_column",
                    f"{folded_names[folded]!r} and {name!r} name the same column "
                    "(names are matched trimmed and ignoring case)",
                )
            )
            continue
        folded_names[folded] = name
        if target is not None and not _is_target(target):
            shown = repr(target) if isinstance(target, str) else json.dumps(target)[:40]
            problems.append(
                OptionProblem(
                    pointer,
                    "unknown_target",
                    f"{shown} is not a target for column {name!r}; the targets are {TARGETS_TEXT}",
                )
            )
            continue
        if target is not None:
            if target in by_target:
                problems.append(
                    OptionProblem(
                        pointer,
                        "duplicate_target",
                        f"columns {by_target[target]!r} and {name!r} both map to {target}",
                    )
                )
                continue
            by_target[target] = name
        columns[name] = target
    _check_amount_targets(by_target, problems)
    return columns


def _is_target(target: object) -> bool:
    if not isinstance(target, str):
        return False
    if target in RECORD_TARGETS or target in (DEBIT, CREDIT):
        return True
    return target.startswith(METADATA_PREFIX) and len(target) > len(METADATA_PREFIX)


def _check_amount_targets(by_target: dict[str, str], problems: list[OptionProblem]) -> None:
    has_debit, has_credit = DEBIT in by_target, CREDIT in by_target
    if has_debit != has_credit:
        given, other = (DEBIT, CREDIT) if has_debit else (CREDIT, DEBIT)
        problems.append(
            OptionProblem(
                f"/columns/{pointer_token(by_target[given])}",
                "incomplete_pair",
                f"{given} needs a {other} column too (amount = credit − debit); a single "
                "signed amount column maps to amount",
            )
        )
    if (has_debit or has_credit) and "amount" in by_target:
        problems.append(
            OptionProblem(
                f"/columns/{pointer_token(by_target['amount'])}",
                "conflicting_targets",
                "map either amount or the debit and credit pair, not both",
            )
        )
