"""server/db/drive.py: a transaction body written as a coroutine runs without a loop."""

from __future__ import annotations

import asyncio

import pytest

from server.db.drive import SuspendedOutsideLoop, run_to_completion


class _Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def step(self, name: str) -> int:
        self.calls.append(name)
        return len(self.calls)


async def _body(tx: _Counter) -> int:
    first = await tx.step("a")
    second = await tx.step("b")
    return first * 10 + second


def test_a_body_that_never_suspends_runs_to_its_value_without_a_loop() -> None:
    tx = _Counter()
    assert run_to_completion(_body(tx)) == 12
    assert tx.calls == ["a", "b"]


def test_an_exception_inside_the_body_reaches_the_caller() -> None:
    async def failing() -> None:
        await _Counter().step("x")
        raise LookupError("kept")

    with pytest.raises(LookupError, match="kept"):
        run_to_completion(failing())


def test_a_body_that_suspends_raises_and_is_closed() -> None:
    finished: list[bool] = []

    async def suspending() -> None:
        try:
            await asyncio.sleep(0)
        finally:
            finished.append(True)

    with pytest.raises(SuspendedOutsideLoop, match="suspending"):
        run_to_completion(suspending())
    assert finished == [True]  # closed: its finally ran, no "never awaited" warning
