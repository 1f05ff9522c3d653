"""Circuit breakers: a dependency that is down costs microseconds, not a timeout each.

Closed: calls go through; `threshold` failures in a row (connection refused, reset,
timed out) open it. Open: calls fail at once with `Unavailable` for `cool_down` seconds.
Then half-open: one call at a time is let through as a probe; success closes the
breaker, failure opens it again for twice as long (up to `max_cool_down`), so a long
outage costs one probe every 30 s, not one timeout per request. No background task:
state changes happen on calls, and readiness reads `state`.
"""

from __future__ import annotations

import asyncio
import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class Unavailable(ConnectionError):
    """Raised instead of calling a dependency whose breaker is open. A ConnectionError:
    every caller already treats it as the dependency being down."""


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

    def check(self) -> None:
        """Before a call: raises Unavailable unless the call may go."""
        if self.state == CLOSED:
            return
        if self.state == OPEN:
            if self._now() < self._retry_at:
                raise Unavailable(f"{self.name} is unavailable (circuit open)")
            self.state = HALF_OPEN
        if self._probing:  # half-open: one probe at a time
            raise Unavailable(f"{self.name} is unavailable (circuit half-open)")
        self._probing = True

    def succeeded(self) -> None:
        self._failures = 0
        if self.state != CLOSED:
            self.state = CLOSED
            self._probing = False
            self._cool_down = self._min_cool_down

    def failed(self) -> None:
        self._failures += 1
        if self.state == HALF_OPEN:
            self._probing = False
            self._cool_down = min(self._cool_down * 2, self._max_cool_down)
            self._open()
        elif self.state == CLOSED and self._failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.state = OPEN
        self.opened += 1
        self._retry_at = self._now() + self._cool_down

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED

    def released(self) -> None:
        """A call let through ended with neither verdict (an error of the caller's own,
        e.g. cancelled by its deadline): a half-open breaker may probe again."""
        self._probing = False


class Guard:
    """`async with guard:` around one call to the dependency: checks the breaker, then
    gives it the call's verdict. `down` are the errors that mean the dependency is down;
    any other error means it answered (a constraint violation is the database working);
    a cancellation gives no verdict."""

    __slots__ = ("breaker", "down")

    def __init__(self, breaker: Breaker, down: tuple[type[BaseException], ...]) -> None:
        self.breaker = breaker
        self.down = down

    async def __aenter__(self) -> None:
        self.breaker.check()

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        if kind is None:
            self.breaker.succeeded()
        elif issubclass(kind, self.down) and not issubclass(kind, Unavailable):
            self.breaker.failed()
        elif issubclass(kind, asyncio.CancelledError):
            self.breaker.released()
        elif not issubclass(kind, Unavailable):
            self.breaker.succeeded()
