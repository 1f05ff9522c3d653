"""Every collector Surge exports, registered here and nowhere else.

Each part keeps its counters as plain numbers on itself (`OrderQuery.stats`,
`Purchases.outcomes`, `Hub.stats`...); the functions below, called by the wiring
(surge.app, surge.worker_process), tell the registry where to read them at scrape time.
The names and help texts are the metrics' public contract: deploy/prometheus/alerts.yml
and deploy/grafana/surge.json use them (docs/operations.md lists them).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING

from surge import logs
from surge.metrics import Metrics

if TYPE_CHECKING:
    from surge.backends import Backends
    from surge.http.state import ServerState
    from surge.orders import OrderQuery
    from surge.protect.ratelimit import RateLimiter
    from surge.protect.shedder import Shedder
    from surge.realtime.hub import Hub
    from surge.rpc.server import GrpcStats
    from surge.sales.expiry import ExpirySweep
    from surge.sales.payments import OrderLifecycle
    from surge.sales.purchase import Purchases
    from surge.sales.reconcile import GateKeeper
    from surge.work.worker import Worker


def order_query(metrics: Metrics, query: OrderQuery) -> None:
    stats = query.stats
    metrics.labelled_counter(
        "cache_hits", "Order cache hits by layer", "layer", lambda: stats.cache_hits
    )
    metrics.labelled_counter(
        "cache_misses", "Order cache misses by layer", "layer", lambda: stats.cache_misses
    )
    metrics.counter(
        "cache_errors", "Shared cache operations that failed", lambda: stats.cache_errors
    )
    metrics.counter(
        "db_queries", "Database queries run by the order query", lambda: stats.db_queries
    )
    metrics.counter("db_rows", "Rows the order query read", lambda: stats.db_rows)
    metrics.counter(
        "deadline_exceeded",
        "Requests answered 504 at their deadline",
        lambda: stats.deadline_exceeded,
    )
    metrics.gauge("near_cache_entries", "Entries in the near cache", lambda: len(query.near))


def purchases(metrics: Metrics, made: Purchases, keeper: GateKeeper) -> None:
    metrics.labelled_counter(
        "purchases", "Purchase attempts by outcome", "outcome", lambda: made.outcomes
    )
    for name, doc, attribute in (
        ("gate_reconciliations", "Sale gates reconciled with the database", "runs"),
        ("gate_corrections", "Stock units the gate had wrong, corrected", "corrected"),
        ("gate_stale_reservations", "Stale reservations given back", "dropped"),
    ):
        metrics.counter(name, doc, partial(_read, keeper, attribute))


def payments(metrics: Metrics, made: OrderLifecycle, sweep: ExpirySweep) -> None:
    metrics.labelled_counter(
        "order_transitions",
        "Orders moved by this process, by the state they moved to (paid, cancelled, expired)",
        "to",
        lambda: made.transitions,
    )
    metrics.counter(
        "order_expiry_failures",
        "Expiry sweeps that failed (the database down)",
        partial(_read, sweep, "failures"),
    )


def route_deadlines(metrics: Metrics, deadlines: Mapping[str, float]) -> None:
    metrics.labelled_gauge(
        "route_deadline_seconds",
        "Each API route's deadline (SURGE_DEADLINE_MS, SURGE_WRITE_DEADLINE_MS, "
        "SURGE_ROUTE_DEADLINES)",
        "route",
        lambda: deadlines,
    )


def backends(metrics: Metrics, made: Backends) -> None:
    breakers = made.breakers
    metrics.labelled_gauge(
        "breaker_open",
        "1 while a dependency's circuit breaker is open or probing",
        "dependency",
        lambda: {name: float(b.is_open) for name, b in breakers.items()},
    )
    metrics.labelled_counter(
        "breaker_opened",
        "Times a dependency's circuit breaker opened",
        "dependency",
        lambda: {name: b.opened for name, b in breakers.items()},
    )
    docs = {
        "db_pool_in_use": "Database connections checked out",
        "db_pool_size": "Database connections allowed",
        "redis_in_flight": "Redis commands under way (pool use)",
        "redis_pool_size": "Redis connections allowed",
    }
    for name, read in made.gauges.items():
        metrics.gauge(name, docs[name], read)
    replicas = made.replicas
    if replicas is not None:
        metrics.labelled_gauge(
            "db_replica_lag_seconds",
            "Seconds a read replica is behind the primary at its last probe (-1: down or "
            "not replicating)",
            "replica",
            replicas.lags,
        )
        metrics.labelled_counter(
            "db_replica_reads",
            "Reads a replica answered",
            "replica",
            lambda: {r.name: r.reads for r in replicas.replicas},
        )
        metrics.labelled_counter(
            "db_replica_fallbacks",
            "Replica reads the primary served instead, by reason (no-replica usable, "
            "replica-failed, not-on-replica: ids the replica lacked, confirmed on the primary; "
            "recently-written: orders written in the last max lag + 1 s)",
            "reason",
            lambda: replicas.fallbacks,
        )


def rate_limits(metrics: Metrics, limiter: RateLimiter, made: Backends) -> None:
    metrics.labelled_counter(
        "rate_limited", "Requests refused 429 by class", "class", lambda: limiter.limited
    )
    shared = made.shared_buckets
    metrics.counter(
        "rate_limit_store_errors",
        "Rate-limit verdicts this process made alone because Redis failed",
        lambda: getattr(shared, "failures", 0),
    )
    local = made.local_buckets
    metrics.gauge("rate_limit_local_buckets", "Buckets held in this process", lambda: len(local))


def shedding(metrics: Metrics, shedder: Shedder) -> None:
    metrics.labelled_counter(
        "shed", "Requests refused 503 overloaded, by class", "class", lambda: shedder.shed
    )
    metrics.gauge("shed_limit", "Current limit on concurrent work (reads)", lambda: shedder.limit)
    metrics.gauge(
        "shed_working", "Requests holding a slot (waiting on I/O)", lambda: shedder.working
    )


_HUB_COUNTERS = {
    "messages_in": "WebSocket messages received from clients",
    "messages_out": "Room messages written to WebSocket clients (one per subscriber)",
    "published": "Room messages published from this process",
    "errors": "Client messages answered with an error frame",
    "dropped_slow": "Clients closed as too slow (4008)",
    "heartbeat_timeouts": "Clients dropped for not answering pings",
    "refused": "WebSocket upgrades refused at a connection limit (process 503, user 429)",
}


def grpc(metrics: Metrics, stats: GrpcStats) -> None:
    metrics.labelled_counter(
        "grpc_calls", "gRPC calls answered, by method", "rpc", lambda: stats.calls
    )
    metrics.labelled_counter(
        "grpc_refusals",
        "gRPC calls answered with an error status, by the HTTP status behind it",
        "status",
        lambda: stats.refusals,
    )
    metrics.histogram("grpc_call_seconds", "Time to answer a unary gRPC call", stats.seconds)


def hub(metrics: Metrics, made: Hub) -> None:
    metrics.gauge("ws_connections", "Open WebSocket connections", lambda: len(made.connections))
    metrics.gauge(
        "ws_subscriptions",
        "Room subscriptions of this process's connections",
        lambda: sum(len(members) for members in made.rooms.values()),
    )
    metrics.gauge("ws_rooms", "Rooms with a subscriber in this process", lambda: len(made.rooms))
    for key, doc in _HUB_COUNTERS.items():
        metrics.counter(f"ws_{key}", doc, partial(_item, made.stats, key))
    metrics.histogram(
        "ws_fanout_seconds", "Time to write one room message to every local subscriber", made.fanout
    )


_CONSUMER_COUNTERS = (
    ("handled", "Events handled and acknowledged"),
    ("failures", "Failed attempts at handling an event"),
    ("retries", "Events retried after a failure"),
    ("dead_letters", "Events moved to the dead-letter stream"),
    ("duplicates", "Events skipped as already handled"),
    ("unavailable", "Attempts that found a dependency down"),
)


def worker(metrics: Metrics, made: Worker) -> None:
    relay = made.relay
    metrics.gauge(
        "outbox_lag_seconds", "Age of the oldest outbox row not yet relayed", lambda: relay.lag
    )
    metrics.counter(
        "outbox_published", "Outbox rows relayed to the stream", lambda: relay.published
    )
    metrics.counter("outbox_relay_errors", "Relay passes that failed", lambda: relay.errors)
    metrics.labelled_gauge(
        "stream_pending",
        "Events published but not yet acknowledged, per consumer group",
        "consumer",
        lambda: made.pending,
    )
    metrics.gauge("dead_letters", "Events in the dead-letter stream", lambda: made.dead_letters)
    stats = {c.group: c.stats for c in made.consumers}
    for field, doc in _CONSUMER_COUNTERS:
        metrics.labelled_counter(
            f"consumer_{field}", doc, "consumer", partial(_per_group, stats, attrgetter(field))
        )


def http_server(metrics: Metrics, public: ServerState, internal: ServerState) -> None:
    metrics.gauge("http_in_flight", "Requests being handled", lambda: public.in_flight)
    metrics.gauge("http_connections", "Open HTTP connections", lambda: len(public.connections))
    metrics.counter(
        "http_connections_refused",
        "HTTP connections refused at SURGE_MAX_CONNECTIONS or SURGE_MAX_CONNECTIONS_PER_CLIENT",
        lambda: public.refused_connections + internal.refused_connections,
    )


def log_writer(metrics: Metrics) -> None:
    metrics.counter(
        "log_records_dropped",
        "Log records dropped because the log writer fell behind",
        lambda: logs.dropped,
    )


def _read(owner: object, attribute: str) -> float:
    return float(getattr(owner, attribute))


def _item(values: Mapping[str, float], key: str) -> float:
    return values[key]


def _per_group(stats: Mapping[str, object], read: attrgetter[float]) -> dict[str, float]:
    return {group: read(s) for group, s in stats.items()}
