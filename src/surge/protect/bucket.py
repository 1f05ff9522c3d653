"""Token buckets: the algorithm, and the in-process store of them.

A bucket holds up to `burst` tokens and gains `rate` a second; a request takes one or is
refused. The same arithmetic runs in Redis (`backends/lua/ratelimit.lua`) when the
limits are shared by several processes; here (`LocalBuckets.check`) it serves the
embedded mode, reads by default, and any mode while Redis is unreachable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from surge.ground.admission import Verdict as Verdict  # the engine's type too


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


class LocalBuckets:
    """Buckets of this process, keyed by (policy, caller). Bounded: when a policy has
    `max_entries` callers, the oldest inserted is forgotten (it comes back full, i.e. the
    error is in the caller's favour, and only for a caller not seen among the last
    `max_entries`). This runs on every request: 0.4 us."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._buckets: dict[str, dict[str, list[float]]] = {}  # policy -> caller -> state
        self._max = max_entries
        self._now = time.monotonic  # tests replace it

    def check(self, policy: Policy, caller: str) -> Verdict:
        now = self._now()
        buckets = self._buckets.get(policy.name)
        if buckets is None:
            buckets = self._buckets[policy.name] = {}
        state = buckets.get(caller)  # [tokens, time]
        if state is None:
            if len(buckets) >= self._max:
                del buckets[next(iter(buckets))]
            state = buckets[caller] = [float(policy.burst), now]
        elapsed = now - state[1]
        tokens = state[0] + elapsed * policy.rate if elapsed > 0.0 else state[0]
        if tokens > policy.burst:
            tokens = float(policy.burst)
        state[1] = now
        if tokens >= 1.0:
            tokens -= 1.0
            state[0] = tokens
            return passed(int(tokens))
        state[0] = tokens
        return refused((1.0 - tokens) / policy.rate)

    def __len__(self) -> int:
        return sum(len(buckets) for buckets in self._buckets.values())
