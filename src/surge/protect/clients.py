"""Who is asking: the user of a valid bearer token, else the client's IP address.

Behind nginx or a Kubernetes ingress every connection comes from the proxy, so the
address is taken from X-Forwarded-For, but only when the connection comes from a
trusted proxy (`SURGE_TRUSTED_PROXIES`, CIDR list): the header is walked from the right
(each proxy appends the address it saw) and the first address that is not a trusted
proxy is the client; a hop that is no address ends the walk at the last proxy of ours.
Anything further left may be forged by the client. Addresses are normalised (ports and
brackets removed, IPv4-mapped IPv6 as IPv4) and IPv6 clients are keyed by their /64.
"""

from __future__ import annotations

import ipaddress

from surge.auth import Authenticator
from surge.ground.web import Problem, Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class Clients:
    MAX_REMEMBERED = 10_000  # peers whose trust was looked up
    MAX_TOKENS = 100_000  # Authorization headers remembered with their key

    def __init__(self, auth: Authenticator, trusted: tuple[Network, ...]) -> None:
        self._auth = auth
        self._trusted = trusted
        self._is_trusted: dict[IP, bool] = {}
        # header -> "u:<id>" once verified: one dict lookup per request. A token that
        # expires keeps its key (its requests are then answered 401 by their routes).
        self._users: dict[bytes, str] = {}

    def key(self, request: Request) -> str:
        """`u:<user id>` for a valid bearer token, else `ip:<address>`."""
        header = request.headers.get(b"authorization")
        if header is not None:
            known = self._users.get(header)
            if known is not None:
                return known
            try:
                known = "u:" + self._auth.user(header).id
            except Problem:
                return "ip:" + self.address(request)  # the route answers 401
            if len(self._users) >= self.MAX_TOKENS:
                self._users.clear()
            self._users[header] = known
            return known
        return "ip:" + self.address(request)

    def address(self, request: Request) -> str:
        """The client's address as a bucket key: IPv4 as is, IPv6 by its /64 (one host
        gets a /64 to itself, and could otherwise change address per request)."""
        peer = _parse(request.client)
        if peer is None:
            return request.client  # not an IP (a Unix socket): as given
        if not self._trusted or not self._trusts(peer):
            return _key(peer)
        forwarded = request.headers.get(b"x-forwarded-for")
        if not forwarded:
            return _key(peer)
        nearest = peer  # walk from our side outwards, past our own proxies
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            ip = _parse(hop)
            if ip is None:  # garbage: trust stops at the last proxy of ours
                break
            nearest = ip
            if not self._trusts(ip):
                break
        return _key(nearest)

    def _trusts(self, ip: IP) -> bool:
        known = self._is_trusted.get(ip)
        if known is None:
            known = any(ip in network for network in self._trusted)
            if len(self._is_trusted) >= self.MAX_REMEMBERED:
                self._is_trusted.clear()
            self._is_trusted[ip] = known
        return known


def _parse(text: str) -> IP | None:
    """An address from a peer name or an X-Forwarded-For hop: brackets and a port
    removed, an IPv4-mapped IPv6 address (a dual-stack listener's) as IPv4."""
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _key(ip: IP) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
