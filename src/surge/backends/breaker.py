"""Circuit breakers: a dependency that is down costs microseconds, not a timeout each.

Closed: calls go through; `threshold` failures in a row (connection refused, reset,
timed out) open it. Open: calls fail at once with `Unavailable` for `cool_down` seconds.
Then half-open: one call at a time is let through as a probe; success closes the
breaker, failure opens it again for twice as long (up to `max_cool_down`), so a long
outage costs one probe every 30 s, not one timeout per request. Only the probe's own
verdict moves a breaker that is not closed (a call older than the opening proves
nothing). No background task: state changes happen on calls; readiness reads `state`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from surge.ground.errors import Unavailable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class Breaker:
    def __init__(
        self,
        name: str,
        threshold: int = 5,
        cool_down: float = 1.0,
        max_cool_down: float = 30.0,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.state = CLOSED
        self.opened = 0  # times it opened: the metric
        self._cool_down = cool_down
        self._min_cool_down = cool_down
        self._max_cool_down = max_cool_down
        self._failures = 0
        self._retry_at = 0.0
        self._probing = False
        self._now = time.monotonic  # tests replace it

    def check(self) -> bool:
        """Before a call: raises Unavailable unless the call may go; True when the call
        is the half-open breaker's probe (its verdict alone decides what comes next)."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN:
            if self._now() < self._retry_at:
                raise Unavailable(f"{self.name} is unavailable (circuit open)")
            self.state = HALF_OPEN
        if self._probing:  # half-open: one probe at a time
            raise Unavailable(f"{self.name} is unavailable (circuit half-open)")
        self._probing = True
        return True

    def succeeded(self, probe: bool = False) -> None:
        if self.state == CLOSED:
            self._failures = 0
        elif probe:  # (a call older than the opening proves nothing: it is ignored)
            self.state = CLOSED
            self._failures = 0
            self._probing = False
            self._cool_down = self._min_cool_down

    def failed(self, probe: bool = False) -> None:
        if self.state == CLOSED:
            self._failures += 1
            if self._failures >= self.threshold:
                self._open()
        elif probe:
            self._probing = False
            self._cool_down = min(self._cool_down * 2, self._max_cool_down)
            self._open()

    def released(self, probe: bool = False) -> None:
        """A call ended with no verdict (cancelled by its caller's deadline): if it was
        the probe, the next call may probe."""
        if probe:
            self._probing = False

    def _open(self) -> None:
        self.state = OPEN
        self.opened += 1
        self._retry_at = self._now() + self._cool_down

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED


class Guard:
    """`async with guard():` around one call to the dependency: checks the breaker, then
    gives it the call's verdict. `is_down(error)` says whether an error means the
    dependency is down (refused, reset, timed out); any other error means it answered (a
    deadlock or a constraint violation is the database working); a cancellation gives
    no verdict."""

    __slots__ = ("breaker", "is_down")

    def __init__(self, breaker: Breaker, is_down: Callable[[BaseException], bool]) -> None:
        self.breaker = breaker
        self.is_down = is_down

    def __call__(self) -> _Call:
        return _Call(self)


class _Call:
    __slots__ = ("guard", "probe")

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.probe = False

    async def __aenter__(self) -> None:
        self.probe = self.guard.breaker.check()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        breaker = self.guard.breaker
        if exc is None:
            breaker.succeeded(self.probe)
        elif isinstance(exc, Unavailable | asyncio.CancelledError):
            breaker.released(self.probe)  # another breaker's refusal, or the caller left
        elif self.guard.is_down(exc):
            breaker.failed(self.probe)
        else:
            breaker.succeeded(self.probe)
