"""What the HTTP engine asks of admission control, and the answers it shares with it.

Two interfaces, implemented by surge.protect and called by the engine (surge.http) on
every request that has a route class: `RateLimits` (per-caller rate limits: go on, a 429,
or a verdict still to come from Redis) and `LoadShedding` (the slots of work waiting on
I/O: taken before the work starts, given back with its latency once it is answered). Also
`Verdict`, a token bucket's decision, and `OVERLOADED`, the 503 of a request shed (made
once: a refusal must cost as little as possible).
"""

from __future__ import annotations

import asyncio
import random
from typing import NamedTuple, Protocol

from surge.ground.web import Request, Response, problem_response


class Verdict(NamedTuple):
    """A token bucket's decision on one request."""

    allowed: bool
    remaining: int  # whole tokens left
    wait: float  # seconds until the next token (0 when allowed)


# Refusals, made once; Retry-After 1 or 2 s at random so refused clients spread out.
OVERLOADED = tuple(
    problem_response(
        503,
        "overloaded",
        "the server is at its limit of concurrent work; retry",
        (("retry-after", str(seconds)),),
    )
    for seconds in (1, 2)
)


def overloaded() -> Response:
    """A 503 `overloaded`, its Retry-After (1 or 2 s) drawn at random."""
    return OVERLOADED[random.getrandbits(1)]


class RateLimits(Protocol):
    """Per-caller rate limits by route class (surge.protect.ratelimit.RateLimiter)."""

    def check(
        self, request: Request, route_class: str
    ) -> Response | asyncio.Future[Verdict] | None:
        """None: go on. A Response: the refusal (429). A future: the verdict comes later
        (from Redis); `answer` turns it into None or the refusal."""

    def answer(self, route_class: str, verdict: Verdict) -> Response | None:
        """None if `verdict` lets the request through, else its refusal."""


class LoadShedding(Protocol):
    """The limit on concurrent work that waits on I/O (surge.protect.shedder.Shedder)."""

    @property
    def working(self) -> int:
        """Slots taken."""

    @property
    def read_limit(self) -> int:
        """Slots reads may take: at `working >= read_limit` a read is refused."""

    @property
    def shed(self) -> dict[str, int]:
        """Requests refused, by route class (the engine counts those it refuses itself)."""

    def admit(self, route_class: str) -> bool:
        """Takes a slot for work about to start, or refuses (counted)."""

    def release(self, seconds: float, late: bool, route_class: str) -> None:
        """The work of a request holding a slot of `route_class` is answered, `seconds`
        after it arrived; `late`: it was answered 504, past its deadline."""
