"""The settings that bound what clients can make a process do: the HTTP engine's limits,
the WebSocket hub's, rate limits, load shedding, readiness and the trusted proxies.
`surge.config.Settings` extends `LimitSettings`; everything else about settings (the
environment, flags, checks) is there."""

from __future__ import annotations

import dataclasses

from surge import setting_parsers as parse
from surge.setting_parsers import setting


@dataclasses.dataclass(frozen=True, slots=True)
class LimitSettings:
    shutdown_delay: float = setting(
        2.0, parse.non_negative_float, "seconds readiness is 503 before intake stops (SIGTERM only)"
    )
    drain_timeout: float = setting(
        5.0, parse.non_negative_float, "seconds in-flight requests get to finish"
    )
    keepalive_timeout: float = setting(
        5.0, parse.non_negative_float, "idle keep-alive connections close after"
    )
    max_body_bytes: int = setting(
        65_536, parse.positive_int, "largest accepted request body (then 413)"
    )
    max_header_bytes: int = setting(
        16_384,
        parse.positive_int,
        "largest request line + header block, trailers included (then 414/431)",
    )
    header_timeout: float = setting(
        10.0,
        parse.positive_float,
        "seconds from a request's first byte to the end of its headers (then 408, closed)",
    )
    body_min_rate: int = setting(
        1024,
        parse.positive_int,
        "bytes/s a body must average after a grace of SURGE_HEADER_TIMEOUT (then 408, closed)",
    )
    send_timeout: float = setting(
        10.0,
        parse.positive_float,
        "seconds a client may leave its answers unread before the connection is cut",
    )
    max_connections: int = setting(
        10_000,
        parse.positive_int,
        "HTTP connections per process (WebSockets not counted); more are answered 503 and closed",
    )
    max_connections_per_client: int = setting(
        256,
        parse.positive_int,
        "HTTP connections per client address and process (trusted proxies exempt); more "
        "are answered 503 and closed",
    )
    # 0: see http.state.open_files_budget
    ws_max_connections: int = setting(
        0,
        parse.non_negative_int,
        "WebSocket connections per process (then 503); 0 = the open-files limit less 500",
    )
    ws_max_message: int = setting(
        65_536, parse.positive_int, "largest client WebSocket message, bytes (then 1009)"
    )
    ws_max_rooms: int = setting(50, parse.positive_int, "rooms one WebSocket connection may join")
    ws_publish_rate: int = setting(
        50, parse.positive_int, "publishes a second per connection, and burst"
    )
    ws_send_buffer: int = setting(
        1_048_576,
        parse.positive_int,
        "bytes queued for a WebSocket client before it is closed as too slow (4008)",
    )
    ws_ping_interval: float = setting(20.0, parse.positive_float, "seconds between WebSocket pings")
    ws_ping_timeout: float = setting(
        10.0, parse.positive_float, "a silent peer is dropped this long after a ping"
    )
    ws_history: int = setting(
        100, parse.non_negative_int, "messages kept per chat room for resume (0 = none)"
    )
    ws_history_bytes: int = setting(
        16 * 1024 * 1024,
        parse.positive_int,
        "bytes of chat history kept in this process in all (at most 1/16 of it per room)",
    )
    ws_max_per_user: int = setting(
        16,
        parse.positive_int,
        "WebSocket connections one user (token) may hold per process (then 429)",
    )
    ws_publish_bytes: int = setting(
        65_536,
        parse.positive_int,
        "bytes a user may publish a second across its connections (burst: 4 s worth)",
    )
    ws_fanout_threads: int = setting(
        -1,
        parse.fanout_threads,
        "threads writing a WebSocket fan-out beside the event loop; -1 = one per core (max 3)",
    )
    ws_origins: str = setting(
        "", str, "comma-separated Origins allowed to open /ws (scheme://host[:port]); empty = any"
    )
    rate_limit_read: tuple[float, int] | None = setting(
        (20.0, 40),
        parse.parse_policy,
        "GET requests per caller: `RATE/BURST` a second (`20/40`); `off` = no limit",
    )
    rate_limit_write: tuple[float, int] | None = setting(
        (5.0, 10),
        parse.parse_policy,
        "other requests (purchases, sale admin) per caller: `RATE/BURST`; `off` = no limit",
    )
    rate_limit_store: str = setting(
        "auto",
        parse.choice(("auto", "local", "redis")),
        "where buckets live: `auto` = writes in Redis when configured (one limit across "
        "processes), reads in each process; `redis` = both in Redis; `local` = both here",
    )
    shed: str = setting(
        "adaptive",
        parse.choice(("adaptive", "cap", "off")),
        "load shedding: `adaptive` (Gradient2 limit on concurrent work, capped), `cap` "
        "(only SURGE_MAX_IN_FLIGHT), `off`",
    )
    max_in_flight: int = setting(
        1000,
        parse.positive_int,
        "most requests waiting on I/O at once per process (then 503 `overloaded`)",
    )
    shed_min_limit: int = setting(
        20, parse.positive_int, "the adaptive limit never goes below this"
    )
    shed_tolerance: float = setting(
        1.5,
        parse.positive_float,
        "latency over its long-run average by this factor counts as queueing (>= 1)",
    )
    shed_target_ms: int = setting(
        0,
        parse.non_negative_int,
        "a window's mean latency over this shrinks the adaptive limit; 0 = half the order "
        "query's deadline",
    )
    ready_requires: tuple[str, ...] = setting(
        (),
        parse.dependencies,
        "dependencies (`database`, `redis`) whose failure makes /readyz 503; "
        "empty = none: a shared dependency down leaves every pod `degraded` but in service",
    )
    trusted_proxies: str = setting(
        "",
        parse.networks,
        "comma-separated CIDRs of proxies whose X-Forwarded-For names the client",
    )
