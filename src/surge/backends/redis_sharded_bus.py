"""Pub/sub on a Redis Cluster's shard channels (SPUBLISH / SSUBSCRIBE): `ShardedBus`.

A shard channel lives on the node that owns its slot, so a process holds one subscriber
connection ("link") per node that owns one of its channels, each read by a task of its
own. Written here rather than taken from redis-py's ClusterPubSub: that one polls its
nodes' connections in turn with the caller's timeout, so a message on one shard waits out
the others'.

Pub/sub keeps nothing for a subscriber that is away, so whenever a link may have missed
messages the `on_reconnect` hooks are called (the order query clears its near cache, the
hub tells its clients to resync), after the channels are subscribed again. A link is
given up, and its channels subscribed anew from the cluster's current map, when:

- its connection fails (the node died; redis-py's own reconnection is turned off, since
  it would resubscribe silently, with no hooks);
- its node stops answering without closing the connection (frozen, or cut off): each
  link PINGs every `PING_EVERY` seconds when idle and is dead after `DEAD_AFTER` without
  a reply;
- the node says a channel moved (SUNSUBSCRIBE after a slot migration), or the cluster's
  map, read every `CHECK_MAP_EVERY` seconds, names another owner (a failover);
- connecting or subscribing takes longer than `LINK_TIMEOUT`.

Channels that cannot be subscribed now (their shard has no master yet) are retried with
backoff, while the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from surge.backends.redis_cluster import GuardedRedisCluster
from surge.ground.interfaces import Handler

log = logging.getLogger("surge.redis")

PING_EVERY = 1.0  # seconds of silence on a link before it is pinged
DEAD_AFTER = 3.0  # seconds without a word from a link's node: it is dead
CHECK_MAP_EVERY = 5.0  # seconds between reads of the cluster's map
LINK_TIMEOUT = 3.0  # seconds to connect to a node and subscribe there


def call_hooks(hooks: list[Callable[[], None]]) -> None:
    """A bus's reconnect hooks (messages may have been missed), each on its own: one that
    fails is logged and the others still run."""
    for hook in list(hooks):
        try:
            hook()
        except Exception:
            log.exception("reconnect hook failed")


@dataclass(slots=True)
class _Link:
    """The subscriber connection to one node, and the task that reads it."""

    node: str
    client: aioredis.Redis
    pubsub: PubSub
    channels: set[str] = field(default_factory=set)
    reader: asyncio.Task[None] | None = None
    heard: float = field(default_factory=time.monotonic)  # the node's last word


class ShardedBus:
    def __init__(self, cluster: GuardedRedisCluster, prefix: str) -> None:
        self._cluster = cluster
        self._prefix = prefix
        self._handlers: dict[str, list[Handler]] = defaultdict(list)  # full channel name
        self._hooks: list[Callable[[], None]] = []
        self._links: dict[str, _Link] = {}  # node name -> its link
        self._missing: set[str] = set()  # channels not subscribed anywhere now
        self._lock = asyncio.Lock()  # one change of the links at a time
        self._broken = False  # a link failed: every link is made anew
        self._wake = asyncio.Event()  # the keeper has work
        self._keeper: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        await self._cluster.spublish(self._prefix + channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Subscribes now, or, with the cluster unreachable, as soon as it answers."""
        full = self._prefix + channel
        self._handlers[full].append(handler)
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name="redis-sharded-bus")
        if len(self._handlers[full]) > 1:
            return
        async with self._lock:
            if self._broken or not await self._try_listen(full):
                self._missing.add(full)
                self._wake.set()

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    async def _try_listen(self, channel: str) -> bool:
        try:
            async with asyncio.timeout(LINK_TIMEOUT):
                await self._listen(channel)
            return True
        except Exception as exc:
            log.warning("pub/sub: cannot subscribe to %s yet (%r)", channel, exc)
            return False

    async def _listen(self, channel: str) -> None:
        await self._cluster.initialize()  # once: the cluster's map (no-op afterwards)
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise RedisClusterException(f"no node serves the slot of {channel}")
        link = self._links.get(node.name)
        if link is None:
            client = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                socket_connect_timeout=1.0,
                socket_timeout=LINK_TIMEOUT,  # the handshake; reads pass their own timeout
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),  # a lost connection must reach the keeper
                **self._cluster.address.client_options(),
            )
            link = _Link(node.name, client, client.pubsub())
            self._links[node.name] = link
        await link.pubsub.ssubscribe(channel)
        link.channels.add(channel)
        link.heard = time.monotonic()
        if link.reader is None:
            link.reader = asyncio.create_task(self._read(link), name=f"redis-shard-{node.name}")

    async def _read(self, link: _Link) -> None:
        pinged = 0.0
        try:
            while True:
                message = await link.pubsub.get_message(timeout=PING_EVERY)
                now = time.monotonic()
                if message is None:
                    if now - link.heard > DEAD_AFTER:
                        raise TimeoutError(f"{link.node} has not answered for {DEAD_AFTER} s")
                    if now - pinged >= PING_EVERY:
                        pinged = now
                        await link.pubsub.ping()
                    continue
                link.heard = now
                kind = message["type"]
                if kind == "sunsubscribe":  # the channel's slot moved to another node
                    log.warning("pub/sub: %s moved; subscribing anew", message["channel"])
                    break
                if kind != "smessage":
                    continue  # a pong, a subscription's confirmation
                for handler in list(self._handlers.get(message["channel"].decode(), ())):
                    try:
                        handler(message["data"])
                    except Exception:
                        log.exception("pub/sub handler for %s failed", message["channel"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("pub/sub connection to %s lost (%r)", link.node, exc)
        self._broken = True
        self._wake.set()

    async def _keep(self) -> None:
        """Makes the links anew when one broke, subscribes what is missing (with backoff),
        and reads the cluster's map now and then to find owners that changed."""
        delay = 0.05
        while True:
            wait = delay if self._missing else CHECK_MAP_EVERY
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            async with self._lock:
                self._wake.clear()
                if not self._broken and not self._missing and await self._owners_changed():
                    self._broken = True
                if self._broken:
                    self._broken = False
                    await self._close_links()
                    self._missing = set(self._handlers)
                if not self._missing:
                    continue
                with contextlib.suppress(Exception):  # read the map anew (a failover)
                    await self._cluster.nodes_manager.initialize()
                done = {c for c in sorted(self._missing) if await self._try_listen(c)}
                self._missing -= done
            if done:
                log.warning("pub/sub resubscribed; messages sent meanwhile may be lost")
                call_hooks(self._hooks)
            delay = min(delay * 2, 2.0) if self._missing else 0.05

    async def _owners_changed(self) -> bool:
        try:
            await self._cluster.nodes_manager.initialize()
        except Exception as exc:
            log.warning("pub/sub: the cluster's map could not be read (%r)", exc)
            return False
        for link in self._links.values():
            for channel in link.channels:
                owner = self._cluster.get_node_from_key(channel)
                if owner is None or owner.name != link.node:
                    log.warning("pub/sub: %s is served by another node now", channel)
                    return True
        return False

    async def _close_links(self) -> None:
        """Closes every link; each leaves the table only once closed, so a close cut
        short (cancelled) is finished by the next one."""
        while self._links:
            name, link = next(iter(self._links.items()))
            if link.reader is not None and link.reader is not asyncio.current_task():
                link.reader.cancel()
                await asyncio.gather(link.reader, return_exceptions=True)
            with contextlib.suppress(Exception):
                await link.pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await link.client.aclose()
            self._links.pop(name, None)

    async def ping(self) -> None:
        await self._cluster.ping()

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        await self._close_links()
