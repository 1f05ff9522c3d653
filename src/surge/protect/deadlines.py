"""Per-request deadlines for coroutine handlers, and what a failing dependency answers.

Past the deadline: 504, and the work is cancelled. A database or Redis error that escaped
the handler: 503 with Retry-After (the dependency is down; the request may be retried),
never a 500. (The order query's hot path keeps its own timer-based deadline: it has no
coroutine.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from surge.ground.errors import unavailable_errors
from surge.ground.web import Problem

log = logging.getLogger("surge.deadlines")
T = TypeVar("T")


async def within(seconds: float, work: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise Problem(
            504, "deadline-exceeded", f"no answer within {seconds * 1000:.0f} ms"
        ) from None
    except unavailable_errors() as exc:  # the drivers' errors: surge.ground.errors
        log.warning("dependency failed: %s: %s", type(exc).__name__, exc)
        raise Problem(
            503, "unavailable", "a dependency is unavailable; retry", (("retry-after", "1"),)
        ) from None
