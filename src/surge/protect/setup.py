"""Builds the protection layer from Settings (called by surge.app)."""

from __future__ import annotations

import contextlib
import logging

from surge.auth import Authenticator
from surge.backends import Backends
from surge.config import ORDER_QUERY, Settings
from surge.metrics import Metrics
from surge.protect.bucket import LocalBuckets, Policy
from surge.protect.clients import Clients
from surge.protect.ratelimit import Buckets, RateLimiter
from surge.protect.shedder import Shedder, ShedSettings

log = logging.getLogger("surge.protect")


def rate_limiter(
    settings: Settings,
    backends: Backends,
    auth: Authenticator,
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
) -> RateLimiter | None:
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
    local = LocalBuckets()
    stores: dict[str, Buckets] = dict.fromkeys(policies, local)
    shared = set()  # the classes decided in Redis
    if settings.rate_limit_store == "redis":
        shared = set(policies)
    elif settings.rate_limit_store == "auto" and backends.redis_client is not None:
        shared = {"write"} & set(policies)  # reads stay on the fast path: docs/protection.md
    store_errors = [0]
    if shared:
        from surge.backends.redis_limits import RedisBuckets

        def on_error(exc: Exception) -> None:
            if not store_errors[0] % 1000:  # the first, then every 1000th
                log.warning("rate limits: Redis failed (%s); this process decides", exc)
            store_errors[0] += 1

        redis_buckets = RedisBuckets(backends.redis_client, settings.redis_prefix, local, on_error)
        stack.push_async_callback(redis_buckets.close)
        stores.update(dict.fromkeys(shared, redis_buckets))
    limiter = RateLimiter(policies, stores, Clients(auth, settings.trusted_networks))
    metrics.labelled_counter(
        "rate_limited", "Requests refused 429 by class", "class", lambda: limiter.limited
    )
    metrics.counter(
        "rate_limit_store_errors",
        "Rate-limit verdicts this process made alone because Redis failed",
        lambda: store_errors[0],
    )
    metrics.gauge("rate_limit_local_buckets", "Buckets held in this process", lambda: len(local))
    return limiter


def shedder(
    settings: Settings, metrics: Metrics, stack: contextlib.AsyncExitStack
) -> Shedder | None:
    if settings.shed == "off":
        return None
    limits = ShedSettings(
        # start at the cap: a fresh process takes a burst, then latency teaches the limit
        initial=float(settings.max_in_flight),
        min_limit=float(settings.shed_min_limit),
        max_limit=float(settings.max_in_flight),
        tolerance=settings.shed_tolerance,
        # by default a mean past half the order query's deadline is queueing (the
        # deadline itself caps what is measured: a request cut off at 50 ms reports 50 ms)
        target=settings.shed_target_ms / 1000 or settings.route_deadline(ORDER_QUERY) / 2,
        adaptive=settings.shed == "adaptive",
    )
    made = Shedder(limits)
    made.start()
    stack.callback(made.stop)
    metrics.labelled_counter(
        "shed", "Requests refused 503 overloaded, by class", "class", lambda: made.shed
    )
    metrics.gauge("shed_limit", "Current limit on concurrent work (reads)", lambda: made.limit)
    metrics.gauge("shed_working", "Requests holding a slot (waiting on I/O)", lambda: made.working)
    return made
