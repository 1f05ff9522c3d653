"""Pub/sub on a real Redis Cluster: shard channels, a room's messages on one shard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from surge.backends import BackendOptions, Backends, open_backends
from surge.backends.redis import connect
from surge.backends.redis_sharded_bus import ShardedBus
from surge.ground.interfaces import Bus
from tests.backends import Backend
from tests.redis_cluster import own_cluster, shared_cluster

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


async def _heard(bus: Bus, channel: str, got: list[bytes], seconds: float = 15.0) -> bool:
    """Publishes until the subscriber hears one (its subscription may be under repair)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(Exception):  # the publisher may meet the failover too
            await bus.publish(channel, b"ping")
        await _until(lambda: bool(got), 0.3)
        if got:
            return True
    return False


@ON_A_CLUSTER
async def test_a_dropped_subscriber_connection_is_noticed_and_resubscribed(
    backend: Backend,
) -> None:
    """redis-py would reconnect and resubscribe a pub/sub connection by itself, silently:
    what was published meanwhile lost and nobody told. The bus must notice and say so."""
    async with _process(backend) as opened:
        got: list[bytes] = []
        lost: list[int] = []
        await opened.bus.subscribe("drop", got.append)
        opened.bus.on_reconnect(lambda: lost.append(1))
        cluster = shared_cluster()
        for port in cluster.ports:  # every subscriber connection of every process
            cluster.cli(port, "client", "kill", "type", "pubsub")
        await _until(lambda: bool(lost), 10)
        assert lost  # told: messages may have been missed
        assert await _heard(opened.bus, "drop", got)


async def test_a_frozen_master_is_given_up_after_its_failover() -> None:
    """A master that stops answering without closing its connections (SIGSTOP): once its
    replica has taken over, the bus must subscribe there and say messages were lost."""
    with own_cluster() as cluster:
        async with contextlib.AsyncExitStack() as stack:
            client = connect(cluster.url, 8)
            stack.push_async_callback(client.aclose)
            bus = ShardedBus(client, "frozen:")
            stack.push_async_callback(bus.close)
            got: list[bytes] = []
            lost: list[int] = []
            await bus.subscribe("news", got.append)
            bus.on_reconnect(lambda: lost.append(1))
            assert await _heard(bus, "news", got)
            victim = cluster.master_of("frozen:news")
            cluster.freeze(victim)
            try:
                await asyncio.to_thread(cluster.wait_failed_over, victim)
                got.clear()
                assert await _heard(bus, "news", got, 20)  # delivered by the new master
                assert lost
            finally:
                cluster.thaw(victim)


@ON_A_CLUSTER
async def test_closing_while_the_links_are_remade_leaves_nothing_behind(
    backend: Backend,
) -> None:
    for turns in range(1, 8):
        client = connect(backend.redis_url or "", 8)
        bus = ShardedBus(client, backend.prefix)
        await bus.subscribe("a", lambda _m: None)
        await bus.subscribe("b", lambda _m: None)
        bus._broken = True  # as a failed link does
        bus._wake.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        await bus.close()
        await client.aclose()
        alive = [t for t in asyncio.all_tasks() if t.get_name().startswith("redis-shard-")]
        assert alive == [] and bus._links == {}
