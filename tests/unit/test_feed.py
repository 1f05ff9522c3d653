from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable

import pytest

from surge.sales.feed import StockFeed


class LocalRooms:  # the Rooms interface, in-process: a fake for these tests
    """Rooms within this process: subscribers are callbacks."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[[bytes], None]]] = defaultdict(list)

    def subscribe(self, room: str, callback: Callable[[bytes], None]) -> None:
        self._subscribers[room].append(callback)

    async def publish(self, room: str, data: bytes) -> None:
        for callback in list(self._subscribers.get(room, ())):
            callback(data)


pytestmark = pytest.mark.anyio


async def test_changes_are_coalesced_to_the_latest() -> None:
    rooms = LocalRooms()
    heard: list[dict[str, object]] = []
    rooms.subscribe("sale:1", lambda data: heard.append(json.loads(data)))
    feed = StockFeed(rooms, interval=0.05)
    for left in range(100, 0, -1):
        feed.changed(1, left, "live")
    feed.changed(2, 5, "live")  # another room: its own message
    await asyncio.sleep(0.1)
    assert heard == [{"remaining": 1, "state": "live"}]
    feed.changed(1, 0, "sold_out")
    await asyncio.sleep(0.1)
    assert heard[-1] == {"remaining": 0, "state": "sold_out"}
    assert len(heard) == 2
    await feed.close()


async def test_close_sends_what_is_pending() -> None:
    rooms = LocalRooms()
    heard: list[bytes] = []
    rooms.subscribe("sale:3", heard.append)
    feed = StockFeed(rooms, interval=60)
    feed.changed(3, 7, "live")
    await feed.close()
    assert heard == [b'{"remaining":7,"state":"live"}']


async def test_a_flush_publishes_the_count_now_not_the_last_one_reported() -> None:
    """Two purchases decided in one gate call resume in any order: the last count
    reported may be the older one. What goes out is the gate's count at the flush."""
    rooms = LocalRooms()
    heard: list[dict[str, object]] = []
    rooms.subscribe("sale:1", lambda data: heard.append(json.loads(data)))
    gate = {1: 0}

    async def current(sale_id: int) -> int | None:
        return gate.get(sale_id)

    feed = StockFeed(rooms, current, interval=0.02)
    feed.changed(1, 0, "sold_out")  # the later purchase resumed first...
    feed.changed(1, 1, "live")  # ...then the earlier one
    await asyncio.sleep(0.06)
    assert heard == [{"remaining": 0, "state": "sold_out"}]
    feed.changed(2, 4, "upcoming")  # no count in the gate: the reported one
    feed.changed(1, 0, "ended")  # a state the count does not decide stays
    await asyncio.sleep(0.06)
    assert heard[-1] == {"remaining": 0, "state": "ended"}
    await feed.close()
