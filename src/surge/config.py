"""Settings: one frozen object built once from `SURGE_*` environment variables and CLI flags.

This module is the only place that reads the environment. Every setting is declared once,
as a field of `Settings` (or of the `LimitSettings` it extends: surge.config_limits) with
its default, its parser and its documentation (`setting`);
`FIELDS` derives its env name and CLI flag from it, so the README table and
`surge serve --help` cannot drift apart.

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
from surge.config_limits import LimitSettings
from surge.setting_parsers import setting

DATABASE_SCHEMES = ("sqlite", "mysql", "mariadb", "postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
SMTP_SCHEMES = ("smtp", "smtps")
INLINE_WORKER = ("auto", "on", "off")
ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


ORDER_QUERY = "GET /orders/{id}"


class ConfigError(ValueError):
    """A setting has a bad value; the message is one line meant for the operator."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings(LimitSettings):
    """Every setting, in the order of `FIELDS` (flags, help, README table): the limits
    (surge.config_limits) first, then these."""

    database_url: str = setting(
        "",
        parse.url(DATABASE_SCHEMES),
        "`sqlite:///PATH` (default: surge.db in the data dir), `mysql://`, `postgresql://`",
    )
    database_replica_url: tuple[str, ...] = setting(
        (),
        parse.url_list(DATABASE_SCHEMES),
        "read replicas of the database, comma-separated URLs of the same kind: order-query "
        "misses and later pages of a buyer's orders read there (docs/scaling.md)",
    )
    database_replica_max_lag: float = setting(
        5.0,
        parse.positive_float,
        "seconds a replica may be behind the primary and still serve reads",
    )
    redis_url: str | None = setting(
        None,
        parse.optional(parse.redis_url(REDIS_SCHEMES)),
        "`redis://host:port/db`, or a Redis Cluster's seed nodes "
        "`redis+cluster://host:port[,host:port...]`; unset = in-process cache and pub/sub",
    )
    host: str = setting("127.0.0.1", str, "listen address")
    port: int = setting(8080, parse.port, "listen port (0 = pick a free one)")
    internal_host: str = setting(
        "", str, "address of the internal listener (/metrics, /debug/*, probes); empty = SURGE_HOST"
    )
    internal_port: int = setting(
        9181,
        parse.port,
        "port of the internal listener: /metrics, /debug/tasks, /healthz, /readyz "
        "(0 = pick a free one); never expose it publicly",
    )
    grpc_port: int = setting(
        50051,
        parse.port,
        "port of the gRPC API (proto/surge/v1/surge.proto) on SURGE_HOST; 0 = no gRPC",
    )
    grpc_max_calls: int = setting(
        10_000,
        parse.positive_int,
        "gRPC calls in progress per process, WatchSale streams included (more: RESOURCE_EXHAUSTED)",
    )
    workers: int = setting(1, parse.positive_int, "server processes; more than 1 requires Redis")
    jwt_secret: str | None = setting(
        None,
        parse.optional(str),
        "HS256 secret; generated into the data dir in embedded mode, required otherwise",
    )
    data_dir: Path = setting(  # noqa: RUF009 (a dataclasses.field, made once)
        Path("surge-data"), Path, "SQLite file, generated secret, embedded queue"
    )
    smtp_url: str | None = setting(
        None,
        parse.optional(parse.url(SMTP_SCHEMES)),
        "`smtp://[user:password@]host:port` (STARTTLS when offered) or `smtps://` (TLS); "
        "unset = mail appended to mail.mbox in the data dir",
    )
    mail_from: str = setting(
        "surge@localhost", parse.mail_address, "sender of the order confirmations"
    )
    mail_domain: str = setting(
        "localhost", parse.mail_domain, "a buyer's mail address is <user id>@<this domain>"
    )
    audit_log: Path | None = setting(  # noqa: RUF009
        None, parse.optional(Path), "audit log file (JSON lines); unset = data dir's"
    )
    env: str = setting(
        "development", parse.choice(ENVIRONMENTS), "`production` refuses a generated JWT secret"
    )
    log_level: str = setting("info", parse.choice(LOG_LEVELS), "log level")
    log_format: str = setting(
        "json", parse.choice(LOG_FORMATS), "`json` lines, or `text` for a person"
    )
    access_log: float = setting(
        0.0, parse.share, "requests logged: `off`, `all`, or a share such as 0.01 (sampled)"
    )
    db_pool_size: int = setting(
        10,
        parse.positive_int,
        "database connections per process (bounds DB concurrency); on MariaDB and "
        "PostgreSQL the order query's reads have a second pool of this size",
    )
    redis_pool_size: int = setting(32, parse.positive_int, "Redis connections per process")
    deadline_ms: int = setting(
        50, parse.positive_int, "deadline of the order query, milliseconds (then 504)"
    )
    write_deadline_ms: int = setting(
        2000,
        parse.positive_int,
        "deadline of purchases and the sale routes, milliseconds (then 504)",
    )
    pay_window: float = setting(
        900.0,
        parse.non_negative_float,
        "seconds a buyer has to pay for an order (POST /orders/{id}/pay); an unpaid order "
        "then expires and its units go back on sale; 0 = orders are paid at purchase",
    )
    gate_reconcile_interval: float = setting(
        5.0,
        parse.non_negative_float,
        "seconds between reconciliations of each open sale's stock gate with the database "
        "(heals stock a crashed process reserved); 0 = only at start-up",
    )
    # (("POST /sales", 1500), ...): overrides of the two deadlines above
    route_deadlines: tuple[tuple[str, int], ...] = setting(
        (),
        parse.route_deadlines,
        "per-route deadlines in ms, overriding the two above: "
        "`POST /sales/{id}/orders=1500, GET /sales/{id}=300`",
    )
    cache_ttl: float = setting(
        600.0, parse.non_negative_float, "Redis TTL of a cached order, seconds"
    )
    cache_jitter: float = setting(0.1, parse.fraction, "random +- fraction applied to cache TTLs")
    negative_ttl: float = setting(
        5.0, parse.non_negative_float, "how long a not-found is cached, seconds"
    )
    near_cache_size: int = setting(
        500_000,
        parse.positive_int,
        "entries in the in-process near cache (about 0.6 KB each: 300 MB per process when full)",
    )
    near_cache_ttl: float = setting(
        300.0,
        parse.non_negative_float,
        "near cache TTL, seconds; hits in its last quarter reload the entry in the background",
    )
    token_cache_size: int = setting(
        100_000, parse.positive_int, "verified tokens remembered per process"
    )
    token_cache_bytes: int = setting(
        32 * 1024 * 1024,
        parse.positive_int,
        "bytes the token cache may hold per process (its refusals get an eighth of it)",
    )
    jwt_leeway: float = setting(
        30.0,
        parse.non_negative_float,
        "seconds of clock skew allowed on a token's exp, nbf and iat",
    )
    redis_prefix: str = setting(
        "surge:",
        parse.redis_prefix,
        "prefix of every Redis key and channel Surge uses (no `{` or `}`)",
    )
    inline_worker: str = setting(
        "auto",
        parse.choice(INLINE_WORKER),
        "`surge serve` also relays the outbox and sends mail (auto: when Redis is not set; "
        "with Redis run `surge worker`)",
    )
    worker_port: int = setting(
        9180, parse.port, "`surge worker`'s /healthz, /readyz, /metrics; 0 = none"
    )
    worker_concurrency: int = setting(16, parse.positive_int, "events one consumer handles at once")
    worker_max_attempts: int = setting(
        5,
        parse.positive_int,
        "failed deliveries of an event before it goes to the dead-letter stream",
    )
    worker_claim_idle: float = setting(
        60.0,
        parse.positive_float,
        "seconds before another worker takes over the events of a silent one",
    )
    outbox_poll: float = setting(
        0.2, parse.positive_float, "seconds between the relay's looks when idle"
    )
    outbox_retention: float = setting(
        7 * 86_400.0, parse.positive_float, "seconds published outbox rows are kept before deletion"
    )
    dedup_ttl: float = setting(
        7 * 86_400.0,
        parse.positive_float,
        "seconds a consumer remembers an event it handled (duplicates inside it are skipped)",
    )

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
    def trusted_networks(self) -> tuple[parse.Network, ...]:
        """SURGE_TRUSTED_PROXIES as networks (checked when the settings were loaded)."""
        return parse.parse_networks(self.trusted_proxies)

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


FIELDS: tuple[Field, ...] = tuple(
    Field(f.name, f.metadata["parse"], f.metadata["doc"]) for f in dataclasses.fields(Settings)
)
"""Every setting in declaration order (the order of `surge serve --help`)."""


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
    if settings.grpc_port and settings.grpc_port in (settings.port, settings.internal_port):
        raise ConfigError("SURGE_GRPC_PORT must differ from SURGE_PORT and SURGE_INTERNAL_PORT")
    primary = settings.database_url.partition(":")[0].partition("+")[0].lower()
    for replica in settings.database_replica_url:
        kind = replica.partition(":")[0].partition("+")[0].lower()
        if kind == "sqlite" or _family(kind) != _family(primary):
            raise ConfigError(
                f"SURGE_DATABASE_REPLICA_URL: a replica of a {primary} database must be one "
                f"too, not {kind}"
            )
    if settings.jwt_secret is not None and len(settings.jwt_secret) < 32:
        raise ConfigError("SURGE_JWT_SECRET must be at least 32 characters (RFC 7518 3.2)")


def _family(scheme: str) -> str:
    return {"mariadb": "mysql", "postgres": "postgresql"}.get(scheme, scheme)


def check_secret(settings: Settings) -> None:
    """Commands that sign or verify tokens call this: a generated secret is for embedded
    development only, never a default in production or beside shared servers."""
    if settings.jwt_secret is None and not settings.embedded:
        raise ConfigError("SURGE_JWT_SECRET is required when Redis or a database server is set")
    if settings.jwt_secret is None and settings.env == "production":
        raise ConfigError("SURGE_JWT_SECRET is required in production (SURGE_ENV=production)")
