"""Pub/sub on a real Redis Cluster: shard channels, a room's messages on one shard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from surge.backends import BackendOptions, Backends, open_backends
from tests.backends import Backend
from tests.redis_cluster import shared_cluster

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _process(backend: Backend) -> AsyncIterator[Backends]:
    """What one Surge process opens."""
    options = BackendOptions(
        backend.database_url, redis_url=backend.redis_url, prefix=backend.prefix
    )
    async with contextlib.AsyncExitStack() as stack:
        yield await open_backends(options, stack)


def _numsub(port: int, kind: str, channel: str) -> int:
    """PUBSUB NUMSUB / SHARDNUMSUB of `channel` as one node counts it."""
    reply = shared_cluster().cli(port, "pubsub", kind, channel).split()
    return int(reply[1])


async def _until(done: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)


ON_A_CLUSTER = pytest.mark.parametrize("backend", ["mariadb+redis-cluster"], indirect=True)


@ON_A_CLUSTER
async def test_the_bus_uses_shard_channels(backend: Backend) -> None:
    async with _process(backend) as first, _process(backend) as second:
        got: list[tuple[str, bytes]] = []
        await first.bus.subscribe("news", lambda m: got.append(("first", m)))
        await second.bus.subscribe("news", lambda m: got.append(("second", m)))
        await second.bus.publish("news", b"hello")
        await _until(lambda: len(got) == 2)
        await asyncio.sleep(0.05)
        assert sorted(got) == [("first", b"hello"), ("second", b"hello")]

        cluster = shared_cluster()
        channel = backend.prefix + "news"
        owner = cluster.master_of(channel)
        assert _numsub(owner, "shardnumsub", channel) == 2  # both processes, on its node
        for port in cluster.ports:  # and no classic subscription anywhere
            assert _numsub(port, "numsub", channel) == 0


@ON_A_CLUSTER
async def test_a_room_is_numbered_kept_and_delivered_on_one_shard(backend: Backend) -> None:
    async with _process(backend) as first, _process(backend) as second:
        got: dict[str, list[tuple[str, int]]] = {"first": [], "second": []}
        for name, opened in (("first", first), ("second", second)):
            await opened.backplane.start(
                lambda room, seq, _p, name=name: got[name].append((room, seq)),  # type: ignore[misc]
                lambda: None,
            )
        rooms = [f"chat:{i}" for i in range(12)]
        for room in rooms:
            for _ in range(3):
                await first.backplane.publish(room, b'"hi"', keep=10)
        expected = sorted((room, seq) for room in rooms for seq in (1, 2, 3))
        await _until(lambda: len(got["first"]) == len(got["second"]) == len(expected))
        for name in got:  # every message to each process, once, in order per room
            assert sorted(got[name]) == expected
            for room in rooms:
                assert [s for r, s in got[name] if r == room] == [1, 2, 3]

        cluster = shared_cluster()
        plane = first.backplane
        shards = set()
        for room in rooms:
            channel = backend.prefix + plane._channel(room)  # type: ignore[attr-defined]
            keys = plane._keys(room)  # type: ignore[attr-defined]
            owners = {cluster.master_of(key) for key in keys}
            assert owners == {cluster.master_of(channel)}  # keys and channel together
            shards |= owners
            kept, latest = await second.backplane.history(room)
            assert latest == 3 and [seq for seq, _ in kept] == [1, 2, 3]
        assert len(shards) > 1  # and the rooms spread over the masters
