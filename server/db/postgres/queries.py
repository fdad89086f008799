"""Loads the PostgreSQL `queries.sql`: name → statement and the names of its `$n` parameters.

The same file layout as server/db/sqlite/queries.sql, plus a `-- params:` line per statement
naming `$1, $2, …` in order, so the adapter binds by the SQLite query's parameter names
(`bind`) instead of counting positions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_PARAMS = re.compile(r"^--\s*params:(.*)$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\$(\d+)")
# The one `VALUES ($1, …, $n)` group of a single-row INSERT.
_VALUES_GROUP = re.compile(r"VALUES\s*(\((?:\$\d+,\s*)*\$\d+\))")


@dataclass(frozen=True)
class PgQuery:
    name: str
    sql: str
    params: tuple[str, ...]  # the name of $1, $2, …


def _parse(name: str, body: str) -> PgQuery:
    declared = _PARAMS.findall(body)
    if len(declared) != 1:
        raise ValueError(f"query {name!r} needs exactly one `-- params:` line")
    params = tuple(part.strip() for part in declared[0].split(",") if part.strip())
    used = {int(number) for number in _PLACEHOLDER.findall(body)}
    if used != set(range(1, len(params) + 1)):
        raise ValueError(f"query {name!r} declares {len(params)} params but uses ${sorted(used)}")
    return PgQuery(name, body.strip(), params)


@cache
def load_queries() -> dict[str, PgQuery]:
    text = files("server.db.postgres").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, PgQuery] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r} in postgres/queries.sql")
        queries[name] = _parse(name, body)
    return queries


def bind(name: str, values: Mapping[str, object]) -> tuple[str, list[object]]:
    """The statement `name` and its arguments in `$n` order, taken from `values` by name."""
    query = load_queries()[name]
    missing = [param for param in query.params if param not in values]
    if missing:
        raise KeyError(f"query {name!r} needs {missing}")
    return query.sql, [values[param] for param in query.params]


@cache
def multi_row(name: str, rows: int) -> str:
    """The single-row INSERT `name` with its VALUES group repeated `rows` times, numbered on.

    Row k takes parameters k*n+1 … k*n+n (n = the statement's own count); PostgreSQL
    allows 65535 parameters per statement, so rows * n must stay under that.
    """
    query = load_queries()[name]
    match = _VALUES_GROUP.search(query.sql)
    if match is None:
        raise ValueError(f"query {name!r} has no VALUES ($1, …) group")
    width = len(query.params)
    if match[1] != "(" + ", ".join(f"${column}" for column in range(1, width + 1)) + ")":
        raise ValueError(f"query {name!r}: its VALUES group must be exactly ($1, …, ${width})")
    groups = ", ".join(
        "(" + ", ".join(f"${row * width + column}" for column in range(1, width + 1)) + ")"
        for row in range(rows)
    )
    return f"{query.sql[: match.start(1)]}{groups}{query.sql[match.end(1) :]}"
