"""Loads `queries.sql` into a name → SQL mapping (the procrastinate pattern).

One file holds every statement so a reader sees the whole data access surface at once,
and a second backend would only need a second file.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def load_queries() -> dict[str, str]:
    text = files("server.db").joinpath("queries.sql").read_text(encoding="utf-8")
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
