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
# Staged rows are written and read back with orjson: integers within 64 bits (signed
# below zero, unsigned above).
_STORABLE_INTS = range(-(2**63), 2**64)
# The bytes a bulk body's cheap duplicate-key proof counts (see `needs_full_scan`).
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


def record_issues(records: list[Any], limit: int = 50) -> list[BodyIssue]:
    """The issues of a bulk body's records, field by field, at most `limit`."""
    found: list[BodyIssue] = []
    for row, record in enumerate(records):
        for key, value in record.items():
            where = f"/records/{row}/{pointer_token(key)}"
            if has_lone_surrogate(key):
                found.append(_unicode_issue(where, "a field name"))
            found.extend(value_issues(value, where))
            if len(found) >= limit:
                return found[:limit]
    return found


# --- duplicate keys --------------------------------------------------------------------


def needs_full_scan(structural: int, body: dict[str, Any], records: list[Any]) -> bool:
    """False when counting alone proves the body has no nested value and no duplicate key.

    `structural` is how many of the bytes `: { [` the raw body holds. Each object
    member needs a `:` and each container a `{` or `[`, and a string can only add more,
    so structural ≥ keys + containers in the text ≥ keys + containers parsed. With no
    value nested inside a record, the parsed body has exactly the members of the body
    and of each record and 2 + len(records) containers; equality then means nothing
    else is in the text: no nested value, no string holding those bytes, and no key
    the parser dropped as a duplicate. That costs one count over the body (the
    `translate` that finds long numbers already made it) instead of a second parse.
    """
    expected = len(body) + sum(map(len, records)) + 2 + len(records)
    return structural != expected


@dataclass(slots=True)
class _Tally:
    keys: int = 0
    containers: int = 0
    structural_in_strings: int = 0


def _tally(value: Any, tally: _Tally) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            tally.containers += 1
            tally.keys += len(item)
            for key, child in item.items():
                tally.structural_in_strings += _structural_in(key)
                stack.append(child)
        elif isinstance(item, list):
            tally.containers += 1
            stack.extend(item)
        elif isinstance(item, str):
            tally.structural_in_strings += _structural_in(item)


def _structural_in(text: str) -> int:
    return text.count(":") + text.count("{") + text.count("[")


def may_have_duplicate_keys(raw: bytes, structural: int, body: Any) -> bool:
    """The second, exact-unless-escaped proof (a walk of the parsed body).

    Subtracting what the parsed strings hold leaves keys + containers of the text, an
    upper bound again; equality with the parsed count proves no key was dropped. A
    `\\u` escape can spell `:` inside a string without the byte, so a body with any
    escape is not proven here (the caller parses it once more, exactly). Only call
    with a body whose depth was checked: the walk keeps every container on its stack.
    """
    if b"\\u" in raw:
        return True
    tally = _Tally()
    _tally(body, tally)
    return structural - tally.structural_in_strings != tally.keys + tally.containers


class _Duplicated(dict[str, Any]):
    """An object that named `key` more than once (marked while parsing)."""

    key: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    marked = _Duplicated(result)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


def duplicate_key_issue(raw: bytes) -> BodyIssue | None:
    """The first object member named twice in the raw body, or None. A second parse
    (json with a pairs hook, numbers left as text): only for bodies the cheap proofs
    could not clear, or small ones. The body must already have parsed once."""
    try:
        parsed = json.loads(raw, object_pairs_hook=_pairs, parse_float=str, parse_int=str)
    except RecursionError:
        return BodyIssue("", "too_deep", "the body nests deeper than this server parses")
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
    return None
