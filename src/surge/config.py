"""Settings: one frozen object built once from `SURGE_*` environment variables and CLI flags.

This module is the only place that reads the environment. Every setting has one entry in
`FIELDS` that gives its env name, its CLI flag, its parser and its documentation, so the
README table and `surge serve --help` cannot drift apart.

Written by hand rather than with pydantic-settings: we want exactly one clear line per bad
value (pydantic prints multi-line reports), flags generated from the same table, and no
heavy import in every worker process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from surge import setting_parsers as parse

DATABASE_SCHEMES = ("sqlite", "mysql", "mariadb", "postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss")
SMTP_SCHEMES = ("smtp", "smtps")
INLINE_WORKER = ("auto", "on", "off")
ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


ORDER_QUERY = "GET /orders/{id}"


class ConfigError(ValueError):
    """A setting has a bad value; the message is one line meant for the operator."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = ""
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    internal_host: str = ""  # "": the same address as `host`
    internal_port: int = 9181
    workers: int = 1
    jwt_secret: str | None = None
    data_dir: Path = Path("surge-data")
    smtp_url: str | None = None
    env: str = "development"
    log_level: str = "info"
    log_format: str = "json"
    access_log: float = 0.0  # share of requests logged (0: none, 1: all)
    db_pool_size: int = 10
    redis_pool_size: int = 32
    deadline_ms: int = 50
    write_deadline_ms: int = 2000
    gate_reconcile_interval: float = 5.0  # seconds; 0: only at start-up and on a lost gate
    route_deadlines: tuple[tuple[str, int], ...] = ()  # ("POST /sales", 1500): overrides
    cache_ttl: float = 600.0
    cache_jitter: float = 0.1
    negative_ttl: float = 5.0
    near_cache_size: int = 100_000
    near_cache_ttl: float = 300.0
    token_cache_size: int = 100_000
    token_cache_bytes: int = 32 * 1024 * 1024
    jwt_leeway: float = 30.0
    shutdown_delay: float = 2.0
    drain_timeout: float = 5.0
    keepalive_timeout: float = 5.0
    max_body_bytes: int = 65_536
    max_header_bytes: int = 16_384
    header_timeout: float = 10.0
    body_min_rate: int = 1024  # bytes a second, after a grace of `header_timeout`
    send_timeout: float = 10.0
    max_connections: int = 10_000  # HTTP connections per process
    max_connections_per_client: int = 256  # per peer address (trusted proxies exempt)
    redis_prefix: str = "surge:"
    ws_max_connections: int = 0  # 0: the open-files budget (see http.state.open_files_budget)
    ws_max_message: int = 65_536
    ws_max_rooms: int = 50
    ws_publish_rate: int = 50
    ws_send_buffer: int = 1_048_576
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 10.0
    ws_history: int = 100
    ws_history_bytes: int = 16 * 1024 * 1024
    ws_max_per_user: int = 16
    ws_publish_bytes: int = 65_536  # per user and second (burst: 4 seconds' worth)
    ws_origins: str = ""
    ws_fanout_threads: int = -1  # -1: one per core, at most 3
    rate_limit_read: tuple[float, int] | None = (20.0, 40)  # per caller: a second, burst
    rate_limit_write: tuple[float, int] | None = (5.0, 10)
    rate_limit_store: str = "auto"  # auto: Redis when configured, else this process
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For is believed
    shed: str = "adaptive"  # adaptive | cap | off
    ready_requires: tuple[str, ...] = ()  # dependencies whose failure fails readiness
    max_in_flight: int = 1000  # hard cap on concurrent work per process
    shed_min_limit: int = 20
    shed_tolerance: float = 1.5
    shed_target_ms: int = 0  # 0: half the order query's deadline
    mail_from: str = "surge@localhost"
    mail_domain: str = "localhost"  # a buyer's address: <user id>@<mail_domain>
    audit_log: Path | None = None  # None: audit.jsonl in the data dir
    inline_worker: str = "auto"  # auto: inside `surge serve` when Redis is not configured
    worker_port: int = 9180  # the worker's /healthz, /readyz and /metrics; 0: none
    worker_concurrency: int = 16  # events one consumer handles at once
    worker_max_attempts: int = 5  # failed deliveries before the dead-letter stream
    worker_claim_idle: float = 60.0  # seconds before a silent consumer's events are taken
    outbox_poll: float = 0.2
    outbox_retention: float = 7 * 86_400.0
    dedup_ttl: float = 7 * 86_400.0

    @property
    def embedded(self) -> bool:
        """True when no external server is configured (SQLite file + in-process everything)."""
        return self.redis_url is None and self.database_url.startswith("sqlite")

    @property
    def deadline(self) -> float:
        return self.deadline_ms / 1000.0

    def route_deadline(self, route: str) -> float:
        """Seconds `route` ("METHOD /template") may take: its SURGE_ROUTE_DEADLINES entry,
        else the order query's deadline for GET /orders/{id}, the write deadline for the
        others."""
        for key, ms in self.route_deadlines:
            if key == route:
                return ms / 1000.0
        return self.deadline if route == ORDER_QUERY else self.write_deadline_ms / 1000.0

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "jwt-secret"

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.data_dir / "audit.jsonl"

    @property
    def runs_inline_worker(self) -> bool:
        """True when `surge serve` relays the outbox and runs the consumers itself."""
        if self.inline_worker == "auto":
            return self.redis_url is None
        return self.inline_worker == "on"


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    name: str
    parse: Callable[[str], Any]
    doc: str

    @property
    def env(self) -> str:
        return "SURGE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


FIELDS: tuple[Field, ...] = (
    Field(
        "database_url",
        parse.url(DATABASE_SCHEMES),
        "`sqlite:///PATH` (default: surge.db in the data dir), `mysql://`, `postgresql://`",
    ),
    Field(
        "redis_url",
        parse.optional(parse.url(REDIS_SCHEMES)),
        "`redis://host:port/db`; unset = in-process cache and pub/sub",
    ),
    Field("host", str, "listen address"),
    Field("port", parse.port, "listen port (0 = pick a free one)"),
    Field(
        "internal_host",
        str,
        "address of the internal listener (/metrics, /debug/*, probes); empty = SURGE_HOST",
    ),
    Field(
        "internal_port",
        parse.port,
        "port of the internal listener: /metrics, /debug/tasks, /healthz, /readyz "
        "(0 = pick a free one); never expose it publicly",
    ),
    Field("workers", parse.positive_int, "server processes; more than 1 requires Redis"),
    Field(
        "jwt_secret",
        parse.optional(str),
        "HS256 secret; generated into the data dir in embedded mode, required otherwise",
    ),
    Field("data_dir", Path, "SQLite file, generated secret, embedded queue"),
    Field(
        "smtp_url",
        parse.optional(parse.url(SMTP_SCHEMES)),
        "`smtp://[user:password@]host:port` (STARTTLS when offered) or `smtps://` (TLS); "
        "unset = mail appended to mail.mbox in the data dir",
    ),
    Field("mail_from", parse.mail_address, "sender of the order confirmations"),
    Field("mail_domain", parse.mail_domain, "a buyer's mail address is <user id>@<this domain>"),
    Field("audit_log", parse.optional(Path), "audit log file (JSON lines); unset = data dir's"),
    Field("env", parse.choice(ENVIRONMENTS), "`production` refuses a generated JWT secret"),
    Field("log_level", parse.choice(LOG_LEVELS), "log level"),
    Field("log_format", parse.choice(LOG_FORMATS), "`json` lines, or `text` for a person"),
    Field(
        "access_log",
        parse.share,
        "requests logged: `off`, `all`, or a share such as 0.01 (sampled)",
    ),
    Field(
        "db_pool_size",
        parse.positive_int,
        "database connections per process (bounds DB concurrency)",
    ),
    Field("redis_pool_size", parse.positive_int, "Redis connections per process"),
    Field(
        "deadline_ms", parse.positive_int, "deadline of the order query, milliseconds (then 504)"
    ),
    Field(
        "write_deadline_ms",
        parse.positive_int,
        "deadline of purchases and the sale routes, milliseconds (then 504)",
    ),
    Field(
        "gate_reconcile_interval",
        parse.non_negative_float,
        "seconds between reconciliations of each open sale's stock gate with the database "
        "(heals stock a crashed process reserved); 0 = only at start-up",
    ),
    Field(
        "route_deadlines",
        parse.route_deadlines,
        "per-route deadlines in ms, overriding the two above: "
        "`POST /sales/{id}/orders=1500, GET /sales/{id}=300`",
    ),
    Field("cache_ttl", parse.non_negative_float, "Redis TTL of a cached order, seconds"),
    Field("cache_jitter", parse.fraction, "random +- fraction applied to cache TTLs"),
    Field("negative_ttl", parse.non_negative_float, "how long a not-found is cached, seconds"),
    Field("near_cache_size", parse.positive_int, "entries in the in-process near cache"),
    Field(
        "near_cache_ttl",
        parse.non_negative_float,
        "near cache TTL, seconds; hits in its last quarter reload the entry in the background",
    ),
    Field("token_cache_size", parse.positive_int, "verified tokens remembered per process"),
    Field(
        "token_cache_bytes",
        parse.positive_int,
        "bytes the token cache may hold per process (its refusals get an eighth of it)",
    ),
    Field(
        "jwt_leeway",
        parse.non_negative_float,
        "seconds of clock skew allowed on a token's exp, nbf and iat",
    ),
    Field(
        "shutdown_delay",
        parse.non_negative_float,
        "seconds readiness is 503 before intake stops (SIGTERM only)",
    ),
    Field("drain_timeout", parse.non_negative_float, "seconds in-flight requests get to finish"),
    Field("keepalive_timeout", parse.non_negative_float, "idle keep-alive connections close after"),
    Field("max_body_bytes", parse.positive_int, "largest accepted request body (then 413)"),
    Field(
        "max_header_bytes",
        parse.positive_int,
        "largest request line + header block, trailers included (then 414/431)",
    ),
    Field(
        "header_timeout",
        parse.positive_float,
        "seconds from a request's first byte to the end of its headers (then 408, closed)",
    ),
    Field(
        "body_min_rate",
        parse.positive_int,
        "bytes/s a body must average after a grace of SURGE_HEADER_TIMEOUT (then 408, closed)",
    ),
    Field(
        "send_timeout",
        parse.positive_float,
        "seconds a client may leave its answers unread before the connection is cut",
    ),
    Field(
        "max_connections",
        parse.positive_int,
        "HTTP connections per process (WebSockets not counted); more are answered 503 and closed",
    ),
    Field(
        "max_connections_per_client",
        parse.positive_int,
        "HTTP connections per client address and process (trusted proxies exempt); more "
        "are answered 503 and closed",
    ),
    Field("redis_prefix", str, "prefix of every Redis key and channel Surge uses"),
    Field(
        "ws_max_connections",
        parse.non_negative_int,
        "WebSocket connections per process (then 503); 0 = the open-files limit less 500",
    ),
    Field(
        "ws_max_message", parse.positive_int, "largest client WebSocket message, bytes (then 1009)"
    ),
    Field("ws_max_rooms", parse.positive_int, "rooms one WebSocket connection may join"),
    Field("ws_publish_rate", parse.positive_int, "publishes a second per connection, and burst"),
    Field(
        "ws_send_buffer",
        parse.positive_int,
        "bytes queued for a WebSocket client before it is closed as too slow (4008)",
    ),
    Field("ws_ping_interval", parse.positive_float, "seconds between WebSocket pings"),
    Field(
        "ws_ping_timeout", parse.positive_float, "a silent peer is dropped this long after a ping"
    ),
    Field(
        "ws_history", parse.non_negative_int, "messages kept per chat room for resume (0 = none)"
    ),
    Field(
        "ws_history_bytes",
        parse.positive_int,
        "bytes of chat history kept in this process in all (at most 1/16 of it per room)",
    ),
    Field(
        "ws_max_per_user",
        parse.positive_int,
        "WebSocket connections one user (token) may hold per process (then 429)",
    ),
    Field(
        "ws_publish_bytes",
        parse.positive_int,
        "bytes a user may publish a second across its connections (burst: 4 s worth)",
    ),
    Field(
        "ws_fanout_threads",
        parse.fanout_threads,
        "threads writing a WebSocket fan-out beside the event loop; -1 = one per core (max 3)",
    ),
    Field(
        "ws_origins",
        str,
        "comma-separated Origins allowed to open /ws (scheme://host[:port]); empty = any",
    ),
    Field(
        "rate_limit_read",
        parse.rate_policy,
        "GET requests per caller: `RATE/BURST` a second (`20/40`); `off` = no limit",
    ),
    Field(
        "rate_limit_write",
        parse.rate_policy,
        "other requests (purchases, sale admin) per caller: `RATE/BURST`; `off` = no limit",
    ),
    Field(
        "rate_limit_store",
        parse.choice(("auto", "local", "redis")),
        "where buckets live: `auto` = writes in Redis when configured (one limit across "
        "processes), reads in each process; `redis` = both in Redis; `local` = both here",
    ),
    Field(
        "shed",
        parse.choice(("adaptive", "cap", "off")),
        "load shedding: `adaptive` (Gradient2 limit on concurrent work, capped), `cap` "
        "(only SURGE_MAX_IN_FLIGHT), `off`",
    ),
    Field(
        "max_in_flight",
        parse.positive_int,
        "most requests waiting on I/O at once per process (then 503 `overloaded`)",
    ),
    Field("shed_min_limit", parse.positive_int, "the adaptive limit never goes below this"),
    Field(
        "shed_tolerance",
        parse.positive_float,
        "latency over its long-run average by this factor counts as queueing (>= 1)",
    ),
    Field(
        "shed_target_ms",
        parse.non_negative_int,
        "a window's mean latency over this shrinks the adaptive limit; 0 = half the order "
        "query's deadline",
    ),
    Field(
        "ready_requires",
        parse.dependencies,
        "dependencies (`database`, `redis`) whose failure makes /readyz 503; "
        "empty = none: a shared dependency down leaves every pod `degraded` but in service",
    ),
    Field(
        "trusted_proxies",
        parse.networks,
        "comma-separated CIDRs of proxies whose X-Forwarded-For names the client",
    ),
    Field(
        "inline_worker",
        parse.choice(INLINE_WORKER),
        "`surge serve` also relays the outbox and sends mail (auto: when Redis is not set; "
        "with Redis run `surge worker`)",
    ),
    Field("worker_port", parse.port, "`surge worker`'s /healthz, /readyz, /metrics; 0 = none"),
    Field("worker_concurrency", parse.positive_int, "events one consumer handles at once"),
    Field(
        "worker_max_attempts",
        parse.positive_int,
        "failed deliveries of an event before it goes to the dead-letter stream",
    ),
    Field(
        "worker_claim_idle",
        parse.positive_float,
        "seconds before another worker takes over the events of a silent one",
    ),
    Field("outbox_poll", parse.positive_float, "seconds between the relay's looks when idle"),
    Field(
        "outbox_retention",
        parse.positive_float,
        "seconds published outbox rows are kept before deletion",
    ),
    Field(
        "dedup_ttl",
        parse.positive_float,
        "seconds a consumer remembers an event it handled (duplicates inside it are skipped)",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting; a flag left out keeps the env value or the default."""
    for field in FIELDS:
        parser.add_argument(
            field.flag,
            dest=field.name,
            default=None,
            metavar="VALUE",
            help=f"{field.doc} (env {field.env})",
        )


def load(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Builds Settings from the environment, then CLI overrides (strings or typed values)."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in FIELDS:
        text = environ.get(field.env)
        origin = field.env
        if overrides is not None and overrides.get(field.name) is not None:
            text, origin = overrides[field.name], field.flag
        if text is None:
            continue
        if not isinstance(text, str):
            raw[field.name] = text
            continue
        try:
            raw[field.name] = field.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{origin}={text!r}: {exc}") from None
    settings = Settings(**raw)
    if not settings.database_url:
        db_file = (settings.data_dir / "surge.db").resolve()
        settings = dataclasses.replace(settings, database_url=f"sqlite:///{db_file}")
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.workers > 1 and settings.redis_url is None:
        raise ConfigError(
            f"SURGE_WORKERS={settings.workers} needs SURGE_REDIS_URL: processes share the "
            "cache, invalidations and (later) stock only through Redis"
        )
    if settings.shed_min_limit > settings.max_in_flight:
        raise ConfigError("SURGE_SHED_MIN_LIMIT must not exceed SURGE_MAX_IN_FLIGHT")
    if settings.shed_tolerance < 1.0:
        raise ConfigError("SURGE_SHED_TOLERANCE must be >= 1")
    if "redis" in settings.ready_requires and settings.redis_url is None:
        raise ConfigError("SURGE_READY_REQUIRES=redis needs SURGE_REDIS_URL")
    if settings.rate_limit_store == "redis" and settings.redis_url is None:
        raise ConfigError("SURGE_RATE_LIMIT_STORE=redis needs SURGE_REDIS_URL")
    if settings.max_connections_per_client > settings.max_connections:
        raise ConfigError("SURGE_MAX_CONNECTIONS_PER_CLIENT must not exceed SURGE_MAX_CONNECTIONS")
    if settings.internal_port and settings.internal_port == settings.port:
        raise ConfigError("SURGE_INTERNAL_PORT must differ from SURGE_PORT")
    if settings.jwt_secret is not None and len(settings.jwt_secret) < 32:
        raise ConfigError("SURGE_JWT_SECRET must be at least 32 characters (RFC 7518 3.2)")


def check_secret(settings: Settings) -> None:
    """Commands that sign or verify tokens call this: a generated secret is for embedded
    development only, never a default in production or beside shared servers."""
    if settings.jwt_secret is None and not settings.embedded:
        raise ConfigError("SURGE_JWT_SECRET is required when Redis or a database server is set")
    if settings.jwt_secret is None and settings.env == "production":
        raise ConfigError("SURGE_JWT_SECRET is required in production (SURGE_ENV=production)")
