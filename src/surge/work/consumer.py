"""One consumer group's loop: read, deduplicate, handle, acknowledge; retry; bury.

- An event the group already handled (its id is marked done) is acknowledged unhandled.
- A handler that raises `Unavailable` (its dependency is down, e.g. SMTP unreachable;
  the same exception an open circuit breaker raises, backends/breaker.py)
  pauses the whole consumer with a growing back-off; the event is retried afterwards and
  the failure is not counted against it: an outage delays mail, it does not bury it.
  (Unless other events went through since this one's last `Unavailable`: then it is
  this event the dependency refuses, and the attempt counts.)
- Any other error counts one failed attempt (kept in the stream, so it survives a
  restart); the event is retried after an exponential back-off with jitter, and after
  `max_attempts` it moves to the dead-letter stream.
- Events being worked on are "touched" so that another worker does not take them over;
  the events of a worker that died are taken over after `min_idle` seconds.
- The work done, the acknowledgement is retried until the stream takes it.
- Stopping: no new reads; events in flight get `drain_timeout` to finish; the rest are
  handed back at once (any worker may take them) and the loop returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from surge.ground.errors import Unavailable
from surge.ground.events import Delivery, Event
from surge.ground.interfaces import Stream

log = logging.getLogger("surge.consumer")

EventHandler = Callable[[Event], Awaitable[None]]
__all__ = ["Consumer", "ConsumerStats", "EventHandler", "RetryPolicy", "Unavailable"]


@dataclass(slots=True)
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    retries: int = 0
    dead_letters: int = 0
    unavailable: int = 0


@dataclass(slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base: float = 0.5  # seconds before the first retry
    cap: float = 30.0
    pause_cap: float = 30.0  # longest pause while a dependency is unavailable

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: attempt n waits base * 2^(n-1), capped, times
        a random factor in [0.5, 1] so that retries of a burst do not come back together."""
        delay: float = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)


@dataclass(slots=True)
class Consumer:
    group: str
    handler: EventHandler
    stream: Stream
    name: str  # this process's consumer name in the group
    concurrency: int = 16
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    min_idle: float = 60.0
    claim_every: float = 5.0
    read_block: float = 1.0
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    _active: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _unacknowledged: set[str] = field(default_factory=set)
    _paused_until: float = 0.0
    _pause: float = 0.0

    async def run(self, stop: asyncio.Event, drain_timeout: float = 5.0) -> None:
        next_claim = next_touch = 0.0
        trouble = 0.5
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_touch:
                    next_touch = now + self.min_idle / 3
                    await self.stream.touch(self.group, self.name, list(self._active))
                free = self.concurrency - len(self._active)
                if free <= 0 or now < self._paused_until:
                    await self._wait(stop, min(1.0, max(0.05, self._paused_until - now)))
                    continue
                deliveries = []
                if now >= next_claim:
                    next_claim = now + self.claim_every
                    deliveries = await self.stream.claim_stale(
                        self.group, self.name, self.min_idle, free
                    )
                if len(deliveries) < free:
                    deliveries += await self.stream.read(
                        self.group, self.name, free - len(deliveries), self.read_block
                    )
                for delivery in deliveries:
                    if delivery.entry not in self._active:
                        self._start(delivery)
                trouble = 0.5
            except Exception as exc:  # the stream is down: keep what is in flight, wait
                log.warning("consumer %s: stream error: %s", self.group, exc)
                await self._wait(stop, trouble * random.uniform(0.8, 1.2))
                trouble = min(trouble * 2, 10.0)
        await self._drain(drain_timeout)
        try:
            await self.stream.forget(self.group, self.name)
        except Exception as exc:  # a name left listed: harmless
            log.debug("consumer %s: could not drop its name: %s", self.group, exc)

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._process(delivery), name=f"consume-{self.group}")
        self._active[delivery.entry] = task
        task.add_done_callback(lambda _t: self._active.pop(delivery.entry, None))

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Sleeps `seconds`, or less if `stop` is set or an event in flight finishes."""
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
        waiters.update(self._active.values())
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                if waiter not in self._active.values():
                    waiter.cancel()

    async def _process(self, delivery: Delivery) -> None:
        group, stream, event = self.group, self.stream, delivery.event
        try:
            if delivery.only is not None and delivery.only != group:
                await stream.ack(group, delivery, handled=False)  # a replay for another group
                return
            if await stream.done(group, event.id):
                self.stats.duplicates += 1
                await stream.ack(group, delivery, handled=False)
                return
            if not await self._handle(delivery):
                return  # buried
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream failed: the entry stays pending, taken up later
            log.warning("consumer %s: event %s left pending: %s", group, event.id, exc)
            return
        await self._acknowledge(delivery)

    async def _handle(self, delivery: Delivery) -> bool:
        """Runs the handler until it succeeds (True) or the event is buried (False)."""
        event = delivery.event
        handled_then: int | None = None  # the handled count at this event's last Unavailable
        while True:
            try:
                await self.handler(event)
                return True
            except Unavailable as exc:
                self.stats.unavailable += 1
                if handled_then is None or self.stats.handled == handled_then:
                    # nothing went through meanwhile: the dependency is down, not this event
                    handled_then = self.stats.handled
                    await self._pause_for(exc)
                    continue
                # others went through since this one last failed: it is this event's fault
                # (a message the server drops the connection on); count it
                handled_then = self.stats.handled
                if not await self._failed(delivery, exc):
                    return False
            except Exception as exc:
                if not await self._failed(delivery, exc):
                    return False

    async def _failed(self, delivery: Delivery, exc: Exception) -> bool:
        """Counts a failed attempt: True after the back-off (retry), False once buried."""
        group = self.group
        self.stats.failures += 1
        attempts = await self.stream.failed(group, delivery)
        if attempts >= self.retry.max_attempts:
            await self.stream.bury(group, delivery, f"{type(exc).__name__}: {exc}", attempts)
            self.stats.dead_letters += 1
            log.error(
                "consumer %s: event %s failed %d times, moved to the dead letters: %s",
                group,
                delivery.event.id,
                attempts,
                exc,
            )
            return False
        self.stats.retries += 1
        await asyncio.sleep(self.retry.backoff(attempts))
        return True

    async def _acknowledge(self, delivery: Delivery) -> None:
        """The work is done: acknowledge it, however long the stream takes to come back.
        Given up, the entry would be taken over later and the work done twice."""
        delay = 0.25
        self._unacknowledged.add(delivery.entry)
        try:
            while True:
                try:
                    await self.stream.ack(self.group, delivery)
                    break
                except Exception as exc:
                    log.warning(
                        "consumer %s: event %s handled, acknowledging it failed: %s",
                        self.group,
                        delivery.event.id,
                        exc,
                    )
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, 5.0)
        finally:
            self._unacknowledged.discard(delivery.entry)
        self.stats.handled += 1
        self._pause = 0.0

    async def _pause_for(self, exc: Exception) -> None:
        """Every event in flight waits out the same pause; it doubles (to `pause_cap`) each
        time it runs out with the dependency still down."""
        now = time.monotonic()
        if now >= self._paused_until:
            self._pause = min(self.retry.pause_cap, max(0.25, self._pause * 2))
            self._paused_until = now + self._pause * random.uniform(0.8, 1.2)
            log.warning(
                "consumer %s: unavailable (%s); pausing %.1f s", self.group, exc, self._pause
            )
        await asyncio.sleep(max(0.0, self._paused_until - now))

    async def _drain(self, grace: float) -> None:
        if self._active:
            await asyncio.wait(list(self._active.values()), timeout=grace)
        left = dict(self._active)
        # handled but not acknowledged (the stream is down): handing those back would
        # have them done again at once; left pending, they are taken over after min_idle
        undone = [entry for entry in left if entry not in self._unacknowledged]
        for task in left.values():
            task.cancel()
        await asyncio.gather(*left.values(), return_exceptions=True)
        if undone:
            try:
                await self.stream.release(self.group, self.name, undone)
            except Exception as exc:  # they are taken over after min_idle instead
                log.warning(
                    "consumer %s: could not hand back %d events: %s", self.group, len(undone), exc
                )
