"""In-process cache and pub/sub: the embedded default and the fakes tests use."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from surge.ground.evict import evict_oldest
from surge.ground.interfaces import Handler


class MemoryCache:
    """A bounded dict with per-key expiry; evicts the oldest entries when full."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._max = max_entries

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        values: list[bytes | None] = []
        for key in keys:
            item = self._data.get(key)
            if item is not None and item[1] <= now:
                del self._data[key]
                item = None
            values.append(None if item is None else item[0])
        return values

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.set_soon(key, value, ttl)

    def set_soon(self, key: str, value: bytes, ttl: float) -> None:
        data = self._data
        data.pop(key, None)
        if len(data) >= self._max:
            evict_oldest(data, self._max)
        data[key] = (value, time.monotonic() + ttl)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()


class MemoryBus:
    """Delivers a published message to this process's subscribers, synchronously."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    async def publish(self, channel: str, message: bytes) -> None:
        for handler in list(self._handlers.get(channel, ())):
            handler(message)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel].append(handler)

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Never called: an in-process bus cannot lose its connection."""

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()
