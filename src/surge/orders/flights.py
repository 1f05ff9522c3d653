"""The order query's own records: a flight (every request waiting for one id), its
options and its counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from surge.ground.web import Response

MAX_BATCH = 500  # ids in one database query


class Flight:
    """Every request waiting for one id, and whether its lookup has reached the database."""

    __slots__ = ("fill_shared", "live", "order_id", "started", "waiters")

    def __init__(self, order_id: int) -> None:
        self.order_id = order_id
        self.waiters: list[tuple[asyncio.Future[Response], str, bool, asyncio.TimerHandle]] = []
        self.live = 0
        self.started = False
        self.fill_shared = True  # False once the shared cache failed to answer for it


@dataclass(frozen=True, slots=True)
class OrderQueryOptions:
    deadline: float = 0.05  # seconds, then 504
    cache_ttl: float = 600.0  # shared cache, seconds
    cache_jitter: float = 0.1  # +- fraction of the TTL
    negative_ttl: float = 5.0  # a not-found, seconds
    near_cache_size: int = 500_000
    near_cache_ttl: float = 300.0


@dataclass(slots=True)
class OrderStats:
    """The order query's counters (plain numbers; surge.metrics reads them)."""

    cache_hits: dict[str, int] = field(default_factory=lambda: {"near": 0, "shared": 0})
    cache_misses: dict[str, int] = field(default_factory=lambda: {"near": 0, "shared": 0})
    cache_errors: int = 0  # the shared cache failed (counted by its error hook too)
    db_queries: int = 0
    db_rows: int = 0
    deadline_exceeded: int = 0

    def cache_failed(self, _exc: Exception) -> None:
        self.cache_errors += 1


def live_batch(queue: list[Flight]) -> tuple[list[Flight], list[Flight]]:
    """The first MAX_BATCH queued flights someone still waits for, and the rest. Flights
    whose waiters all gave up are dropped (the work is cancelled), not carried along:
    after a stall a queue holds thousands of them ahead of the live ones."""
    live = [flight for flight in queue if flight.live]
    return live[:MAX_BATCH], live[MAX_BATCH:]
