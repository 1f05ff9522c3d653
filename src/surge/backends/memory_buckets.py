"""The in-process store of token buckets: the embedded mode, the read limits by default,
and any limit while Redis is unreachable (surge.ground.buckets has the arithmetic)."""

from __future__ import annotations

import time

from surge.ground.admission import Verdict
from surge.ground.buckets import Policy, passed, refused
from surge.ground.evict import evict_oldest


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
                evict_oldest(buckets, self._max)  # (their callers start afresh: full)
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
