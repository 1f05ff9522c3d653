"""Who is asking: the user of a valid bearer token, else the client's IP address.

Behind nginx or a Kubernetes ingress every connection comes from the proxy, so the
address is taken from X-Forwarded-For, but only when the connection comes from a
trusted proxy (`SURGE_TRUSTED_PROXIES`, CIDR list): the header is walked from the right
(each proxy appends the address it saw) and the first address that is not a trusted
proxy is the client. Anything else in the header may be forged by the client.
"""

from __future__ import annotations

import ipaddress

from surge.auth import Authenticator
from surge.http.request import Request
from surge.http.response import Problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class Clients:
    MAX_REMEMBERED = 10_000  # peers whose trust was looked up
    MAX_TOKENS = 100_000  # Authorization headers remembered with their key

    def __init__(self, auth: Authenticator, trusted: tuple[Network, ...]) -> None:
        self._auth = auth
        self._trusted = trusted
        self._is_trusted: dict[str, bool] = {}
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
        peer = request.client
        if not self._trusted or not self._trusted_peer(peer):
            return peer
        forwarded = request.headers.get(b"x-forwarded-for")
        if not forwarded:
            return peer
        hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not self._trusted_peer(hop):
                return hop
        return hops[0] or peer  # every hop is a proxy of ours: the farthest one

    def _trusted_peer(self, address: str) -> bool:
        known = self._is_trusted.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False  # garbage in X-Forwarded-For: not one of our proxies
            known = any(ip in network for network in self._trusted)
            if len(self._is_trusted) >= self.MAX_REMEMBERED:
                self._is_trusted.clear()
            self._is_trusted[address] = known
        return known
