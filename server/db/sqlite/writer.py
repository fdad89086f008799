"""The one write connection, owned by one thread that runs whole transactions.

Every write transaction is a plain function of a `WriteTx`, shipped to this thread in one
hop: BEGIN IMMEDIATE, the function, COMMIT (or ROLLBACK when it raises). Before, each
statement was its own round trip to an aiosqlite thread, and the writer stayed locked
while the event loop was busy elsewhere between two statements of one transaction: the
benchmark measured the lock held ~2× longer than SQLite worked. Now the lock is held
exactly as long as SQLite (and the function's own Python) runs.

Two queues: *urgent* work (accepting a client's request, which a client is waiting on)
runs before *background* work (worker batches, claims, sweeps), but never more than
URGENT_BURST urgent transactions in a row while background work waits, so a flood of
submissions cannot stall processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from server.constants import URGENT_BURST
from server.db.sqlite.tx import WriteTx

T = TypeVar("T")

_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class WriterClosed(RuntimeError):
    """The writer thread has stopped; no more writes are accepted."""


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller gave up waiting; the work was done regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._urgent: deque[_Job] = deque()
        self._background: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="sqlite-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        self._thread.start()
        await self.call(lambda conn: None)  # raises here if the connection failed

    async def close(self, last: Callable[[sqlite3.Connection], Any] | None = None) -> None:
        """Run `last` (if given) after everything queued, then close the connection."""
        if not self._thread.is_alive():
            self._closing = True  # never started, or already closed: refuse work from now on
            return
        if last is not None:
            await self.call(last)
        with self._ready:
            self._closing = True
            self._ready.notify()
        await asyncio.to_thread(self._thread.join)

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = False) -> T:
        """Run fn(connection) on the writer thread (no transaction is opened)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._ready:
            if self._closing:
                raise WriterClosed("the database writer is closed")
            (self._urgent if urgent else self._background).append((fn, future, loop))
            self._ready.notify()
        return await future

    async def transaction(
        self,
        fn: Callable[[WriteTx], T],
        *,
        urgent: bool = False,
        committed: Callable[[WriteTx], None] | None = None,
    ) -> T:
        """Run fn in one BEGIN IMMEDIATE transaction; commits, or rolls back if fn raises.

        `committed` runs on this thread right after COMMIT, before the caller is told,
        so whatever it schedules on the caller's loop runs in commit order.
        """

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                tx = WriteTx(conn)
                result = fn(tx)
            except BaseException:
                # Some errors (a full disk, say) end the transaction themselves; a second
                # ROLLBACK would then raise and hide the original error.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if committed is not None:
                committed(tx)
            return result

        return await self.call(run, urgent=urgent)

    # --- the thread ------------------------------------------------------------------

    def _next(self, urgent_in_a_row: int) -> tuple[_Job, bool] | None:
        """The next job and whether it was urgent; None once closing and drained."""
        with self._ready:
            while not (self._urgent or self._background or self._closing):
                self._ready.wait()
            if self._urgent and (urgent_in_a_row < URGENT_BURST or not self._background):
                return self._urgent.popleft(), True
            if self._background:
                return self._background.popleft(), False
            return None

    def _serve(self) -> None:
        setup_error: BaseException | None = None
        try:
            self._conn = self._connect()
        except BaseException as exc:  # reported to every caller below
            setup_error = exc
        urgent_in_a_row = 0
        try:
            while (picked := self._next(urgent_in_a_row)) is not None:
                (fn, future, loop), urgent = picked
                urgent_in_a_row = urgent_in_a_row + 1 if urgent else 0
                result: Any = None
                failure = setup_error
                if failure is None:
                    assert self._conn is not None
                    try:
                        result = fn(self._conn)
                    except BaseException as exc:
                        failure = exc
                # The caller's loop may be closed by now (an abandoned call at interpreter
                # exit): the work is done either way, and the thread must go on serving.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, result, failure)
        finally:
            if self._conn is not None:
                self._conn.close()
