"""Telling NACHA from CSV when the client sends no format."""

from __future__ import annotations

import pytest

from server.ingest.detect import detect_format
from tests.conftest import SHARED
from tests.nacha_builder import build, encode, sample_batches

VALID = sorted((SHARED / "nacha" / "public" / "valid").glob("*.ach"))


def test_the_shared_samples_are_there() -> None:
    assert len(VALID) >= 10, "shared/nacha is missing beside the checkout"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_every_shared_nacha_file_is_nacha(path: object) -> None:
    assert detect_format(path.read_bytes()[:4096]) == "nacha"  # type: ignore[attr-defined]


@pytest.mark.parametrize("newline", ["\n", "\r\n", ""])
def test_generated_nacha_any_line_ending(newline: str) -> None:
    assert detect_format(b"\xef\xbb\xbf" + encode(build(sample_batches()), newline)) == "nacha"


@pytest.mark.parametrize(
    "head",
    [
        b"date,amount\n2024-01-01,1\n",
        b"\xef\xbb\xbfdate,amount\r\n",
        b"",
        b"101,202,303\n" + b"1" * 200,
        b"1" * 33 + b"X095" + b"2" * 60,
        b"1A" + b"0" * 100,
    ],
)
def test_csv_and_other_text_is_csv(head: bytes) -> None:
    assert detect_format(head) == "csv"
