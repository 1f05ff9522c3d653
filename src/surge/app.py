"""The composition root: the one place that reads Settings and builds every part.

Everything is built here, in dependency order, each part handed what it needs in its
constructor (nothing is assigned onto an object after it is made); `close` undoes it in
reverse. Core (surge.orders, surge.sales.purchase, surge.sales.catalog, the hub, the consumers) sees
plain values and the ground floor's interfaces, never the settings object or a backend
module; the backends come from the one factory (surge.backends); the metrics are
registered in surge.metrics.collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import resources

from surge.api import ops
from surge.auth import Authenticator, load_or_create_secret
from surge.backends import (
    BackendOptions,
    Backends,
    open_backends,
    open_mailbox,
    open_outbox,
    open_stream,
)
from surge.config import ORDER_QUERY, ConfigError, Settings
from surge.ground.buckets import Buckets, Policy
from surge.ground.interfaces import Store, Stream
from surge.ground.web import response
from surge.http.router import Router
from surge.http.state import open_files_budget
from surge.metrics import Metrics, collectors
from surge.orders import OrderQuery, OrderQueryOptions, OrderStats
from surge.protect.clients import Clients
from surge.protect.ratelimit import RateLimiter
from surge.protect.shedder import Shedder, ShedSettings
from surge.realtime.endpoint import Endpoint
from surge.realtime.fanout import default_helpers
from surge.realtime.hub import Hub
from surge.realtime.limits import Limits
from surge.realtime.rooms_api import RoomsApi
from surge.sales.cache import SaleConfigs, SoldOutBoard
from surge.sales.catalog import Catalog
from surge.sales.expiry import ExpirySweep
from surge.sales.feed import StockFeed, UserEvents
from surge.sales.listing import SaleList
from surge.sales.payments import OrderLifecycle
from surge.sales.purchase import Purchases
from surge.sales.restock import StockBack
from surge.work.audit import AuditLog
from surge.work.mail import Notify
from surge.work.worker import Worker, WorkerOptions, worker_name

log = logging.getLogger("surge.app")
# the routes that answer 504 past a deadline (the probes, /metrics and /ws have none)
_DEADLINED = frozenset(
    (
        "/orders/{id}",
        "/orders/{id}/pay",
        "/orders/{id}/cancel",
        "/sales",
        "/sales/{id}",
        "/sales/{id}/orders",
        "/users/me/orders",
    )
)
HTML = b"text/html; charset=utf-8"
# the showcase page: open sales with live stock, buying, order events, chat (docs/realtime.md)
DEMO_PAGE = (resources.files("surge.realtime") / "demo.html").read_bytes()


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
        settings, stack, metrics = self.settings, self._stack, self.metrics
        order_stats = OrderStats()
        backends = await open_backends(backend_options(settings), stack, order_stats.cache_failed)
        await backends.warm()
        collectors.backends(metrics, backends)
        secret = settings.jwt_secret or load_or_create_secret(settings.secret_path)
        self.auth = Authenticator(
            secret, settings.token_cache_size, settings.token_cache_bytes, settings.jwt_leeway
        )
        self.limiter = rate_limiter(settings, backends, self.auth)
        if self.limiter is not None:
            collectors.rate_limits(metrics, self.limiter, backends)
        self.shedder = shedder(settings)
        if self.shedder is not None:
            self.shedder.start()
            stack.callback(self.shedder.stop)
            collectors.shedding(metrics, self.shedder)

        self.orders = OrderQuery(
            order_query_options(settings),
            self.auth,
            backends.cache,
            backends.store,
            backends.bus,
            order_stats,
            self.shedder,
        )
        await self.orders.start()
        stack.push_async_callback(self.orders.close)
        collectors.order_query(metrics, self.orders)
        self.router.add("GET", "/orders/{id}", self.orders.handle)

        self.hub = Hub(hub_limits(settings), backends.backplane)
        await self.hub.start()
        stack.push_async_callback(self.hub.close)  # after the feed's last update (reverse)
        collectors.hub(metrics, self.hub)
        # no HTTP rate limit (None): the hub has its own limits, and an upgrade cannot wait
        # for a verdict from Redis
        endpoint = Endpoint(self.hub, self.auth, settings.ws_origins)
        self.router.add("GET", "/ws", endpoint.handle, None)
        rooms = RoomsApi(
            self.auth, self.hub, settings.route_deadline("POST /rooms/{room}/messages")
        )
        self.router.add("POST", "/rooms/{room}/messages", rooms.publish)
        self.router.add("GET", "/rooms/{room}", rooms.presence)
        page = response(200, DEMO_PAGE, HTML, (("cache-control", "no-cache"),))
        self.router.add("GET", "/demo", lambda _request: page)
        self.feed = StockFeed(self.hub, backends.gate.remaining)
        stack.push_async_callback(self.feed.close)

        await self._sales(backends)
        readiness = ops.Readiness(
            backends.probes, lambda: self.draining, frozenset(settings.ready_requires)
        )
        ops.add_routes(self.router, self.internal_router, metrics, readiness, self.auth)
        collectors.route_deadlines(metrics, self._route_deadlines())

        if settings.runs_inline_worker:
            stream = await open_stream(backend_options(settings), stack)
            self.worker = side_worker(settings, backends.store, stream, self.hub.publish)
            collectors.worker(metrics, self.worker)
            await self.worker.start()
            stack.push_async_callback(self.worker.stop)  # first to stop, before the pools
        collectors.log_writer(metrics)
        lag = asyncio.create_task(metrics.watch_loop_lag(), name="loop-lag-watch")
        stack.push_async_callback(_cancel, lag)
        if metrics.share_dir is not None:
            share = asyncio.create_task(metrics.share(), name="metrics-share")
            stack.push_async_callback(_cancel, share)

    async def _sales(self, backends: Backends) -> None:
        """The flash sale: purchases, the catalogue, and the keeping of the stock gates."""
        settings, stack = self.settings, self._stack
        configs = SaleConfigs(backends.sales)
        self.sold_out = SoldOutBoard(backends.bus, backends.gate)
        await self.sold_out.start()
        purchases = Purchases(
            self.auth,
            backends.sales,
            backends.gate,
            configs,
            self.sold_out,
            self.feed,
            settings.route_deadline("POST /sales/{id}/orders"),
            self.orders.invalidate,
            UserEvents(self.hub),
        )
        stack.push_async_callback(purchases.close)  # its bookkeeping, before Redis closes
        collectors.purchases(self.metrics, purchases, purchases.keeper)
        await self._keep_gates(purchases)
        catalog = Catalog(
            self.auth, backends.sales, backends.gate, configs, settings.route_deadline
        )
        self.router.add("POST", "/sales", catalog.create)
        listing = SaleList(backends.sales, backends.gate, settings.route_deadline("GET /sales"))
        self.router.add("GET", "/sales", listing.handle)
        self.router.add("GET", "/sales/{id}", catalog.view)
        self.router.add("POST", "/sales/{id}/orders", purchases.handle)
        self.router.add("GET", "/users/me/orders", catalog.my_orders)
        self._payments(backends, configs)

    def _payments(self, backends: Backends, configs: SaleConfigs) -> None:
        """An order after its purchase: payment, cancellation, expiry (docs/sales.md)."""
        assert backends.order_states is not None
        lifecycle = OrderLifecycle(
            self.auth,
            backends.order_states,
            backends.gate,
            StockBack(configs, self.feed, self.sold_out),
            self.orders.invalidate,
            UserEvents(self.hub),
            self.settings.route_deadline,
        )
        self._stack.push_async_callback(lifecycle.close)  # before the pools close
        self.router.add("POST", "/orders/{id}/pay", lifecycle.pay)
        self.router.add("POST", "/orders/{id}/cancel", lifecycle.cancel)
        sweep = ExpirySweep(backends.order_states, lifecycle.moved)
        collectors.payments(self.metrics, lifecycle, sweep)
        task = asyncio.create_task(sweep.run(), name="order-expiry")
        self._stack.push_async_callback(_cancel, task)

    async def _keep_gates(self, purchases: Purchases) -> None:
        """Reconciles every open sale's gate with the database now, then every
        SURGE_GATE_RECONCILE_INTERVAL seconds (surge.sales.reconcile)."""
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
            self._stack.push_async_callback(_cancel, task)

    def _route_deadlines(self) -> dict[str, float]:
        """Each API route's deadline, for alerts on latency against it (deploy/prometheus):
        per template, the longest of its methods' (the histograms are per template)."""
        settings = self.settings
        for route, _ in settings.route_deadlines:
            method, _, template = route.partition(" ")
            if method not in self.router.methods_of(template):
                known = ", ".join(self.router.describe())
                raise ConfigError(f"SURGE_ROUTE_DEADLINES: no route {route!r}; routes: {known}")
        deadlines: dict[str, float] = {}
        for method, template in (r.split(" ", 1) for r in self.router.describe()):
            if template in _DEADLINED:
                seconds = settings.route_deadline(f"{method} {template}")
                deadlines[template] = max(seconds, deadlines.get(template, 0.0))
        return deadlines

    async def close(self) -> None:
        await self._stack.aclose()


# -- from Settings to each part's own options -------------------------------------------------


def backend_options(settings: Settings) -> BackendOptions:
    return BackendOptions(
        database_url=settings.database_url,
        replica_urls=settings.database_replica_url,
        replica_max_lag=settings.database_replica_max_lag,
        redis_url=settings.redis_url,
        prefix=settings.redis_prefix,
        db_pool_size=settings.db_pool_size,
        redis_pool_size=settings.redis_pool_size,
        cache_entries=max(settings.near_cache_size * 2, 100_000),
        history_bytes=settings.ws_history_bytes,
        data_dir=settings.data_dir,
        dedup_ttl=settings.dedup_ttl,
        pay_window=settings.pay_window,
        # a connection for each event in flight in either group, the two blocking reads,
        # the relay and the gauges
        stream_pool_size=2 * settings.worker_concurrency + 8,
    )


def side_worker(
    settings: Settings, store: Store, stream: Stream, notify: Notify | None = None
) -> Worker:
    """The outbox relay and the consumers (mail, audit) of one process; `notify`
    publishes into rooms (the buyer's `mail-sent`)."""
    name = worker_name()
    options = WorkerOptions(
        drain_timeout=settings.drain_timeout,
        outbox_poll=settings.outbox_poll,
        outbox_retention=settings.outbox_retention,
        concurrency=settings.worker_concurrency,
        max_attempts=settings.worker_max_attempts,
        claim_idle=settings.worker_claim_idle,
        mail_from=settings.mail_from,
        mail_domain=settings.mail_domain,
    )
    mailbox = open_mailbox(settings.smtp_url, settings.data_dir / "mail.mbox")
    audit = AuditLog(settings.audit_path)
    return Worker(options, open_outbox(store, name), stream, mailbox, audit, name, notify)


def order_query_options(settings: Settings) -> OrderQueryOptions:
    return OrderQueryOptions(
        deadline=settings.route_deadline(ORDER_QUERY),
        cache_ttl=settings.cache_ttl,
        cache_jitter=settings.cache_jitter,
        negative_ttl=settings.negative_ttl,
        near_cache_size=settings.near_cache_size,
        near_cache_ttl=settings.near_cache_ttl,
    )


def hub_limits(settings: Settings) -> Limits:
    return Limits(
        # the open-files budget: upgraded connections share it with the HTTP ones, and a
        # new HTTP connection is refused (503) once the two fill it (surge.http.state)
        max_connections=settings.ws_max_connections or open_files_budget(),
        max_message=settings.ws_max_message,
        max_rooms=settings.ws_max_rooms,
        publish_rate=settings.ws_publish_rate,
        send_buffer=settings.ws_send_buffer,
        ping_interval=settings.ws_ping_interval,
        ping_timeout=settings.ws_ping_timeout,
        history=settings.ws_history,
        max_per_user=settings.ws_max_per_user,
        publish_bytes=settings.ws_publish_bytes,
        fanout_threads=(
            settings.ws_fanout_threads if settings.ws_fanout_threads >= 0 else default_helpers()
        ),
    )


def rate_limiter(settings: Settings, backends: Backends, auth: Authenticator) -> RateLimiter | None:
    policies = {
        name: Policy(name, *figures)
        for name, figures in (
            ("read", settings.rate_limit_read),
            ("write", settings.rate_limit_write),
        )
        if figures is not None
    }
    if not policies:
        return None
    stores: dict[str, Buckets] = dict.fromkeys(policies, backends.local_buckets)
    shared: set[str] = set()  # the classes decided in Redis
    if settings.rate_limit_store == "redis":
        shared = set(policies)
    elif settings.rate_limit_store == "auto":
        shared = {"write"} & set(policies)  # reads stay on the fast path: docs/protection.md
    if backends.shared_buckets is not None:
        stores.update(dict.fromkeys(shared, backends.shared_buckets))
    return RateLimiter(policies, stores, Clients(auth, settings.trusted_networks))


def shedder(settings: Settings) -> Shedder | None:
    if settings.shed == "off":
        return None
    return Shedder(
        ShedSettings(
            # start at the cap: a fresh process takes a burst, then latency teaches it
            initial=float(settings.max_in_flight),
            min_limit=float(settings.shed_min_limit),
            max_limit=float(settings.max_in_flight),
            tolerance=settings.shed_tolerance,
            # by default a mean past half the order query's deadline is queueing (the
            # deadline itself caps what is measured: a request cut off at 50 ms reports
            # 50 ms)
            target=settings.shed_target_ms / 1000 or settings.route_deadline(ORDER_QUERY) / 2,
            adaptive=settings.shed == "adaptive",
        )
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
