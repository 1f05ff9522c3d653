"""Background tasks: the one way an object starts work that outlives the call starting it.

asyncio keeps only a weak reference to a running task, so an object that starts one must
hold it until it is done, and cancel and await what is left when it closes. `Tasks` is
that set, written once instead of in every class that starts tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def shared_task(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task that works for many requests (a batch, a load several callers wait for):
    created outside the current request's context, so what it logs names no request
    rather than whichever request happened to start it."""
    return asyncio.get_running_loop().create_task(work, context=contextvars.Context())


class Tasks:
    """The tasks one object started and has not seen finish."""

    __slots__ = ("_live",)

    def __init__(self) -> None:
        self._live: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], shared: bool = True) -> asyncio.Task[T]:
        """Starts `work` and holds it until it is done. `shared` (the default): outside
        the current request's context (see `shared_task`)."""
        if shared:
            task = shared_task(work)
        else:
            task = asyncio.get_running_loop().create_task(work)
        self._live.add(task)
        task.add_done_callback(self._live.discard)
        return task

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[asyncio.Future[Any]]:
        return iter(list(self._live))

    async def finish(self, grace: float | None = None) -> None:
        """Waits for the tasks to end by themselves (up to `grace` seconds, None: for as
        long as they take), then cancels what is left and waits for that."""
        if self._live and grace != 0:
            await asyncio.wait(list(self._live), timeout=grace)
        await self.cancel()

    async def cancel(self) -> None:
        """Cancels every task and waits until they have all stopped."""
        live = list(self._live)
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)
