"""server/db/writer.py: one thread, whole transactions, urgent work first (bounded)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.constants import URGENT_BURST
from server.db.sqlite.connection import open_writer_connection, prepare_database
from server.db.sqlite.tx import WriteTx
from server.db.sqlite.writer import Writer, WriterClosed


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    path = tmp_path / "w.db"
    prepare_database(path)
    started = Writer(lambda: open_writer_connection(path, "NORMAL"))
    await started.start()
    await started.call(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
    yield started
    await started.close()


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


async def test_a_transaction_commits_or_rolls_back_as_a_whole(writer: Writer) -> None:
    def insert_then_fail(tx: WriteTx) -> None:
        tx.run("INSERT INTO t VALUES (1)")
        raise ValueError("halfway")

    with pytest.raises(ValueError, match="halfway"):
        await writer.transaction(insert_then_fail)
    assert await writer.call(count) == 0

    def insert_two(tx: WriteTx) -> int:
        tx.run("INSERT INTO t VALUES (1)")
        return tx.run("INSERT INTO t VALUES (2)")

    assert await writer.transaction(insert_two) == 1
    assert await writer.call(count) == 2


async def test_urgent_work_goes_first_but_never_starves_the_rest(writer: Writer) -> None:
    # Hold the thread so that everything below queues up behind it.
    gate = threading.Event()
    blocker = asyncio.ensure_future(writer.call(lambda conn: gate.wait(5)))
    await asyncio.sleep(0.05)
    order: list[str] = []

    def note(name: str) -> None:
        order.append(name)

    calls = [writer.call(lambda conn, i=i: note(f"background{i}")) for i in range(2)]
    calls += [
        writer.call(lambda conn, i=i: note(f"urgent{i}"), urgent=True)
        for i in range(URGENT_BURST + 2)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(blocker, *calls)
    burst = [f"urgent{i}" for i in range(URGENT_BURST)]
    assert order == [
        *burst,
        "background0",  # after URGENT_BURST urgent ones, a waiting background job runs
        f"urgent{URGENT_BURST}",  # and urgent work has the thread again
        f"urgent{URGENT_BURST + 1}",
        "background1",
    ]


async def test_a_caller_that_gives_up_does_not_stop_the_work(writer: Writer) -> None:
    gate = threading.Event()
    blocker = asyncio.ensure_future(writer.call(lambda conn: gate.wait(5)))
    insert = asyncio.ensure_future(
        writer.transaction(lambda tx: tx.run("INSERT INTO t VALUES (7)"))
    )
    await asyncio.sleep(0.05)
    insert.cancel()
    gate.set()
    await blocker
    # Queued work is carried out even though nobody waits for it any more.
    assert await writer.call(count) == 1


async def test_closed_writer_refuses_work_and_a_bad_connection_is_reported(
    writer: Writer, tmp_path: Path
) -> None:
    await writer.close()
    with pytest.raises(WriterClosed):
        await writer.call(count)

    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    failing = Writer(broken)
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await failing.start()
    await failing.close()


async def test_a_writer_closed_before_it_started_refuses_work(tmp_path: Path) -> None:
    never_started = Writer(lambda: open_writer_connection(tmp_path / "n.db", "NORMAL"))
    await never_started.close()
    with pytest.raises(WriterClosed):
        await asyncio.wait_for(never_started.call(count), 1)  # refused, not left hanging


async def test_an_error_that_ended_the_transaction_itself_is_not_masked(writer: Writer) -> None:
    def end_it_then_fail(tx: WriteTx) -> None:
        tx.conn.execute("ROLLBACK")  # as SQLite does by itself on some errors
        raise LookupError("the original error")

    with pytest.raises(LookupError, match="the original error"):
        await writer.transaction(end_it_then_fail)
    assert await writer.transaction(lambda tx: tx.run("INSERT INTO t VALUES (1)")) == 1
