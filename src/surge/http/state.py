"""What every connection of one process shares: the app's router, the clock, the
request ids, the drain flags, and the protection layer (rate limits, load shedding)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

from surge.http.refusal import never_shed
from surge.http.router import Router
from surge.protect.ratelimit import RateLimiter
from surge.protect.shedder import Shedder

if TYPE_CHECKING:
    from surge.http.server import HttpProtocol

Observer = Callable[[str, str, int, float], None]


class ServerState:
    """Shared by every connection of one process: the app, the clock and the drain flags."""

    def __init__(
        self, router: Router, observe: Observer, keepalive_timeout: float, max_body: int
    ) -> None:
        self.router = router
        self.never_shed = never_shed(router.unlimited_gets())  # see surge.http.refusal
        self.limiter: RateLimiter | None = None  # per-caller rate limits (surge.protect)
        self.shedder: Shedder | None = None  # the limit on concurrent work
        self.observe = observe
        self.access_log = 0.0  # share of requests logged (surge.logs)
        self.keepalive_timeout = keepalive_timeout
        self.max_body = max_body
        self.connections: set[HttpProtocol] = set()
        self.in_flight = 0
        self.closing = False  # answer with Connection: close (shutdown delay and drain)
        self.stopped = False  # intake stopped: close connections once idle
        self.drained = asyncio.Event()  # set when stopped and the last connection closed
        self.now = time.monotonic()
        self.date_line = b""
        self._id_prefix = os.urandom(4).hex().encode() + b"-"
        self._id_counter = 0
        self.tick()

    def tick(self) -> None:
        self.now = time.monotonic()
        self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"

    def new_request_id(self) -> bytes:
        self._id_counter += 1
        return self._id_prefix + b"%x" % self._id_counter
