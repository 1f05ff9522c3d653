"""Shared vocabulary: the interfaces every backend implements and every module imports.

Each backend is chosen by URL scheme in `surge.backends` and passes the same contract suite
(tests/contract). The in-memory implementations are both the embedded default and the
fakes the unit tests use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    sale_id: int
    user_id: str
    quantity: int
    status: str
    created_at: datetime


class Cache(Protocol):
    """A shared byte cache with per-key TTL (Redis, or in-process in embedded mode)."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    def set_soon(self, key: str, value: bytes, ttl: float) -> None:
        """Schedules a write without waiting for it; failures are logged, never raised."""
        ...

    async def delete(self, *keys: str) -> None:
        """Forgets the keys (one round trip for all of them)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


Handler = Callable[[bytes], None]


class Bus(Protocol):
    """Fire-and-forget pub/sub between processes (Redis pub/sub, or in-process)."""

    async def publish(self, channel: str, message: bytes) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> None: ...

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """`hook` runs after the bus lost its connection and got it back (messages sent
        meanwhile may be lost)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """The SQL database: what must last."""

    async def get_orders(self, ids: Sequence[int]) -> dict[int, Order]: ...

    async def warm(self) -> None:
        """Opens its connections ahead of traffic."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def in_use(self) -> int:
        """Connections checked out right now (for the pool gauge)."""
        ...

    @property
    def size(self) -> int: ...


Probe = Callable[[], Awaitable[None]]
