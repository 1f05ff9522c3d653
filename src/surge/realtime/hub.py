"""Rooms and fan-out: who is subscribed where, and how a message reaches them.

A message is encoded once (by whoever numbered it, see backplane.py), framed once here,
and written to every local subscriber's transport as the same bytes. Writes never wait:
uvloop sends what the socket takes and buffers the rest, and a connection whose buffer
is over `send_buffer` is closed as too slow instead of being written to, so one slow
client costs the others nothing and no lock is ever held across a write (the Go design
this grew from held one mutex around every write of every client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from surge.ground.buckets import Bucket
from surge.ground.histogram import Histogram
from surge.ground.rooms import Backplane
from surge.ground.tasks import Tasks
from surge.realtime import frames, wire
from surge.realtime.connection import EXPIRED, GOING_AWAY, TOO_SLOW, WsConnection
from surge.realtime.fanout import FanOut
from surge.realtime.limits import Limits
from surge.realtime.presence import PRESENCE_EVERY, Presence
from surge.realtime.resume import Joining, replay

log = logging.getLogger("surge.realtime")


SALE_KEEP = 1  # a sale room keeps its latest state: a new subscriber gets it at once


class Hub:
    def __init__(self, limits: Limits, backplane: Backplane) -> None:
        self.limits = limits
        self._fanout = FanOut(limits.fanout_threads)
        self._backplane = backplane
        self.rooms: dict[str, set[WsConnection]] = {}
        # subscribers catching up on history: live messages wait for them here
        self._joining: dict[str, dict[WsConnection, Joining]] = {}
        self.connections: set[WsConnection] = set()
        # per user (token): open connections, and the publish byte bucket they share
        self.per_user: dict[str, int] = {}
        self._publish_budget: dict[str, Bucket] = {}  # user -> published bytes
        self.now = time.monotonic()  # coarse clock for last_seen, ticked by the heartbeat
        self.accepting = True
        self.stats = {
            "messages_in": 0,
            "messages_out": 0,
            "published": 0,
            "errors": 0,
            "dropped_slow": 0,
            "heartbeat_timeouts": 0,
            "refused": 0,
        }
        self.fanout = Histogram()
        self._tasks = Tasks()
        self._heartbeat: asyncio.Task[None] | None = None
        self._all_gone: asyncio.Event | None = None  # set up by close()
        self._presence = Presence(backplane, self.count, lambda: {*self.rooms, *self._joining})
        # in-process listeners of a room (the gRPC face's WatchSale streams)
        self._watchers: dict[str, set[Callable[[bytes], None]]] = {}

    async def start(self) -> None:
        await self._backplane.start(self._deliver, self._lost)
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    # -- the Rooms interface (surge.sales.feed): the server publishes ---------------------------
    async def publish(self, room: str, data: bytes) -> int:
        """Publishes `data` (JSON) into `room` from the server; its sequence number."""
        seq = await self._backplane.publish(room, data, self._keep(room))
        self.stats["published"] += 1
        return seq

    def watch(self, room: str, listener: Callable[[bytes], None]) -> Callable[[], None]:
        """`listener` hears every message of `room` (the bytes a client would get), from
        this process or another, until the function returned is called. It runs in the
        fan-out: it must be quick and must not raise."""
        watchers = self._watchers.setdefault(room, set())
        watchers.add(listener)

        def stop() -> None:
            watchers.discard(listener)
            if not watchers and self._watchers.get(room) is watchers:
                del self._watchers[room]

        return stop

    def _keep(self, room: str) -> int:
        return SALE_KEEP if room.startswith("sale:") else self.limits.history

    # -- connections --------------------------------------------------------------------------
    def has_room(self) -> bool:
        return self.accepting and len(self.connections) < self.limits.max_connections

    def user_has_room(self, user: str) -> bool:
        return self.per_user.get(user, 0) < self.limits.max_per_user

    def joined(self, conn: WsConnection) -> None:
        self.connections.add(conn)
        if conn.user is not None:
            self.per_user[conn.user] = self.per_user.get(conn.user, 0) + 1

    def left(self, conn: WsConnection) -> None:
        if conn in self.connections and conn.user is not None:
            held = self.per_user.get(conn.user, 0) - 1
            if held > 0:
                self.per_user[conn.user] = held
            else:
                self.per_user.pop(conn.user, None)
                self._publish_budget.pop(conn.user, None)
        self.connections.discard(conn)
        self.forget(conn)
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()

    def forget(self, conn: WsConnection) -> None:
        """Takes a connection out of every room (it is closing)."""
        for room in conn.rooms:
            self._leave(conn, room)
        conn.rooms.clear()

    def _leave(self, conn: WsConnection, room: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.rooms[room]
        joining = self._joining.get(room)
        if joining is not None:
            joining.pop(conn, None)
            if not joining:
                del self._joining[room]

    # -- ops ----------------------------------------------------------------------------------
    def handle(self, conn: WsConnection, op: wire.Op) -> None:
        if conn.expires < time.time():  # its token expired since the last check
            conn.close(EXPIRED, "token expired: reconnect with a fresh one")
            return
        if isinstance(op, wire.Subscribe):
            self._subscribe(conn, op)
        elif isinstance(op, wire.Unsubscribe):
            if op.room in conn.rooms:
                conn.rooms.discard(op.room)
                self._leave(conn, op.room)
            conn.reply(wire.ack(op.request_id, room=op.room))
        else:
            self._publish(conn, op)

    def _subscribe(self, conn: WsConnection, op: wire.Subscribe) -> None:
        room = op.room
        if room in conn.rooms:
            conn.reply(wire.ack(op.request_id, room=room))
            return
        if room.startswith("user:") and not (conn.admin or conn.user == room[5:]):
            raise wire.WireError(
                "forbidden", "a user's room is that user's (or an admin's)", op.request_id
            )
        if len(conn.rooms) >= self.limits.max_rooms:
            raise wire.WireError(
                "too-many-rooms", f"at most {self.limits.max_rooms} rooms", op.request_id
            )
        since = op.since
        if since is None and not room.startswith("sale:"):
            conn.rooms.add(room)
            self.rooms.setdefault(room, set()).add(conn)
            conn.reply(wire.ack(op.request_id, room=room))
            return
        if not conn.allow_publish():  # reading history costs as much as a publish
            raise wire.WireError(
                "rate-limited",
                f"at most {self.limits.publish_rate} publishes and resumes a second",
                op.request_id,
            )
        conn.rooms.add(room)
        # history first (a sale room's latest state; or what a resuming client missed),
        # live messages meanwhile held back for this subscriber
        joining = Joining(op.request_id)
        self._joining.setdefault(room, {})[conn] = joining
        self._spawn(self._catch_up(conn, room, since, joining))

    async def _catch_up(
        self, conn: WsConnection, room: str, since: int | None, joining: Joining
    ) -> None:
        request_id = joining.request_id
        try:
            kept, latest = await self._backplane.history(room)
        except Exception as exc:
            log.warning("history of %s unavailable: %s", room, exc)
            if self._joining.get(room, {}).get(conn) is joining:
                self._leave(conn, room)
                conn.rooms.discard(room)
            conn.reply(wire.error(request_id, "unavailable", "history unavailable; retry"))
            return
        if self._joining.get(room, {}).get(conn) is not joining:
            # unsubscribed (or subscribed anew) meanwhile: answered all the same
            conn.reply(wire.ack(request_id, room=room, seq=latest))
            return
        conn.reply(wire.ack(request_id, room=room, seq=latest))
        replay(conn, room, since, joining, kept, latest)

    def _graduate(self, room: str, conn: WsConnection) -> None:
        joining = self._joining.get(room)
        if joining is not None:
            joining.pop(conn, None)
            if not joining:
                del self._joining[room]
        self.rooms.setdefault(room, set()).add(conn)

    def _publish(self, conn: WsConnection, op: wire.Publish) -> None:
        if conn.user is None:
            raise wire.WireError("unauthorized", "publishing needs a token", op.request_id)
        if not op.room.startswith("chat:"):
            raise wire.WireError(
                "forbidden",
                "clients publish into chat rooms only (sale and user rooms are the server's)",
                op.request_id,
            )
        if not conn.allow_publish():
            raise wire.WireError(
                "rate-limited",
                f"at most {self.limits.publish_rate} publishes a second",
                op.request_id,
            )
        if not self._allow_bytes(conn.user, len(op.data)):
            raise wire.WireError(
                "rate-limited",
                f"at most {self.limits.publish_bytes} bytes a second per user",
                op.request_id,
            )
        self._spawn(self._publish_for(conn, op))

    def _allow_bytes(self, user: str, size: int) -> bool:
        """The user's byte bucket, shared by its connections in this process: what one
        user can make the history (and every subscriber's buffer) hold a second."""
        now = time.monotonic()
        budget = self._publish_budget.get(user)
        if budget is None:
            rate = self.limits.publish_bytes
            budget = self._publish_budget[user] = Bucket(rate, 4.0 * rate, now)
        return budget.take(now, size)

    async def _publish_for(self, conn: WsConnection, op: wire.Publish) -> None:
        try:
            seq = await self._backplane.publish(op.room, op.data, self.limits.history)
        except Exception as exc:
            log.warning("publish to %s failed: %s", op.room, exc)
            conn.reply(wire.error(op.request_id, "unavailable", "not published; retry"))
            return
        self.stats["published"] += 1
        conn.reply(wire.ack(op.request_id, room=op.room, seq=seq))

    # -- fan-out ---
    def _deliver(self, room: str, seq: int, payload: bytes) -> None:
        watchers = self._watchers.get(room)
        if watchers:
            for listener in tuple(watchers):
                listener(payload)
        members = self.rooms.get(room)
        joining = self._joining.get(room)
        if not members and not joining:
            return
        started = time.perf_counter()
        frame = frames.text(payload)
        limit = self.limits.send_buffer
        slow: list[WsConnection] = []
        written = 0
        if members:
            direct: list[WsConnection] = []  # nothing queued: written straight to the socket
            for conn in members:
                transport = conn.transport
                if transport is None:
                    continue
                queued = transport.get_write_buffer_size()
                if queued > limit:
                    slow.append(conn)
                elif queued:
                    transport.write(frame)  # behind what is queued
                else:
                    direct.append(conn)
            for target, sent in self._fanout.write(direct, frame):
                transport = target.transport  # type: ignore[attr-defined]
                if transport is not None:
                    transport.write(frame[sent:])
            written = len(members) - len(slow)
        if joining:
            for conn, entry in list(joining.items()):
                if entry.held is not None:
                    entry.held.append((seq, frame))  # its history is still loading
                elif seq > entry.floor:
                    conn.send(frame)
                    self._graduate(room, conn)
        for conn in slow:
            self.stats["dropped_slow"] += 1
            conn.close(TOO_SLOW, "too slow: outgoing buffer full")
        self.stats["messages_out"] += written
        self.fanout.observe(time.perf_counter() - started)

    def _lost(self) -> None:
        """The link to the other processes came back: what was published meanwhile never
        reached this process. Every local subscriber is told, per room, to resume."""
        for room, members in list(self.rooms.items()):
            notice = wire.error(
                None,
                "resync",
                f"messages of {room} may have been missed (this server lost its link to the "
                "others for a moment): subscribe again with since",
                room=room,
            )
            for conn in list(members):
                conn.reply(notice)

    # -- presence, heartbeat and shutdown ------------------------------------------------------
    def count(self, room: str) -> int:
        """This process's subscribers of `room` (those catching up included)."""
        return len(self.rooms.get(room, ())) + len(self._joining.get(room, ()))

    async def subscribers(self, room: str) -> int:
        """Across processes: this one's now, the others' as of their last report."""
        return self.count(room) + await self._backplane.others(room)

    def _close_expired(self) -> None:
        """Connections whose token expired are closed within a second: a user's room and
        publishing were granted by the token, not by the connection."""
        now = time.time()
        for conn in [c for c in self.connections if c.expires < now]:
            conn.close(EXPIRED, "token expired: reconnect with a fresh one")

    async def _beat(self) -> None:
        interval, timeout = self.limits.ping_interval, self.limits.ping_timeout
        ticks = 0
        seconds = 0.0
        while True:
            await asyncio.sleep(min(1.0, interval))
            self.now = time.monotonic()
            seconds += min(1.0, interval)
            self._close_expired()
            if seconds >= PRESENCE_EVERY:
                seconds = 0.0
                self._spawn(self._presence.share())
            ticks += 1
            if ticks * min(1.0, interval) < interval:
                continue
            ticks = 0
            dead_before = self.now - interval - timeout
            for conn in list(self.connections):
                if conn.last_seen < dead_before:
                    self.stats["heartbeat_timeouts"] += 1
                    conn.abort()  # silent for a ping and its timeout: the peer is gone
                elif conn.transport is not None and not conn.closing:
                    conn.transport.write(frames.PING_FRAME)

    async def close(self, grace: float = 1.0) -> None:
        """Every client gets close code 1001 (going away: reconnect elsewhere)."""
        self.accepting = False
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._all_gone = asyncio.Event()
        for conn in list(self.connections):
            conn.close(GOING_AWAY, "server shutting down")
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        await self._tasks.cancel()
        self._fanout.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(work, shared=False)
