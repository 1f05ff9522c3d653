"""The Redis backplane: one Lua script numbers, keeps and publishes a room's message
atomically, so numbers, history and delivery order agree across processes and pods.

On one Redis server every process subscribes to one channel, `rt`. On a Redis Cluster
(`shards`) the rooms are spread over `shards` groups, each with its own hash slot: a
room's number, history and shard channel share the group's hash tag `{rt:N}`, so the
script that numbers a message also SPUBLISHes it on the node that keeps the room, and
every process subscribes to each group's channel (one connection per node). A room's
messages stay on one shard, in order; different rooms spread over the cluster.

Presence: each process writes its subscriber count per room into the room's hash
`...:presence` (field: the process, value: "count:ms"), every few seconds for the rooms
it has (surge.realtime.hub), each hash kept `PRESENCE_TTL_MS`; a reader sums the other
processes' fresh fields. The cost is one HSET per room with subscribers per process per
period, and one HGETALL per question.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import cast

import orjson

from surge.backends.redis import Client
from surge.backends.scripts import lua_script
from surge.ground.interfaces import Bus
from surge.ground.rooms import ROOM_SHARE, Deliver

CHANNEL = "rt"
TTL_MS = 86_400_000  # a room's number and history outlive its last message by a day
# Room groups on a cluster: enough that the groups spread evenly over a cluster's masters
# (64 slots picked at random over 3 masters: each gets 21 +- 4), few enough that a
# process's 64 subscriptions cost nothing
CLUSTER_SHARDS = 64
PRESENCE_TTL_MS = 30_000  # a presence hash outlives its last report by this much
PRESENCE_FRESH_MS = 15_000  # a process's count older than this is a dead process's


class RedisBackplane:
    def __init__(
        self,
        client: Client,
        bus: Bus | None,  # None: a publisher only (`surge worker`), never started
        prefix: str,
        max_bytes: int = 16 * 1024 * 1024,
        shards: int | None = None,
    ) -> None:
        self._client = client
        # per room, as the in-process backplane (Redis's memory is bounded by its own
        # maxmemory; rooms expire a day after their last message)
        self._room_bytes = max_bytes // ROOM_SHARE
        self._bus = bus
        self._prefix = prefix
        self._shards = shards
        self._process = uuid.uuid4().hex[:16]  # this process's field in presence hashes
        self._script = client.register_script(lua_script("room_publish.lua"))

    def _channel(self, room: str) -> str:
        """The channel (without the prefix the bus adds) that carries `room`."""
        if self._shards is None:
            return CHANNEL
        return f"{{rt:{zlib.crc32(room.encode()) % self._shards}}}"

    def _keys(self, room: str) -> list[str]:
        if self._shards is None:
            tag = f"{self._prefix}{{rt:{room}}}"  # one slot per room
        else:
            tag = f"{self._prefix}{self._channel(room)}:{room}"  # its group's slot
        return [f"{tag}:seq", f"{tag}:history", f"{tag}:history-bytes"]

    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        def on_message(message: bytes) -> None:
            room, seq, payload = message.split(b"\n", 2)
            deliver(room.decode(), int(seq), payload)

        assert self._bus is not None, "a publisher-only backplane is not started"
        channels = (
            [CHANNEL] if self._shards is None else [f"{{rt:{n}}}" for n in range(self._shards)]
        )
        for channel in channels:
            await self._bus.subscribe(channel, on_message)
        self._bus.on_reconnect(lost)  # pub/sub keeps nothing for a subscriber that was away

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        channel = self._prefix + self._channel(room)  # the bus prefixes its channels so
        command = "PUBLISH" if self._shards is None else "SPUBLISH"
        args: list[bytes | str | int] = [
            room,
            data,
            keep,
            channel,
            TTL_MS,
            self._room_bytes,
            command,
        ]
        seq = await self._script(keys=self._keys(room), args=args)
        return int(seq)

    async def share_counts(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        now = int(time.time() * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            for room, count in counts.items():
                key = self._presence_key(room)
                if count:
                    pipe.hset(key, self._process, f"{count}:{now}")
                    pipe.pexpire(key, PRESENCE_TTL_MS)
                else:
                    pipe.hdel(key, self._process)
            await pipe.execute()

    async def others(self, room: str) -> int:
        # bytes: the clients never decode responses
        fields = cast(dict[bytes, bytes], await self._client.hgetall(self._presence_key(room)))
        fresh = int(time.time() * 1000) - PRESENCE_FRESH_MS
        total = 0
        for process, value in fields.items():
            count, _, at = value.partition(b":")
            if process.decode() != self._process and int(at) >= fresh:
                total += int(count)
        return total

    def _presence_key(self, room: str) -> str:
        return self._keys(room)[0].removesuffix(":seq") + ":presence"

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        seq_key, history_key, _ = self._keys(room)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(history_key, 0, -1)
            pipe.get(seq_key)
            kept, latest = await pipe.execute()
        messages = [(int(orjson.loads(p)["seq"]), bytes(p)) for p in kept]
        return messages, int(latest or 0)
