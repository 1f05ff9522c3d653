"""Load shedding: an adaptive limit on concurrent work, a hard cap behind it.

What is limited is work that waits: a request whose handler needs I/O (a database or
Redis lookup, a purchase) holds a slot from the moment that work starts until it is
answered. A request over the limit is answered 503 `overloaded` with Retry-After before
any of its I/O starts (a coroutine is closed unstarted; the order query's lookup never
starts). Answers made on the spot (near-cache hits, validation errors, 429s) need no
slot, but once every slot is taken a lone GET is refused before it is even parsed
(surge.http.refusal): under overload the cost of a refusal decides what is left to serve.

The limit is Gradient2 (Netflix concurrency-limits; Envoy's adaptive concurrency is the
same idea): per window of answered reads, compare the long-run average latency with the
window's. Latency that grows while concurrency does is queueing: shrink the limit by the
ratio (at most by half per window); otherwise grow it by a small queue allowance. The
smoothing and the tolerance keep noise from moving it. A latency target (half the order
query's deadline, by default) caps it too: Gradient2 alone takes a queue that lasts for
the new normal and lets the limit creep up. A window with a 504, or in which a probe saw
the event loop run late, shrinks it as far as a window may, but only while the limit is
in use. Reads are refused at the limit, writes (purchases) only past `write_priority`
times it, so purchases get the headroom.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

# the 503 of a request shed is the engine's too: it lives on the ground floor
from surge.ground.admission import overloaded as overloaded
from surge.ground.web import Request

PROBE = 0.01  # seconds between two looks at the event loop's lag


@dataclass(frozen=True, slots=True)
class ShedSettings:
    initial: float = 100.0
    min_limit: float = 20.0
    max_limit: float = 1000.0  # also the hard cap: no more work at once, whatever the latency
    tolerance: float = 1.5  # a window this much slower than the long run is not yet queueing
    target: float = 0.025  # seconds: a window's mean latency above this shrinks the limit
    smoothing: float = 0.2
    long_window: int = 600  # samples the long-run average spans
    window_samples: int = 20  # a window closes after this many answers ...
    window_seconds: float = 0.1  # ... and at least this long
    write_priority: float = 1.25  # writes are refused only past limit x this
    max_lag: float = 0.005  # seconds: an event loop later than this is saturated
    adaptive: bool = True  # False: only the hard cap


class Gradient2:
    """The limit arithmetic, fed one window at a time (no clock, no I/O: unit-tested)."""

    def __init__(self, settings: ShedSettings) -> None:
        self.settings = settings
        self.limit = settings.initial
        self.long_rtt = 0.0
        self._long_samples = 0

    def update(self, short_rtt: float, max_in_flight: int, late: bool = False) -> float:
        """A window closed: its mean latency, the most work in flight during it, and
        whether any of its requests missed its deadline (then, if the limit was in use,
        it shrinks as much as it can: like a lost packet for TCP, a sign of queueing)."""
        s = self.settings
        if short_rtt <= 0.0:
            return self.limit
        if self._long_samples < 10:  # warm-up: a plain mean of the first windows
            self._long_samples += 1
            self.long_rtt += (short_rtt - self.long_rtt) / self._long_samples
        else:
            alpha = 2.0 / (s.long_window / s.window_samples + 1.0)
            self.long_rtt += alpha * (short_rtt - self.long_rtt)
        # after a long overload the long-run average is inflated: let it come down faster
        if self.long_rtt / short_rtt > 2.0:
            self.long_rtt *= 0.95
        if max_in_flight < self.limit / 2:  # not using the limit: no evidence either way
            return self.limit
        # Gradient2 compares with the long run only, so a queue that persists becomes the
        # new normal and the limit creeps up; the latency target bounds that drift
        gradient = max(0.5, min(1.0, s.tolerance * self.long_rtt / short_rtt, s.target / short_rtt))
        if late:
            gradient = 0.5
        queue = max(4.0, math.sqrt(self.limit))
        target = self.limit * gradient + queue
        limit = self.limit * (1.0 - s.smoothing) + target * s.smoothing
        self.limit = max(s.min_limit, min(s.max_limit, limit))
        return self.limit


class Shedder:
    def __init__(self, settings: ShedSettings) -> None:
        self.settings = settings
        self.gradient = Gradient2(settings)
        self.working = 0  # requests holding a slot
        self.shed = {"read": 0, "write": 0}
        self._now = time.monotonic  # tests replace it
        self._window_start = self._now()
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = 0
        self._window_late = False
        self.lag = 0.0  # worst event-loop lag seen by the probe in this window, seconds
        self._probe: asyncio.TimerHandle | None = None
        self._refresh()

    def start(self) -> None:
        """Starts the loop-lag probe (on the running loop). Latency measured from a
        request's parse is blind to requests still waiting in socket buffers because the
        loop is busy; a late probe sees that queue."""
        if self.settings.adaptive:
            loop = asyncio.get_running_loop()
            self._probe = loop.call_later(PROBE, self._probed, loop, loop.time() + PROBE)

    def _probed(self, loop: asyncio.AbstractEventLoop, expected: float) -> None:
        now = loop.time()
        self.lag = max(self.lag, now - expected)
        self._probe = loop.call_later(PROBE, self._probed, loop, now + PROBE)

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()

    def _refresh(self) -> None:
        s = self.settings
        limit = self.gradient.limit if s.adaptive else s.max_limit
        self.read_limit = int(limit)  # every read slot taken: `working >= read_limit`
        self._write_limit = int(min(s.max_limit, limit * s.write_priority))

    @property
    def limit(self) -> float:
        return self.gradient.limit if self.settings.adaptive else self.settings.max_limit

    def admit(self, route_class: str) -> bool:
        """Takes a slot for work about to start, or refuses (counted)."""
        bound = self.read_limit if route_class == "read" else self._write_limit
        if self.working >= bound:
            self.shed[route_class] = self.shed.get(route_class, 0) + 1
            return False
        self.working += 1
        if self.working > self._window_peak:
            self._window_peak = self.working
        return True

    def take(self, request: Request, route_class: str) -> bool:
        """For a handler about to start I/O of its own (the order query's lookup): a slot
        for `request`, given back when the server answers it."""
        if request.slot:
            return True
        if self.admit(route_class):
            request.slot = route_class
            return True
        return False

    def release(self, seconds: float, late: bool = False, route_class: str = "read") -> None:
        """The work of an admitted request is answered, `seconds` after it arrived;
        `late`: it was answered 504, past its deadline. Only reads' latencies feed the
        window's mean: the target is the order query's, and a purchase normally takes
        longer (a commit) without anything queueing."""
        self.working -= 1
        if not self.settings.adaptive:
            return
        self._window_late = self._window_late or late
        if route_class != "read":
            return
        self._window_sum += seconds
        self._window_count += 1
        if self._window_count < self.settings.window_samples:
            return
        now = self._now()
        if now - self._window_start < self.settings.window_seconds:
            return
        # a late loop counts only while the work admitted is a cause: a fan-out to 10,000
        # WebSocket subscribers blocks the loop for 90 ms on purpose
        busy = self._window_peak >= self.read_limit / 2
        late = self._window_late or (busy and self.lag > self.settings.max_lag)
        self.gradient.update(self._window_sum / self._window_count, self._window_peak, late)
        self.lag = 0.0
        self._refresh()
        self._window_start = now
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = self.working
        self._window_late = False
