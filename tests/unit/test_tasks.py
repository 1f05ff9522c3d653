"""surge.ground.tasks: the one holder of background tasks."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from surge.ground.tasks import Tasks

pytestmark = pytest.mark.anyio

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="none")


async def test_a_task_is_held_until_done_then_let_go() -> None:
    tasks = Tasks()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 7

    task = tasks.spawn(work())
    assert len(tasks) == 1 and list(tasks) == [task]
    gate.set()
    assert await task == 7
    await asyncio.sleep(0)  # done callbacks run in the next turn
    assert len(tasks) == 0


async def test_shared_tasks_leave_the_request_context_behind() -> None:
    tasks = Tasks()
    marker.set("request-1")

    async def seen() -> str:
        return marker.get()

    assert await tasks.spawn(seen()) == "none"
    assert await tasks.spawn(seen(), shared=False) == "request-1"


async def test_finish_waits_its_grace_then_cancels_the_rest() -> None:
    tasks = Tasks()
    quick_done = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0.01)
        quick_done.set()

    slow = tasks.spawn(asyncio.sleep(60))
    tasks.spawn(quick())
    started = asyncio.get_running_loop().time()
    await tasks.finish(grace=0.2)
    elapsed = asyncio.get_running_loop().time() - started
    assert quick_done.is_set()  # it had time to end by itself
    assert slow.cancelled()
    assert 0.15 < elapsed < 2.0
    assert len(tasks) == 0


async def test_cancel_stops_everything_and_swallows_nothing_it_should_not() -> None:
    tasks = Tasks()

    async def fails() -> None:
        raise ValueError("boom")

    failing = tasks.spawn(fails())
    sleeping = tasks.spawn(asyncio.sleep(60))
    await asyncio.sleep(0)
    await tasks.cancel()
    assert sleeping.cancelled()
    assert isinstance(failing.exception(), ValueError)  # kept on the task for its owner
