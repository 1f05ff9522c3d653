"""The Redis backplane: one Lua script numbers, keeps and publishes a room's message
atomically, so numbers, history and delivery order agree across processes and pods."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from redis import asyncio as aioredis

from surge.backends.scripts import lua_script
from surge.ground.interfaces import Bus
from surge.ground.rooms import ROOM_SHARE, Deliver

CHANNEL = "rt"
TTL_MS = 86_400_000  # a room's number and history outlive its last message by a day


class RedisBackplane:
    def __init__(
        self, client: aioredis.Redis, bus: Bus, prefix: str, max_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self._client = client
        # per room, as the in-process backplane (Redis's memory is bounded by its own
        # maxmemory; rooms expire a day after their last message)
        self._room_bytes = max_bytes // ROOM_SHARE
        self._bus = bus
        self._prefix = prefix
        self._script = client.register_script(lua_script("room_publish.lua"))

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
