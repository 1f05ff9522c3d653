"""Parsers of setting values: each takes the text of an environment variable or a flag
and returns the typed value, or raises ValueError with a short reason (surge.config adds
which setting it was). Imports nothing from surge: the layers that use parsed values
(protect/, the HTTP engine) get them through `surge.config.Settings`."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from surge.ground.redis_urls import is_cluster, parse_cluster_url

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


D = TypeVar("D")
P = TypeVar("P")


def setting(default: D, parse: Callable[[str], P], doc: str) -> D | P:
    """A field of `Settings` (surge.config): its default, the parser of its env/flag text,
    its doc. The field's annotation must hold both the default's and the parser's type
    (mypy checks)."""
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def fanout_threads(text: str) -> int:
    value = int(text)
    if not -1 <= value <= 16:
        raise ValueError("must be -1 (automatic) or 0..16")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:  # also rejects NaN
        raise ValueError("must be > 0")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError("must be >= 0")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value


def share(text: str) -> float:
    """`off` (0), `all` (1), or a fraction in [0, 1]."""
    value = text.strip().lower()
    if value in ("off", "none"):
        return 0.0
    if value == "all":
        return 1.0
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("must be off, all, or a share in [0, 1]")
    return number


def mail_address(text: str) -> str:
    """An addr-spec such as surge@example.com (a header injection cannot get through)."""
    from email.headerregistry import Address

    value = text.strip()
    try:
        address = Address(addr_spec=value)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not a mail address: {exc}") from None
    if not address.username or not address.domain or any(c in value for c in "\r\n"):
        raise ValueError("not a mail address (want user@domain)")
    return value


_DOMAIN = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def mail_domain(text: str) -> str:
    value = text.strip()
    if not _DOMAIN.fullmatch(value):
        raise ValueError("not a domain name (letters, digits, dots, hyphens)")
    return value


def parse_policy(text: str) -> tuple[float, int] | None:
    """`20/40` -> 20 a second, burst 40; `20` -> burst 20; `0` or `off` -> no limit."""
    text = text.strip().lower()
    if text in ("0", "off", "none"):
        return None
    rate_text, _, burst_text = text.partition("/")
    rate = float(rate_text)
    if not 0 < rate < math.inf:
        raise ValueError("rate must be > 0 (or 0/off for no limit)")
    burst = int(burst_text) if burst_text else max(1, math.ceil(rate))
    if burst < 1:
        raise ValueError("burst must be >= 1")
    return rate, burst


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 127.0.0.1` -> networks; ValueError names the bad entry."""
    networks = []
    for item in text.replace(" ", "").split(","):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or CIDR network: {item!r}") from None
    return tuple(networks)


def networks(text: str) -> str:
    parse_networks(text)  # validated here, parsed again where used (Settings.trusted_networks)
    return text


def route_deadlines(text: str) -> tuple[tuple[str, int], ...]:
    """`POST /sales/{id}/orders=1500, GET /sales/{id}=300` -> ((route, ms), ...)."""
    entries = []
    for item in text.split(","):
        if not item.strip():
            continue
        route, equals, ms = item.strip().rpartition("=")
        method, _, template = route.strip().partition(" ")
        if not equals or method.upper() not in METHODS or not template.strip().startswith("/"):
            raise ValueError(f"expected 'METHOD /template=MS', got {item.strip()!r}")
        milliseconds = int(ms)
        if milliseconds < 1:
            raise ValueError(f"{route.strip()}: the deadline must be >= 1 ms")
        entries.append((f"{method.upper()} {template.strip()}", milliseconds))
    return tuple(entries)


def dependencies(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.replace(" ", "").lower().split(",") if n)
    unknown = sorted(set(names) - {"database", "redis"})
    if unknown:
        raise ValueError(f"unknown dependency {unknown[0]!r}; valid: database, redis")
    return names


def choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        scheme = urlsplit(text).scheme.lower()
        if scheme not in schemes:
            raise ValueError(f"unknown scheme {scheme or '(none)'!r}; valid: {', '.join(schemes)}")
        return text

    return parse


def url_list(schemes: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """Comma-separated URLs, each of one of `schemes`; empty = none."""
    one = url(schemes)
    return lambda text: tuple(one(item.strip()) for item in text.split(",") if item.strip())


def redis_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    """A Redis URL of one of `schemes`; a cluster's list of seed nodes is read whole, so a
    mistake in it stops the start, not the first request."""
    check_scheme = url(schemes)

    def parse(text: str) -> str:
        check_scheme(text)
        if is_cluster(text):
            parse_cluster_url(text)
        return text

    return parse


def redis_prefix(text: str) -> str:
    """Surge's keys carry hash tags of their own (`{sale:ID}`, docs/scaling.md): a brace
    in the prefix would become the tag, and a Redis Cluster would refuse the scripts."""
    if "{" in text or "}" in text:
        raise ValueError("must not contain { or }")
    return text


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: parse(text) if text.strip() else None
