"""Integers a client writes in a URL, a query or an event id: ids, row positions, counters."""

from __future__ import annotations

from server.constants import MAX_STORED_INT_DIGITS


def parse_stored_int(text: str) -> int | None:
    """The non-negative integer `text` spells in ASCII digits, or None.

    Anything else (a sign, spaces, non-ASCII digits, more digits than a stored integer
    can have) names nothing the server ever issued, so callers answer 404 or 400.
    """
    if text.isascii() and text.isdigit() and len(text) <= MAX_STORED_INT_DIGITS:
        return int(text)
    return None
