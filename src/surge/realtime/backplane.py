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

from surge.ground.interfaces import Bus
from surge.realtime import wire

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
    """One process: numbers and history in memory, delivered at once.

    Bounded three ways: at most `MAX_ROOMS` rooms are remembered (the one published to
    least recently is forgotten first; its subscribers resuming later are told to
    resync), a room keeps at most `max_bytes // ROOM_SHARE` bytes of history, and all
    rooms together at most `max_bytes` (the oldest messages of the least recently
    published rooms go first). History is kept when nobody listens, so without these a
    room that was busy once would hold its messages for good."""

    MAX_ROOMS = 10_000
    ROOM_SHARE = 16  # a room may hold this fraction of the whole history budget

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._seq: dict[str, int] = {}
        self._kept: dict[str, deque[tuple[int, bytes]]] = {}
        self._room_bytes: dict[str, int] = {}
        self._bytes = 0
        self._max_bytes = max_bytes
        self._deliver: Deliver | None = None

    @property
    def history_bytes(self) -> int:
        return self._bytes

    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        self._deliver = deliver  # nothing to lose in one process: `lost` is never called

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        seq = self._seq.pop(room, 0) + 1  # re-inserted last: dicts keep insertion order
        self._seq[room] = seq
        if len(self._seq) > self.MAX_ROOMS:
            self._forget(next(iter(self._seq)))
        payload = wire.message(room, seq, data)
        if keep > 0:
            self._keep(room, seq, payload, keep)
        if self._deliver is not None:
            self._deliver(room, seq, payload)
        return seq

    def _keep(self, room: str, seq: int, payload: bytes, keep: int) -> None:
        room_limit = self._max_bytes // self.ROOM_SHARE
        if len(payload) > room_limit:
            return  # numbered and delivered, never kept (as RedisBackplane)
        # popped and put back: the rooms stay in the order they were last published to
        kept = self._kept.pop(room, None) or deque()
        size = self._room_bytes.pop(room, 0) + len(payload)
        kept.append((seq, payload))
        self._bytes += len(payload)
        while kept and (len(kept) > keep or size > room_limit):
            dropped = len(kept.popleft()[1])
            size -= dropped
            self._bytes -= dropped
        if kept:
            self._kept[room], self._room_bytes[room] = kept, size
        # over the whole budget: the least recently published rooms lose their oldest
        for other in list(self._kept):
            if self._bytes <= self._max_bytes:
                break
            self._trim(other)

    def _trim(self, room: str) -> None:
        kept = self._kept[room]
        while kept and self._bytes > self._max_bytes:
            dropped = len(kept.popleft()[1])
            self._bytes -= dropped
            self._room_bytes[room] -= dropped
        if not kept:
            del self._kept[room]
            del self._room_bytes[room]

    def _forget(self, room: str) -> None:
        del self._seq[room]
        if self._kept.pop(room, None) is not None:
            self._bytes -= self._room_bytes.pop(room)

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        return list(self._kept.get(room, ())), self._seq.get(room, 0)


# KEYS[1] the room's number, KEYS[2] its history (a list of finished messages), KEYS[3]
# the history's size in bytes. ARGV: room, data (JSON), keep, channel, ttl ms, max bytes.
# The history keeps the last `keep` messages, and fewer when they would pass max bytes.
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
local payload = '{"op":"message","room":"' .. ARGV[1] .. '","seq":' .. seq
  .. ',"data":' .. ARGV[2] .. '}'
local keep = tonumber(ARGV[3])
local cap = tonumber(ARGV[6])
if keep > 0 and #payload <= cap then
  redis.call('RPUSH', KEYS[2], payload)
  local size = redis.call('INCRBY', KEYS[3], #payload)
  local n = redis.call('LLEN', KEYS[2])
  while n > keep or (size > cap and n > 0) do
    local old = redis.call('LPOP', KEYS[2])
    size = redis.call('INCRBY', KEYS[3], -#old)
    n = n - 1
  end
  if size < 0 or n == 0 then
    redis.call('SET', KEYS[3], n == 0 and 0 or #payload)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. '\\n' .. seq .. '\\n' .. payload)
return seq
"""


class RedisBackplane:
    def __init__(
        self, client: aioredis.Redis, bus: Bus, prefix: str, max_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self._client = client
        # per room, as the in-process backplane (Redis's memory is bounded by its own
        # maxmemory; rooms expire a day after their last message)
        self._room_bytes = max_bytes // LocalBackplane.ROOM_SHARE
        self._bus = bus
        self._prefix = prefix
        self._script = client.register_script(_PUBLISH)

    def _keys(self, room: str) -> list[str]:
        tag = f"{self._prefix}{{rt:{room}}}"  # one Redis Cluster slot per room
        return [f"{tag}:seq", f"{tag}:history", f"{tag}:history-bytes"]

    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        def on_message(message: bytes) -> None:
            room, seq, payload = message.split(b"\n", 2)
            deliver(room.decode(), int(seq), payload)

        await self._bus.subscribe(CHANNEL, on_message)
        self._bus.on_reconnect(lost)  # pub/sub keeps nothing for a subscriber that was away

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        channel = self._prefix + CHANNEL  # RedisBus prefixes its channels the same way
        args: list[bytes | str | int] = [room, data, keep, channel, TTL_MS, self._room_bytes]
        seq = await self._script(keys=self._keys(room), args=args)
        return int(seq)

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        seq_key, history_key, _ = self._keys(room)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(history_key, 0, -1)
            pipe.get(seq_key)
            kept, latest = await pipe.execute()
        messages = [(int(orjson.loads(p)["seq"]), bytes(p)) for p in kept]
        return messages, int(latest or 0)
