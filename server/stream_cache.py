"""The data streams a process has looked up, kept: every bulk POST and every claimed
request names its streams, and asking the database each time cost a reader round trip
(a thread hop) per accept and per claim."""

from __future__ import annotations

from collections.abc import Collection

from server.constants import MAX_CACHED_STREAMS
from server.db.port import Storage
from server.ingest.validation import StreamRef


class StreamCache:
    """Data streams by environment and key, for the accept's fast path and the workers'
    batches (one per app, shared). Streams are never changed or deleted, so a found one
    stays right; a key not found is asked for again each time (its stream may have been
    created meanwhile)."""

    def __init__(self) -> None:
        self._found: dict[int, dict[str, StreamRef]] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """Streams held, all environments together (at most about MAX_CACHED_STREAMS)."""
        return self._size

    async def lookup(
        self, storage: Storage, environment_id: int, keys: Collection[str]
    ) -> dict[str, StreamRef]:
        """The environment's streams known so far, with every one of `keys` that exists."""
        known = self._found.get(environment_id)
        if known is None:
            known = self._found[environment_id] = {}
        missing = [key for key in keys if key not in known]
        if missing:
            found = await storage.find_data_streams(environment_id, missing)
            if self._size + len(found) > MAX_CACHED_STREAMS:
                self._found, self._size = {environment_id: known}, len(known)
            known.update(found)
            self._size += len(found)
        return known
