"""How a room's messages get their sequence numbers, their history and every process.

`publish` gives the message the room's next sequence number, keeps it in the room's
history (the last `keep`), and hands it to every process's `deliver(room, seq, payload)`,
where `payload` is the finished message (see wire.message), encoded once, by whoever
numbered it. With Redis this is one Lua script: INCR, RPUSH + LTRIM, PUBLISH, atomic, so
numbers, history and delivery order agree across processes and pods. Without Redis it is
the same in this process.

Pub/sub keeps nothing: a process whose subscription dropped misses what was published
meanwhile; its clients resume from the history (`since`), docs/realtime.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import orjson
from redis import asyncio as aioredis

from surge.realtime import wire
from surge.types import Bus

Deliver = Callable[[str, int, bytes], None]
CHANNEL = "rt"
TTL_MS = 86_400_000  # a room's number and history outlive its last message by a day


class Backplane(Protocol):
    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        """`deliver` gets every message; `lost` is called when messages may have been
        missed (the link to the other processes was re-established)."""
        ...

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        """Numbers, keeps and distributes a message; returns its sequence number."""
        ...

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        """The kept messages (oldest first, with their numbers) and the latest number."""
        ...


class LocalBackplane:
    """One process: numbers and history in memory, delivered at once. At most `MAX_ROOMS`
    rooms are remembered; the one published to least recently is forgotten first (its
    subscribers resuming later are told to resync)."""

    MAX_ROOMS = 10_000

    def __init__(self) -> None:
        self._seq: dict[str, int] = {}
        self._kept: dict[str, deque[tuple[int, bytes]]] = {}
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        self._deliver = deliver  # nothing to lose in one process: `lost` is never called

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        seq = self._seq.pop(room, 0) + 1  # re-inserted last: dicts keep insertion order
        self._seq[room] = seq
        if len(self._seq) > self.MAX_ROOMS:
            oldest = next(iter(self._seq))
            del self._seq[oldest]
            self._kept.pop(oldest, None)
        payload = wire.message(room, seq, data)
        if keep > 0:
            kept = self._kept.get(room)
            if kept is None or kept.maxlen != keep:
                kept = self._kept[room] = deque(kept or (), maxlen=keep)
            kept.append((seq, payload))
        if self._deliver is not None:
            self._deliver(room, seq, payload)
        return seq

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        return list(self._kept.get(room, ())), self._seq.get(room, 0)


# KEYS[1] the room's number, KEYS[2] its history (a list of finished messages)
# ARGV: room, data (JSON), keep, channel, ttl ms
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
local payload = '{"op":"message","room":"' .. ARGV[1] .. '","seq":' .. seq
  .. ',"data":' .. ARGV[2] .. '}'
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('RPUSH', KEYS[2], payload)
  redis.call('LTRIM', KEYS[2], -keep, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. '\\n' .. seq .. '\\n' .. payload)
return seq
"""


class RedisBackplane:
    def __init__(self, client: aioredis.Redis, bus: Bus, prefix: str) -> None:
        self._client = client
        self._bus = bus
        self._prefix = prefix
        self._script = client.register_script(_PUBLISH)

    def _keys(self, room: str) -> list[str]:
        tag = f"{self._prefix}{{rt:{room}}}"  # one Redis Cluster slot per room
        return [f"{tag}:seq", f"{tag}:history"]

    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        def on_message(message: bytes) -> None:
            room, seq, payload = message.split(b"\n", 2)
            deliver(room.decode(), int(seq), payload)

        await self._bus.subscribe(CHANNEL, on_message)
        self._bus.on_reconnect(lost)  # pub/sub keeps nothing for a subscriber that was away

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        channel = self._prefix + CHANNEL  # RedisBus prefixes its channels the same way
        seq = await self._script(keys=self._keys(room), args=[room, data, keep, channel, TTL_MS])
        return int(seq)

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        seq_key, history_key = self._keys(room)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(history_key, 0, -1)
            pipe.get(seq_key)
            kept, latest = await pipe.execute()
        messages = [(int(orjson.loads(p)["seq"]), bytes(p)) for p in kept]
        return messages, int(latest or 0)
