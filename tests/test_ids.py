"""server/ids.py: the one reading of an integer a client writes (path ids, cursors' peers,
the `bulk_request_id` filter, Last-Event-ID parts)."""

from __future__ import annotations

import pytest

from server.constants import MAX_STORED_INT_DIGITS
from server.ids import parse_stored_int


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("7", 7),
        ("007", 7),
        ("9" * MAX_STORED_INT_DIGITS, int("9" * MAX_STORED_INT_DIGITS)),
        ("9" * (MAX_STORED_INT_DIGITS + 1), None),  # more digits than a stored integer
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1.0", None),
        ("١٢", None),  # Arabic-Indic digits: str.isdigit() and int() accept them
        ("²", None),  # a superscript: isdigit() is True, int() raises
    ],
)
def test_parse_stored_int(text: str, expected: int | None) -> None:
    assert parse_stored_int(text) == expected


def test_every_accepted_number_fits_sqlite_integer() -> None:
    assert int("9" * MAX_STORED_INT_DIGITS) <= 2**63 - 1
