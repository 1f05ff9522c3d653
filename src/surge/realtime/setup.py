"""Builds the hub for the App: its backplane, its route and its metrics."""

from __future__ import annotations

from importlib import resources

from surge.auth import Authenticator
from surge.backends import Backends
from surge.backends.memory_backplane import LocalBackplane
from surge.backends.redis_backplane import RedisBackplane
from surge.config import Settings
from surge.ground.rooms import Backplane
from surge.ground.web import response
from surge.http.router import Router
from surge.metrics import Metrics
from surge.realtime.endpoint import Endpoint, limits_of
from surge.realtime.hub import Hub

HTML = b"text/html; charset=utf-8"
# a page to watch a sale's stock and chat from a browser (docs/realtime.md)
DEMO_PAGE = (resources.files("surge.realtime") / "demo.html").read_bytes()


async def start_hub(
    settings: Settings, backends: Backends, auth: Authenticator, router: Router, metrics: Metrics
) -> Hub:
    backplane: Backplane = (
        RedisBackplane(
            backends.redis_client, backends.bus, settings.redis_prefix, settings.ws_history_bytes
        )
        if backends.redis_client is not None
        else LocalBackplane(settings.ws_history_bytes)
    )
    hub = Hub(limits_of(settings), backplane)
    await hub.start()
    # None: no HTTP rate limit (the hub has its own limits; an upgrade cannot wait for a
    # verdict from Redis)
    router.add("GET", "/ws", Endpoint(hub, auth, settings.ws_origins).handle, None)
    page = response(200, DEMO_PAGE, HTML, (("cache-control", "no-cache"),))
    router.add("GET", "/demo", lambda _request: page)
    metrics.gauge("ws_connections", "Open WebSocket connections", lambda: len(hub.connections))
    metrics.gauge(
        "ws_subscriptions",
        "Room subscriptions of this process's connections",
        lambda: sum(len(members) for members in hub.rooms.values()),
    )
    metrics.gauge("ws_rooms", "Rooms with a subscriber in this process", lambda: len(hub.rooms))
    counters = {
        "messages_in": "WebSocket messages received from clients",
        "messages_out": "Room messages written to WebSocket clients (one per subscriber)",
        "published": "Room messages published from this process",
        "errors": "Client messages answered with an error frame",
        "dropped_slow": "Clients closed as too slow (4008)",
        "heartbeat_timeouts": "Clients dropped for not answering pings",
        "refused": "WebSocket upgrades refused at a connection limit (process 503, user 429)",
    }
    for key, doc in counters.items():
        metrics.counter(f"ws_{key}", doc, lambda key=key: hub.stats[key])  # type: ignore[misc]
    metrics.histogram(
        "ws_fanout_seconds", "Time to write one room message to every local subscriber", hub.fanout
    )
    return hub
