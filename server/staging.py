"""Where staged rows are cut into chunks: one rule for uploads, POSTs and retries.

A chunk is held whole in memory while it is staged and again when a worker decodes it,
so every path that stages rows closes a chunk at PARSE_CHUNK_ROWS rows or once its rows
hold PARSE_CHUNK_BYTES of input, whichever comes first (see server/constants.py).
"""

from __future__ import annotations

from server.constants import PARSE_CHUNK_BYTES, PARSE_CHUNK_ROWS


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
