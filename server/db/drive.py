"""Run a transaction body written once, as a coroutine, on either adapter.

The port's transaction bodies are `async def` functions of a transaction object, so the
PostgreSQL adapter awaits them on asyncpg. The SQLite adapter runs its transactions on
the writer thread, where there is no event loop: its transaction object's methods are
coroutines that never suspend (each one is a plain sqlite3 call), so a body built on
them finishes on its first step and `run_to_completion` takes its value there, with no
loop. A body that does suspend (an `asyncio.sleep`, a lock) would need a loop the writer
thread does not have; that is a programming error and it raises rather than hang.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class SuspendedOutsideLoop(RuntimeError):
    """A coroutine meant to run without a loop awaited something that suspends."""


def run_to_completion(body: Coroutine[Any, Any, T]) -> T:
    """The value of `body`, run synchronously; `body` must never suspend."""
    try:
        body.send(None)
    except StopIteration as finished:
        value: T = finished.value
        return value
    body.close()
    name = getattr(body, "__qualname__", repr(body))
    raise SuspendedOutsideLoop(f"{name} suspended; it cannot run without a loop")
