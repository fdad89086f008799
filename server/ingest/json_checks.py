"""What a parsed JSON body must also satisfy before anything of it is stored (SPEC §11).

JSON parsers accept more than the service can keep: lone surrogates (`"\\ud800"`, which
is not text and which neither orjson nor SQLite will write), integers beyond 64 bits
and numbers beyond a double's range (the staged rows are read back with orjson),
values nested without limit, and objects that name a key twice (the parser keeps the
last, so a repeated `amount` would be a silent guess). Each is a request-level 422
here, with a JSON Pointer, so it never surfaces later as a 500.

Pure code, no I/O and no HTTP: the handlers turn `BodyIssue`s into problems.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from server.constants import MAX_VALUE_DEPTH

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DOUBLE = Decimal(sys.float_info.max)
# Staged rows are written with orjson: integers within 64 bits (signed below zero,
# unsigned above).
_STORABLE_INTS = range(-(2**63), 2**64)
# The bytes the duplicate-key proof counts in a raw body (see proves_no_duplicate_keys).
STRUCTURAL_BYTES = b":{["


@dataclass(frozen=True, slots=True)
class BodyIssue:
    """One thing in a request body that refuses the whole request (422)."""

    pointer: str
    code: str
    message: str


def fits_storage(value: int | Decimal) -> bool:
    """Whether a number can be stored as sent (orjson holds integers within 64 bits
    and numbers within a double's range)."""
    if isinstance(value, Decimal):
        return value.is_finite() and abs(value) <= _MAX_DOUBLE
    return value in _STORABLE_INTS


def has_lone_surrogate(text: str) -> bool:
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None


def echoable(text: str) -> str:
    """`text` safe to put in a JSON answer: a lone surrogate becomes its `\\udXXX`
    escape as plain characters, so the client still sees what it sent."""
    if not has_lone_surrogate(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def replace_lone_surrogates(text: str) -> str:
    """For text shown, not checked (a file name): each lone surrogate becomes U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def pointer_token(name: str) -> str:
    """JSON Pointer escaping of one reference token (RFC 6901), echoable."""
    return echoable(name).replace("~", "~0").replace("/", "~1")


def _unicode_issue(pointer: str, what: str) -> BodyIssue:
    return BodyIssue(
        pointer,
        "invalid_unicode",
        f"{what} holds a lone surrogate (U+D800 to U+DFFF), which is not a character",
    )


def value_issues(value: Any, pointer: str) -> Iterator[BodyIssue]:
    """Every issue inside one field's value: nesting deeper than MAX_VALUE_DEPTH
    (the value itself is level 1), lone surrogates in keys and strings, numbers that
    cannot be stored. Iterative, so no depth of input can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, pointer, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_VALUE_DEPTH:
                yield BodyIssue(
                    where, "too_deep", f"a value may nest at most {MAX_VALUE_DEPTH} levels"
                )
                continue
            if isinstance(item, dict):
                children = list(item.items())
                for key, _ in children:
                    if has_lone_surrogate(key):
                        yield _unicode_issue(f"{where}/{pointer_token(key)}", "a key")
                entries = [(v, f"{where}/{pointer_token(k)}") for k, v in children]
            else:
                entries = [(v, f"{where}/{i}") for i, v in enumerate(item)]
            stack.extend((v, p, depth + 1) for v, p in reversed(entries))
        elif isinstance(item, str):
            if has_lone_surrogate(item):
                yield _unicode_issue(where, "the text")
        elif (
            isinstance(item, int | Decimal)
            and not isinstance(item, bool)
            and not fits_storage(item)
        ):
            yield BodyIssue(where, "out_of_range", "a number must fit a 64-bit integer or a double")


@dataclass(slots=True)
class RecordScan:
    issues: list[BodyIssue]
    # Object members plus containers inside the records' field values (0 when no
    # field nests), for the duplicate-key proof.
    nested_count: int


def scan_records(records: list[Any], limit: int = 50) -> RecordScan:
    """The issues of a bulk body's records, field by field (at most `limit`), and how
    much nests inside them. Pointers are only built for a field found in error."""
    found: list[BodyIssue] = []
    nested_count = 0
    for row, record in enumerate(records):
        for key, value in record.items():
            kind = type(value)
            # Most fields are ASCII text or plain numbers: decided without a call.
            if key.isascii() and (
                (kind is str and value.isascii()) or kind is float or value is None
            ):
                continue
            count = _count_storable(value, 1)
            if count >= 0 and (key.isascii() or _LONE_SURROGATE.search(key) is None):
                nested_count += count
                continue
            where = f"/records/{row}/{pointer_token(key)}"
            if has_lone_surrogate(key):
                found.append(_unicode_issue(where, "a field name"))
            found.extend(value_issues(value, where))
            if len(found) >= limit:
                return RecordScan(found[:limit], nested_count)
    return RecordScan(found, nested_count)


def record_issues(records: list[Any]) -> list[BodyIssue]:
    return scan_records(records).issues


def _count_storable(value: Any, depth: int) -> int:
    """Members plus containers in `value` (at level `depth`), or -1 when value_issues
    would find something. One fast pass, loops rather than generators (it runs over
    every nested value of a body); recursion stops past MAX_VALUE_DEPTH."""
    kind = type(value)
    if kind is str:
        return 0 if value.isascii() or _LONE_SURROGATE.search(value) is None else -1
    if kind is dict:
        if depth > MAX_VALUE_DEPTH:
            return -1
        total = 1 + len(value)
        for key, item in value.items():
            if not key.isascii() and _LONE_SURROGATE.search(key) is not None:
                return -1
            count = _count_storable(item, depth + 1)
            if count < 0:
                return -1
            total += count
        return total
    if kind is list:
        if depth > MAX_VALUE_DEPTH:
            return -1
        total = 1
        for item in value:
            count = _count_storable(item, depth + 1)
            if count < 0:
                return -1
            total += count
        return total
    if (kind is int or kind is Decimal) and not fits_storage(value):
        return -1
    return 0  # float, bool, None, or a number that fits


# --- duplicate keys --------------------------------------------------------------------


def shallow_count(body: dict[str, Any], records: list[Any]) -> int:
    """Members plus containers of a bulk body, not counting inside record fields."""
    return len(body) + sum(map(len, records)) + 2 + len(records)


def proves_no_duplicate_keys(structural: int, counted: int) -> bool:
    """Whether counting alone proves the body names no key twice.

    `structural` is how many of the bytes `: { [` the raw body holds; `counted` the
    object members plus containers the parser returned. Each member needs a `:` and
    each container a `{` or `[`, and a string can only add more, so structural ≥
    members + containers in the text ≥ those parsed. Equality means nothing else is in
    the text: no string holding those bytes, and no member the parser dropped as a
    duplicate. That costs one count over the body (the `translate` that finds long
    numbers already made it) instead of a second parse; a body it cannot clear (a time
    `12:30` in a description) is left to duplicate_key_issue.
    """
    return structural == counted


class _Duplicated(dict[str, Any]):
    """An object that named `key` more than once (marked while parsing)."""

    key: str


def _first_repeated(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no repeated key")


def duplicate_key_issue(raw: bytes) -> BodyIssue | None:
    """The first object member named twice in the raw body, or None. A second parse
    (json with a pairs hook, numbers left as text): only for bodies the cheap proofs
    could not clear, or small ones. The body must already have parsed once."""
    marked: list[_Duplicated] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        duplicated = _Duplicated(result)
        duplicated.key = _first_repeated(pairs)
        marked.append(duplicated)
        return duplicated

    try:
        parsed = json.loads(raw, object_pairs_hook=pairs_hook, parse_float=str, parse_int=str)
    except RecursionError:
        return BodyIssue("", "too_deep", "the body nests deeper than this server parses")
    if not marked:
        return None
    # Only now, with a duplicate known to exist, build pointers to find where it is.
    stack: list[tuple[Any, str]] = [(parsed, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _Duplicated):
            return BodyIssue(
                f"{where}/{pointer_token(item.key)}",
                "duplicate_key",
                f"the key {echoable(item.key)!r} appears more than once in this object",
            )
        if isinstance(item, dict):
            stack.extend((v, f"{where}/{pointer_token(k)}") for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, f"{where}/{i}") for i, v in reversed(list(enumerate(item))))
    raise AssertionError("a marked object was not found")
