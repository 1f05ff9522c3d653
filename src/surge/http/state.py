"""What every connection of one process shares: the app's router, the clock, the
request ids, the drain flags, the limits every connection is held to (settings and fixed
bounds), and the protection layer (rate limits, load shedding)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING

from surge.ground.admission import LoadShedding, RateLimits
from surge.http.refusal import never_shed
from surge.http.router import Router

if TYPE_CHECKING:
    from surge.http.server import HttpProtocol

Observer = Callable[[str, str, int, float], None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP connection and one process may cost (docs/security.md). Every buffer
    the engine keeps for a client is bounded by one of these, and every request by a
    deadline: its header block `header_timeout` after its first byte, its body a grace of
    `header_timeout` plus one second per `body_min_rate` bytes received."""

    max_body: int = 65_536  # bytes of one request body (then 413)
    max_header: int = 16_384  # request line + header fields (+ trailers), bytes (414/431)
    header_timeout: float = 10.0
    body_min_rate: int = 1024  # bytes a second
    send_timeout: float = 10.0  # answers left unread this long: the connection is cut
    keepalive_timeout: float = 5.0  # idle between requests
    max_connections: int = 10_000  # open HTTP connections per process
    max_per_client: int = 256  # open HTTP connections per peer address (IPv6: per /64)
    trusted: tuple[Network, ...] = ()  # proxies: exempt from `max_per_client`
    # every connection (HTTP, upgraded, internal) the process may hold: its open-files
    # limit less what the pools, logs and files need (see `open_files_budget`)
    max_open: int = 100_000


# The bounds of every connection that are not settings (surge.http.server).
#
# Pipelined requests waiting behind one being answered: at MAX_PIPELINE reading pauses;
# one read can still hold more, up to MAX_QUEUED, past which the rest of the read is
# dropped and the connection ends after answering those queued (a client that pipelines
# more without reading its answers is not a browser or a proxy).
MAX_PIPELINE = 16
MAX_QUEUED = 64
# Requests one read may have answered on the spot: the rest wait for the next loop turn
# (one read can carry thousands of small requests; answering them all at once held the
# loop for seconds and every other client with it).
PER_READ = 32
# During shutdown, how long an accepted connection may take to send its first request.
FIRST_REQUEST_GRACE = 1.0
# After refusing a request, how long the client's further bytes are read and dropped so
# that the refusal reaches it (closing with unread input would make the kernel reset the
# connection and lose the answer).
LINGER = 2.0
# The clock the sweep reads (ServerState.now) ticks once a second: a time stamped from it
# may be up to this much old, so the sweep's deadlines allow for it (they fire between
# their limit and a second or two after it, never early).
TICK = 1.0


RESERVED_FILES = 500  # database and Redis pools, log and data files, the listeners


def open_files_budget() -> int:
    """Connections of every kind one process may hold: its open-files limit less
    RESERVED_FILES. Past it, accept() fails and every new client (and every probe) gets
    its connection closed without a word; below it, they get a 503."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(100, soft - RESERVED_FILES)


class ServerState:
    """Shared by every connection of one process: the app, the clock and the drain flags."""

    def __init__(
        self,
        router: Router,
        observe: Observer,
        limits: HttpLimits,
        limiter: RateLimits | None = None,
        shedder: LoadShedding | None = None,
        access_log: float = 0.0,
        others: Callable[[], int] = lambda: 0,
    ) -> None:
        self.router = router
        self.never_shed = never_shed(router.unlimited_gets())  # see surge.http.refusal
        # the protection layer, through the ground floor's interfaces (ground/admission.py)
        self.limiter = limiter  # per-caller rate limits
        self.shedder = shedder  # the limit on concurrent work
        self.observe = observe
        self.access_log = access_log  # share of requests logged (surge.logs)
        self.limits = limits
        self.connections: set[HttpProtocol] = set()
        self.per_client: dict[str, int] = {}  # open connections by peer address
        # connections of this process that are not this listener's (upgraded ones, the
        # other listener's): they share the open-files budget (`HttpLimits.max_open`)
        self.others = others
        self.refused_connections = 0  # over max_connections or max_per_client
        self.in_flight = 0
        self.closing = False  # answer with Connection: close (shutdown delay and drain)
        self.stopped = False  # intake stopped: close connections once idle
        self.drained = asyncio.Event()  # set when stopped and the last connection closed
        self.now = time.monotonic()
        self.date_line = b""
        self._id_prefix = os.urandom(4).hex().encode() + b"-"
        self._id_counter = 0
        self.tick()

    def admit(self, client: str) -> bool:
        """Counts a new connection from `client`, or refuses it: the process or this
        address holds as many as it may (trusted proxies carry many clients: exempt)."""
        limits = self.limits
        open_here = len(self.connections)
        if open_here >= limits.max_connections or open_here + self.others() >= limits.max_open:
            self.refused_connections += 1
            return False
        key = _client_key(client)
        held = self.per_client.get(key, 0)
        if held >= limits.max_per_client and not self._trusted(client):
            self.refused_connections += 1
            return False
        self.per_client[key] = held + 1
        return True

    def release(self, client: str) -> None:
        key = _client_key(client)
        held = self.per_client.get(key, 0) - 1
        if held > 0:
            self.per_client[key] = held
        else:
            self.per_client.pop(key, None)

    def forget(self, conn: HttpProtocol) -> None:
        """`conn` no longer counts: closed, or handed to another protocol."""
        self.connections.discard(conn)
        self.release(conn.client)
        if self.stopped and not self.connections:
            self.drained.set()  # it was the last connection the drain waited for

    def _trusted(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(ip in network for network in self.limits.trusted)

    def tick(self) -> None:
        self.now = time.monotonic()
        self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"

    def new_request_id(self) -> bytes:
        self._id_counter += 1
        return self._id_prefix + b"%x" % self._id_counter


def _client_key(client: str) -> str:
    """An IPv4 address as it is; an IPv6 one by its /64 (one host gets a whole /64 and
    could otherwise take a new address per connection)."""
    if ":" not in client:
        return client
    try:
        return str(ipaddress.IPv6Network((client, 64), strict=False))
    except ValueError:
        return client
