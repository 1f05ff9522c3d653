"""Retrying a step that must happen eventually (bookkeeping after a commit, giving back a
reservation) while its dependency is briefly down: exponential backoff, bounded in time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("surge.ground.retry")


async def keep_trying(
    step: Callable[[], Awaitable[object]],
    what: str,
    window: float = 60.0,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> bool:
    """Runs `step` until it succeeds or `window` seconds have passed; True if it did.
    The first failure and the giving up are logged (not every try: a Redis outage would
    otherwise write a line per try per pending step)."""
    delay, deadline = first_delay, time.monotonic() + window
    tries = 0
    while True:
        try:
            await step()
            if tries:
                log.info("%s: done after %d retries", what, tries)
            return True
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                log.warning("%s: given up after %d tries: %s", what, tries + 1, exc)
                return False
            if not tries:
                log.warning("%s: failed, retrying for up to %.0f s: %s", what, window, exc)
        tries += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
