"""Per-request deadlines for coroutine handlers: past it, 504 and the work is cancelled.

(The order query's hot path keeps its own timer-based deadline: it has no coroutine.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from surge.http.response import Problem

T = TypeVar("T")


async def within(seconds: float, work: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise Problem(
            504, "deadline-exceeded", f"no answer within {seconds * 1000:.0f} ms"
        ) from None
