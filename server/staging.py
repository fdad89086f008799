"""Where staged rows are cut into chunks: one rule for uploads, POSTs and retries.

A chunk is held whole in memory while it is staged and again when a worker decodes it,
so every path that stages rows closes a chunk at PARSE_CHUNK_ROWS rows or once its rows
hold PARSE_CHUNK_BYTES of input, whichever comes first (see server/constants.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.constants import PARSE_CHUNK_BYTES, PARSE_CHUNK_ROWS
from server.db.sqlite.tx import StagedItem, encode_item, pack_items

# A chunk as it is inserted: (first row, row count, encoded body).
EncodedChunk = tuple[int, int, bytes]


class ChunkFill:
    """The rows and bytes of the chunk being filled."""

    def __init__(self) -> None:
        self.rows = 0
        self.size = 0

    def add(self, size: int) -> bool:
        """Count one row of `size` bytes; True when the chunk is now full."""
        self.rows += 1
        self.size += size
        return self.rows >= PARSE_CHUNK_ROWS or self.size >= PARSE_CHUNK_BYTES

    def reset(self) -> None:
        self.rows = 0
        self.size = 0


class ChunkWriter:
    """The chunk being filled, its rows encoded one by one into one buffer.

    Each encoded row is copied into the buffer and dropped: orjson's output for a wide
    row keeps a much larger allocation (a 16 KB row held ~500 KB), so holding a list of
    them cost ~30× the chunk.
    """

    def __init__(self) -> None:
        self._fill = ChunkFill()
        self._body = bytearray(b"[")

    @property
    def rows(self) -> int:
        return self._fill.rows

    def add(self, item: StagedItem) -> bool:
        """Append one row; True when the chunk is now full."""
        encoded = encode_item(item)
        if self._fill.rows:
            self._body += b","
        self._body += encoded
        return self._fill.add(len(encoded))

    def take(self) -> tuple[int, bytes]:
        """(row count, body) of the chunk, and start an empty one."""
        self._body += b"]"
        taken = (self._fill.rows, pack_items(self._body))
        self._fill.reset()
        self._body = bytearray(b"[")
        return taken


def encode_in_chunks(items: Sequence[StagedItem]) -> list[EncodedChunk]:
    """The rows of a POST (or any list held whole) as chunks cut by ChunkFill, so that
    a worker decodes at most about PARSE_CHUNK_BYTES of them at a time."""
    chunks: list[EncodedChunk] = []
    writer = ChunkWriter()
    first_row = 0
    for item in items:
        if writer.add(item):
            row_count, body = writer.take()
            chunks.append((first_row, row_count, body))
            first_row += row_count
    if writer.rows:
        row_count, body = writer.take()
        chunks.append((first_row, row_count, body))
    return chunks
