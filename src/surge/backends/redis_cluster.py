"""Redis Cluster: the client (pub/sub on the cluster's shards: redis_sharded_bus).

`SURGE_REDIS_URL=redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]` names seed
nodes (`rediss+cluster://` for TLS). redis-py's cluster client learns the rest of the
cluster from them and follows failovers and slot moves (MOVED, ASK) by itself.

What makes the rest of Surge work unchanged on a cluster is its key names: every command
or script that touches several keys touches one hash slot (`{sale:ID}` for the gate,
`{rl}` for the rate limits, `{PREFIXevents}` for the event stream, `{rt:N}` for a shard
of the hub's rooms). The order cache's MGET is the one command whose keys spread over
the cluster: it is split per slot (`mget_nonatomic`; a cache read needs no atomicity).

Pub/sub: a plain PUBLISH on a cluster is copied to every node over the cluster bus, so
every message costs every shard. Here every channel is a shard channel instead (SPUBLISH
/ SSUBSCRIBE): a message goes to the node that owns its channel's slot, and each process
holds one subscriber connection per such node (`surge.backends.redis_sharded_bus`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException

from surge.backends.breaker import Breaker, Guard
from surge.ground.errors import count_as_unavailable
from surge.ground.redis_urls import ClusterAddress, parse_cluster_url

log = logging.getLogger("surge.redis")
# a slot with no master (mid-failover) escapes as RedisClusterException, which is not a
# RedisError: a 503 like any Redis failure, not a 500
count_as_unavailable(RedisClusterException)


class GuardedRedisCluster(RedisCluster):
    """The cluster client with the circuit breaker around every command and pipeline, as
    `surge.backends.redis.GuardedRedis`."""

    breaker: Breaker
    _guard: Guard
    address: ClusterAddress

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._guard():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        pipe = _GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe._guard = self._guard
        return pipe


class _GuardedClusterPipeline(ClusterPipeline):
    _guard: Guard

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with self._guard():
            return await super().execute(raise_on_error, allow_redirections)


def connect_cluster(
    url: str,
    pool_size: int,
    command_timeout: float,
    is_down: Callable[[BaseException], bool],
) -> GuardedRedisCluster:
    """A cluster client with `pool_size` connections per node. A command that meets a
    dead node is retried 3 times within about a tenth of a second (each retry after the
    cluster's map is read anew): past that, the slot is being failed over, and the
    breaker answers for it until a replica has taken over."""
    address = parse_cluster_url(url)
    client = GuardedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        max_connections=pool_size,
        socket_connect_timeout=command_timeout,
        socket_timeout=command_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 3),
        **address.client_options(),
    )
    client.address = address
    client.breaker = Breaker("redis")
    client._guard = Guard(client.breaker, is_down)
    return client
