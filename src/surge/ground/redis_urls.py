"""Redis URLs, read without redis-py: the settings check them at start-up, the backends
connect with what they say.

`redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]` names a Redis Cluster's seed
nodes (`rediss+cluster://` with TLS); urlsplit cannot read a list of hosts, so it is read
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme.lower() in SCHEMES


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def client_options(self) -> dict[str, Any]:
        """What a connection to one node needs besides its address."""
        return {"username": self.username, "password": self.password, "ssl": self.tls}


def parse_cluster_url(url: str) -> ClusterAddress:
    """`redis+cluster://[user:password@]host:port[,host:port...]`; a ValueError that
    says what is wrong otherwise (urlsplit cannot read a list of hosts)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {parts.scheme}://")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise ValueError("a Redis Cluster URL has no database number (but 0) and takes no options")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a seed node is HOST:PORT, not {item.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterAddress(tuple(nodes), username, password, parts.scheme.lower() == SCHEMES[1])
