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


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row on its way to the consumers. `id` is unique for ever (the row id
    joined with its creation time: a database that is emptied may hand out a row id
    again, and consumers deduplicate on this)."""

    id: str
    topic: str
    payload: bytes  # JSON
    created: float  # Unix time the order was committed


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event handed to one consumer group; stays pending until acknowledged."""

    entry: str  # the stream's id of the entry
    event: Event
    only: str | None = None  # a replayed dead letter goes to this group alone


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry: str
    event: Event
    group: str
    error: str
    attempts: int
    buried: float  # Unix time


class Stream(Protocol):
    """A durable log of events with consumer groups (Redis Streams, or an SQLite file in
    embedded mode): at-least-once, each group sees every event, an entry stays pending
    for its consumer until acknowledged, and entries of a consumer that died are claimed
    by another after `min_idle` seconds."""

    async def prepare(self, groups: Sequence[str]) -> None:
        """Creates the groups (reading from the beginning) if they are new."""
        ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Appends the events in order; returns only once they are stored."""
        ...

    async def read(self, group: str, consumer: str, count: int, block: float) -> list[Delivery]:
        """Up to `count` new entries for `consumer`, waiting up to `block` seconds."""
        ...

    async def claim_stale(
        self, group: str, consumer: str, min_idle: float, count: int
    ) -> list[Delivery]:
        """Takes over entries other consumers have held for `min_idle` seconds or more."""
        ...

    async def touch(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        """Resets the idle time of entries still being worked on (not stale)."""
        ...

    async def release(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        """Hands entries back at once: any consumer may claim them now."""
        ...

    async def forget(self, group: str, consumer: str) -> None:
        """Drops a stopping consumer's name from the group if it holds nothing (Redis
        would list every worker that ever ran, for ever)."""
        ...

    async def done(self, group: str, event_id: str) -> bool:
        """True when the group has already handled this event (deduplication)."""
        ...

    async def ack(self, group: str, delivery: Delivery, handled: bool = True) -> None:
        """Drops the entry from the group's pending list and, when `handled`, marks the
        event done for the group (deduplication), atomically."""
        ...

    async def failed(self, group: str, delivery: Delivery) -> int:
        """Counts one failed attempt; returns the count so far (kept across restarts)."""
        ...

    async def bury(self, group: str, delivery: Delivery, error: str, attempts: int) -> None:
        """Moves the entry to the dead-letter stream and acknowledges it, atomically."""
        ...

    async def dead_letters(self, count: int) -> list[DeadLetter]: ...

    async def dead_count(self) -> int: ...

    async def replay(self, entries: Sequence[str]) -> int:
        """Republishes dead letters (each to its group alone) and removes them; returns
        how many were found."""
        ...

    async def pending(self, group: str) -> int:
        """Entries published but not yet acknowledged by the group (incl. unread)."""
        ...

    async def trim(self) -> None:
        """Drops entries every group has acknowledged."""
        ...

    async def close(self) -> None: ...
