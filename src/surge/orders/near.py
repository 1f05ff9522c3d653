"""The order query's near cache: pre-encoded answers in a bounded dict of this process."""

from __future__ import annotations

import time

from surge.ground.evict import evict_oldest
from surge.ground.web import Response

# A near-cache entry: (owner, encoded 200, refresh_at, expires); owner None = known absent.
# A plain tuple so the GC can untrack it (see surge.ground.web).
Entry = tuple[str | None, Response | None, float, float]
REFRESH_AT = 0.75  # of the near TTL: a hit on an older entry refreshes it in the background


class NearCache:
    """Bounded in-process cache; oldest-inserted entries leave first when it is full, a
    hundredth at a time (surge.ground.evict says why)."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        self.data: dict[int, Entry] = {}
        self._max = max_entries
        self.ttl = ttl

    def get(self, key: int, now: float) -> Entry | None:
        """The live entry for `key` at monotonic time `now`, or None (absent or expired)."""
        entry = self.data.get(key)
        if entry is not None and entry[3] < now:
            del self.data[key]
            return None
        return entry

    def put(self, key: int, owner: str | None, found: Response | None, ttl: float) -> Entry:
        now = time.monotonic()
        ttl = min(ttl, self.ttl)
        entry = (owner, found, now + ttl * REFRESH_AT if found else now + ttl, now + ttl)
        data = self.data
        data.pop(key, None)
        if len(data) >= self._max:
            evict_oldest(data, self._max)
        data[key] = entry
        return entry

    def drop(self, key: int) -> None:
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)
