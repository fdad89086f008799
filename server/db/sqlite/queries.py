"""Loads `queries.sql` into a name → SQL mapping (the procrastinate pattern).

One file holds every statement of the SQLite adapter so a reader sees its whole data
access surface at once. Another backend is another adapter behind server/db/port.py,
not another file of the same statements (json_each, json_patch, `$[#]` are SQLite's).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
# The one `VALUES (?, ?, …)` group of a single-row INSERT.
_VALUES_GROUP = re.compile(r"VALUES\s*(\((?:\?,\s*)*\?\))")


@cache
def load_queries() -> dict[str, str]:
    text = files("server.db.sqlite").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r} in queries.sql")
        queries[name] = body.strip()
    return queries


class Queries:
    """Attribute access to the named statements: `Q.claim_next_request`."""

    def __getattr__(self, name: str) -> str:
        try:
            return load_queries()[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in queries.sql") from None


Q = Queries()


@cache
def multi_row(name: str, rows: int) -> str:
    """The single-row INSERT `name` with its VALUES group repeated `rows` times.

    One statement for a whole batch: pysqlite's executemany releases and re-takes the
    GIL for every row, and while the event loop is busy each re-take waits for the
    interpreter's switch interval, which made batch inserts several times slower under
    load. Binding one long parameter list keeps the GIL released for the whole batch.
    """
    sql = load_queries()[name]
    match = _VALUES_GROUP.search(sql)
    if match is None:
        raise ValueError(f"query {name!r} has no VALUES (?, …) group")
    values = ", ".join([match[1]] * rows)
    return f"{sql[: match.start(1)]}{values}{sql[match.end(1) :]}"
