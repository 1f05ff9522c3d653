"""Live stock: every change of a sale's remaining stock goes to room `sale:{id}`.

`Rooms` is the real-time publisher interface; the WebSocket hub (`surge.realtime.hub`)
implements it, across processes through Redis. `StockFeed` coalesces: however many
purchases change a sale's stock, its room gets at most one update per `interval` (4 a
second by default), carrying the latest count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson

from surge.ground.orders import Order
from surge.ground.rooms import user_room
from surge.ground.tasks import Tasks
from surge.orders import encode_order

log = logging.getLogger("surge.feed")


class Rooms(Protocol):
    async def publish(self, room: str, data: bytes) -> int:
        """Sends `data` (an encoded JSON message) to every subscriber of `room`; the
        message's sequence number in the room."""
        ...


class StockFeed:
    """`current` reads a sale's remaining stock now (the gate's count): what a flush
    publishes. The counts callers report are each true at their moment, but their
    moments are not in order: two purchases decided in one gate call resume in any order,
    and each process flushes on its own timer, so the last count heard could be an older
    one (a sold-out sale shown "live" with 1 left until the next change)."""

    def __init__(
        self,
        rooms: Rooms,
        current: Callable[[int], Awaitable[int | None]] | None = None,
        interval: float = 0.25,
    ) -> None:
        self._rooms = rooms
        self._current = current
        self._interval = interval
        self._latest: dict[int, tuple[int, str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks = Tasks()

    def changed(self, sale_id: int, remaining: int, state: str) -> None:
        """Notes the newest count; the room hears of it within `interval`."""
        self._latest[sale_id] = (max(0, remaining), state)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval, self._flush)

    def _flush(self) -> None:
        self._timer = None
        latest, self._latest = self._latest, {}
        self._tasks.spawn(self._send(latest))

    async def _send(self, latest: dict[int, tuple[int, str]]) -> None:
        for sale_id, (reported, state) in latest.items():
            remaining = reported
            if self._current is not None:
                try:
                    now = await self._current(sale_id)
                except Exception:  # the gate unreachable: the reported count, as it was
                    now = None
                if now is not None:
                    remaining = max(0, now)
                    if state in ("live", "sold_out"):  # upcoming and ended stay as they are
                        state = "live" if remaining > 0 else "sold_out"
            message = orjson.dumps({"remaining": remaining, "state": state})
            try:
                await self._rooms.publish(f"sale:{sale_id}", message)
            except Exception as exc:  # a live feed is best effort; the next change retries
                log.warning("stock update for sale %d not published: %s", sale_id, exc)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._flush()
        await self._tasks.finish()


class UserEvents:
    """A buyer's own events go to their room, `user:{id}` (only they, or an admin, may
    subscribe): `order-confirmed` with the order, once it committed, then each change of
    its state (`order-paid`, `order-cancelled`, `order-expired`). In the background:
    a publish never delays or fails the purchase's answer, and one that fails is logged
    (the order stands; the room is a notification, `GET /users/me/orders` the record)."""

    def __init__(self, rooms: Rooms) -> None:
        self._rooms = rooms
        self._tasks = Tasks()

    def order_confirmed(self, order: Order) -> None:
        self.order_event("order-confirmed", order)

    def order_event(self, event: str, order: Order) -> None:
        """`event` (order-confirmed, order-paid, order-cancelled, order-expired) with the
        order as GET /orders/{id} gives it, to its buyer's room."""
        room = user_room(order.user_id)
        if room is not None:
            data = b'{"event":"%s","order":' % event.encode() + encode_order(order) + b"}"
            self._tasks.spawn(self._send(room, data))

    async def _send(self, room: str, data: bytes) -> None:
        try:
            await self._rooms.publish(room, data)
        except Exception as exc:
            log.warning("%s: event not published: %s", room, exc)

    async def close(self) -> None:
        await self._tasks.finish(1.0)
