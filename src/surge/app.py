"""The composition root: builds every part from Settings, with no import-time I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

from surge import logs
from surge.api import ops
from surge.auth import Authenticator, load_or_create_secret
from surge.backends import open_backends
from surge.backends.redis import RedisCache
from surge.backends.sql import breaker as sql_breaker
from surge.catalog import Catalog
from surge.config import ConfigError, Settings
from surge.feed import StockFeed
from surge.http.router import Router
from surge.metrics import Metrics
from surge.orders import OrderQuery
from surge.protect.setup import rate_limiter, shedder
from surge.purchase import Purchases
from surge.realtime.setup import start_hub
from surge.sale_cache import SaleConfigs, SoldOutBoard

log = logging.getLogger("surge.app")
# the routes that answer 504 past a deadline (the probes, /metrics and /ws have none)
_DEADLINED = frozenset(
    ("/orders/{id}", "/sales", "/sales/{id}", "/sales/{id}/orders", "/users/me/orders")
)


class App:
    """Everything one server process serves; `start` opens it, `close` undoes it in reverse."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.router = Router()  # the public port: the API
        self.internal_router = Router()  # the internal listener: metrics, debug, probes
        self.draining = False
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        settings = self.settings
        stack = self._stack
        backends = await open_backends(settings, stack, self._count_cache_error)
        await backends.warm()
        secret = settings.jwt_secret or load_or_create_secret(settings.secret_path)
        self.auth = Authenticator(
            secret, settings.token_cache_size, settings.token_cache_bytes, settings.jwt_leeway
        )
        self.limiter = rate_limiter(settings, backends, self.auth, self.metrics, stack)
        self.orders = OrderQuery(
            settings, self.auth, backends.cache, backends.store, backends.bus, self.metrics
        )
        self.shedder = shedder(settings, self.metrics, stack)
        self.orders.shedder = self.shedder
        await self.orders.start()
        stack.push_async_callback(self.orders.close)

        probes = {"database": backends.store.ping}
        if backends.redis:
            probes["redis"] = backends.cache.ping
        readiness = ops.Readiness(probes, lambda: self.draining, frozenset(settings.ready_requires))
        self.router.add("GET", "/orders/{id}", self.orders.handle)
        configs = SaleConfigs(backends.sales)
        self.sold_out = SoldOutBoard(backends.bus, backends.gate)
        await self.sold_out.start()
        self.hub = await start_hub(settings, backends, self.auth, self.router, self.metrics)
        stack.push_async_callback(self.hub.close)  # after the feed's last update (reverse)
        self.feed = StockFeed(self.hub)
        stack.push_async_callback(self.feed.close)
        purchases = Purchases(
            self.auth,
            backends.sales,
            backends.gate,
            configs,
            self.sold_out,
            self.feed,
            self.metrics.purchases,
            settings.route_deadline("POST /sales/{id}/orders"),
            self.orders.invalidate,
        )
        stack.push_async_callback(purchases.close)  # its bookkeeping, before Redis closes
        await self._keep_gates(purchases, stack)
        catalog = Catalog(
            self.auth, backends.sales, backends.gate, configs, settings.route_deadline
        )
        self.router.add("POST", "/sales", catalog.create)
        self.router.add("GET", "/sales/{id}", catalog.view)
        self.router.add("POST", "/sales/{id}/orders", purchases.handle)
        self.router.add("GET", "/users/me/orders", catalog.my_orders)
        ops.add_routes(self.router, self.internal_router, self.metrics, readiness, self.auth)
        # Each API route's deadline, for alerts on latency against it (deploy/prometheus):
        # per template, the longest of its methods' (the histograms are per template).
        deadlines: dict[str, float] = {}
        for method, template in (r.split(" ", 1) for r in self.router.describe()):
            if template in _DEADLINED:
                seconds = settings.route_deadline(f"{method} {template}")
                deadlines[template] = max(seconds, deadlines.get(template, 0.0))
        self.metrics.labelled_gauge(
            "route_deadline_seconds",
            "Each API route's deadline (SURGE_DEADLINE_MS, SURGE_WRITE_DEADLINE_MS, "
            "SURGE_ROUTE_DEADLINES)",
            "route",
            lambda: deadlines,
        )
        for route, _ in settings.route_deadlines:
            method, _, template = route.partition(" ")
            if method not in self.router.methods_of(template):
                known = ", ".join(self.router.describe())
                raise ConfigError(f"SURGE_ROUTE_DEADLINES: no route {route!r}; routes: {known}")

        store = backends.store
        breakers = {"database": sql_breaker(backends.sales.engine)}
        if backends.redis_client is not None:
            breakers["redis"] = backends.redis_client.breaker
        self.metrics.labelled_gauge(
            "breaker_open",
            "1 while a dependency's circuit breaker is open or probing",
            "dependency",
            lambda: {name: float(b.is_open) for name, b in breakers.items()},
        )
        self.metrics.labelled_counter(
            "breaker_opened",
            "Times a dependency's circuit breaker opened",
            "dependency",
            lambda: {name: b.opened for name, b in breakers.items()},
        )
        self.metrics.gauge(
            "db_pool_in_use", "Database connections checked out", lambda: store.in_use
        )
        self.metrics.gauge("db_pool_size", "Database connections allowed", lambda: store.size)
        self.metrics.gauge(
            "near_cache_entries", "Entries in the near cache", lambda: len(self.orders.near)
        )
        cache = backends.cache
        if isinstance(cache, RedisCache):
            self.metrics.gauge(
                "redis_in_flight", "Redis commands under way (pool use)", lambda: cache.in_flight
            )
            self.metrics.gauge(
                "redis_pool_size", "Redis connections allowed", lambda: settings.redis_pool_size
            )
        if settings.runs_inline_worker:
            from surge.work.worker import Worker, open_stream

            stream = await open_stream(settings, stack)
            self.worker = Worker(settings, backends.sales.engine, stream, self.metrics)
            await self.worker.start()
            stack.push_async_callback(self.worker.stop)  # first to stop, before the pools
        self.metrics.counter(
            "log_records_dropped",
            "Log records dropped because the log writer fell behind",
            lambda: logs.dropped,
        )
        lag = asyncio.create_task(self.metrics.watch_loop_lag(), name="loop-lag-watch")
        stack.push_async_callback(_cancel, lag)
        if self.metrics.share_dir is not None:
            share = asyncio.create_task(self.metrics.share(), name="metrics-share")
            stack.push_async_callback(_cancel, share)

    async def _keep_gates(self, purchases: Purchases, stack: contextlib.AsyncExitStack) -> None:
        """Reconciles every open sale's gate with the database now, then every
        SURGE_GATE_RECONCILE_INTERVAL seconds (surge.reconcile)."""
        keeper = purchases.keeper
        interval = self.settings.gate_reconcile_interval
        try:
            count = await keeper.open_sales()
        except Exception as exc:  # Redis (or the database) down: start degraded
            # a sale's gate is then reconciled by its first purchase that finds it missing
            log.warning("stock gates not reconciled at start-up (%s): each on first use", exc)
        else:
            if count:
                log.info("reconciled the stock gate of %d open sales with the database", count)
        if interval > 0:
            task = asyncio.create_task(keeper.run(interval), name="gate-reconcile")
            stack.push_async_callback(_cancel, task)
        for name, doc, attribute in (
            ("gate_reconciliations", "Sale gates reconciled with the database", "runs"),
            ("gate_corrections", "Stock units the gate had wrong, corrected", "corrected"),
            ("gate_stale_reservations", "Stale reservations given back", "dropped"),
        ):
            self.metrics.counter(name, doc, partial(_read, keeper, attribute))

    def _count_cache_error(self, _exc: Exception) -> None:
        self.metrics.cache_errors += 1

    async def close(self) -> None:
        await self._stack.aclose()


def _read(owner: object, attribute: str) -> float:
    return float(getattr(owner, attribute))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
