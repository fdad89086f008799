"""Telling a NACHA file from a CSV by its first bytes, when the client did not say."""

from __future__ import annotations

from server.types import UploadFormat

UTF8_BOM = b"\xef\xbb\xbf"


def detect_format(head: bytes) -> UploadFormat:
    """NACHA if the first record is a file header: type '1', a 2-digit priority code,
    and record size '094' at positions 35-37. Anything else is treated as CSV."""
    text = head.removeprefix(UTF8_BOM).lstrip(b"\r\n")
    first = text[:94]
    if len(first) >= 40 and first[:1] == b"1" and first[1:3].isdigit() and first[34:37] == b"094":
        return UploadFormat.NACHA
    return UploadFormat.CSV
