"""Token buckets: the arithmetic every rate limit uses, and the interface of a store of them.

A bucket holds up to `burst` tokens and gains `rate` a second; a request takes one or is
refused. `Bucket` is one bucket an owner holds (a WebSocket connection's publishes; a
user's bytes). A store of buckets keyed by caller (`Buckets`) is a backend: in this
process (backends/memory_buckets.py) or in Redis (backends/redis_limits.py and
`lua/ratelimit.lua`, the same arithmetic), for the limits several processes share.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Protocol

from surge.ground.admission import Verdict


@dataclass(frozen=True, slots=True)
class Policy:
    """One class of routes: `rate` requests a second per caller, `burst` at once."""

    name: str
    rate: float
    burst: int

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill: the `w` of RateLimit-Policy."""
        return max(1, math.ceil(self.burst / self.rate))

    @property
    def ttl_ms(self) -> int:
        """How long a bucket must be kept: after that it would be full anyway."""
        return math.ceil(self.burst / self.rate * 1000) + 1000  # per script call, not request


# the verdicts that pass, made once: creating a NamedTuple per request costs 0.25 us
_PASSES = tuple(Verdict(True, remaining, 0.0) for remaining in range(1024))


def passed(remaining: int) -> Verdict:
    return _PASSES[remaining] if 0 <= remaining < 1024 else Verdict(True, remaining, 0.0)


def refused(wait: float) -> Verdict:
    return Verdict(False, 0, wait)


class Bucket:
    """One token bucket held by its owner (a WebSocket connection's publishes, pings and
    frames; a user's published bytes): `rate` tokens a second, at most `burst`, starts
    full; `take(now, cost)` takes `cost` tokens or refuses."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True


class Buckets(Protocol):
    """Buckets by caller, one set per policy: a verdict now, or one still to come."""

    def check(self, policy: Policy, caller: str) -> Verdict | asyncio.Future[Verdict]: ...
