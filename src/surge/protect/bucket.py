"""Token buckets: the algorithm, and the in-process store of them.

A bucket holds up to `burst` tokens and gains `rate` a second; a request takes one or is
refused. The same arithmetic runs in Redis (`backends/lua/ratelimit.lua`) when the
limits are shared by several processes; here it serves the embedded mode, and any mode
while Redis is unreachable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple


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
        return math.ceil(self.burst / self.rate * 1000) + 1000


class Verdict(NamedTuple):
    allowed: bool
    remaining: int  # whole tokens left
    wait: float  # seconds until the next token (0 when allowed)


def take(tokens: float, elapsed: float, policy: Policy) -> tuple[float, Verdict]:
    """A bucket that held `tokens` `elapsed` seconds ago is asked for one token: its new
    level, and the verdict."""
    tokens = min(float(policy.burst), tokens + max(elapsed, 0.0) * policy.rate)
    if tokens >= 1.0:
        tokens -= 1.0
        return tokens, Verdict(True, int(tokens), 0.0)
    return tokens, Verdict(False, 0, (1.0 - tokens) / policy.rate)


class LocalBuckets:
    """Buckets of this process, keyed by (policy, caller). Bounded: when full, the oldest
    inserted bucket is forgotten (it comes back full, i.e. the error is in the caller's
    favour, and only for a caller not seen among the last `max_entries`)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._max = max_entries
        self._now = time.monotonic  # tests replace it

    def check(self, policy: Policy, caller: str) -> Verdict:
        now = self._now()
        key = (policy.name, caller)
        buckets = self._buckets
        known = buckets.get(key)
        if known is None:
            if len(buckets) >= self._max:
                del buckets[next(iter(buckets))]
            tokens, verdict = take(float(policy.burst), 0.0, policy)
        else:
            tokens, verdict = take(known[0], now - known[1], policy)
        buckets[key] = (tokens, now)
        return verdict

    def __len__(self) -> int:
        return len(self._buckets)
