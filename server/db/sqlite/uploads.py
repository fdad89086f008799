"""Uploads on SQLite: files in `<database dir>/uploads/`, beside the database.

One server process per database file (the flock), so the files found at start that no
request refers to are leftovers of a crash (between a commit and an unlink, or an upload
cut off mid-stream) and can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import BinaryIO


class FileUploadSink:
    """An upload streamed to `<uuid>.part`, renamed `<uuid>.<format>` once accepted."""

    def __init__(self, upload_dir: Path) -> None:
        upload_dir.mkdir(parents=True, exist_ok=True)
        self.path = upload_dir / f"{uuid.uuid4().hex}.part"
        self._handle: BinaryIO | None = self.path.open("wb")

    async def write(self, chunk: bytes) -> None:
        assert self._handle is not None, "upload already finished"
        self._handle.write(chunk)

    async def finish(self, upload_format: str) -> str:
        self._close()
        final = self.path.with_suffix(f".{upload_format}")
        self.path.rename(final)
        self.path = final
        return str(final)

    async def discard(self) -> None:
        self._close()
        remove(self.path)

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_files_except(upload_dir: Path, keep: set[str]) -> int:
    if not upload_dir.is_dir():
        return 0
    removed = 0
    for path in upload_dir.iterdir():
        if path.is_file() and str(path) not in keep:
            remove(path)
            removed += 1
    return removed


async def remove_files_except(upload_dir: Path, keep: set[str]) -> int:
    return await asyncio.to_thread(_remove_files_except, upload_dir, keep)
