"""The side work of one process: the outbox relay and a consumer per group, with metrics.

`surge worker` runs one (surge.worker_process); in embedded mode `surge serve` runs one
inside itself (SURGE_INLINE_WORKER). Any number may run at once against the same
database and stream: see docs/worker.md for the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from surge.ground.interfaces import MailSender, Outbox, Stream
from surge.work.audit import AuditLog
from surge.work.consumer import Consumer, RetryPolicy
from surge.work.mail import Mailer, Notify
from surge.work.relay import OutboxRelay

log = logging.getLogger("surge.worker")

WATCH_EVERY = 2.0  # seconds between looks at the stream's backlog (for the gauges)


def worker_name() -> str:
    """Unique among the workers that run at once: a consumer's name in its groups, the
    holder of the SQLite outbox lease."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    drain_timeout: float = 5.0  # seconds events in flight get at a stop
    outbox_poll: float = 0.2
    outbox_retention: float = 7 * 86_400.0
    concurrency: int = 16  # events one consumer handles at once
    max_attempts: int = 5  # failed deliveries before the dead-letter stream
    claim_idle: float = 60.0  # seconds before a silent consumer's events are taken
    mail_from: str = "surge@localhost"
    mail_domain: str = "localhost"  # a buyer's address: <user id>@<mail_domain>


class Worker:
    def __init__(
        self,
        options: WorkerOptions,
        outbox: Outbox,
        stream: Stream,
        mailbox: MailSender,
        audit: AuditLog,
        name: str,
        notify: Notify | None = None,
    ) -> None:
        self.name = name
        self.stream = stream
        self.drain_timeout = options.drain_timeout
        self.relay = OutboxRelay(
            outbox, stream, poll=options.outbox_poll, retention=options.outbox_retention
        )
        self.mailer = Mailer(mailbox, options.mail_from, options.mail_domain, notify)
        self.audit = audit
        retry = RetryPolicy(max_attempts=options.max_attempts)
        self.consumers = [
            Consumer(
                group,
                handler,
                stream,
                self.name,
                concurrency=options.concurrency,
                retry=retry,
                min_idle=options.claim_idle,
            )
            for group, handler in (("mail", self.mailer), ("audit", self.audit))
        ]
        self.pending: dict[str, float] = {c.group: 0.0 for c in self.consumers}
        self.dead_letters = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            await self.stream.prepare([c.group for c in self.consumers])
        except Exception as exc:  # Redis down: the consumers make the groups once it is back
            log.warning("worker %s: could not prepare the stream yet: %s", self.name, exc)
        stop = self._stop
        self._tasks = [
            asyncio.create_task(self.relay.run(stop), name="outbox-relay"),
            asyncio.create_task(self._watch(), name="stream-watch"),
        ]
        self._tasks += [
            asyncio.create_task(c.run(stop, self.drain_timeout), name=f"consumer-{c.group}")
            for c in self.consumers
        ]
        log.info(
            "worker %s: relaying the outbox; consumers: %s", self.name, ", ".join(self.pending)
        )

    async def stop(self) -> None:
        """Stops taking work; events in flight get the drain timeout, the rest are handed
        back to the stream for any worker to take."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.mailer.close()
        await self.audit.close()

    async def probe_stream(self) -> None:
        """For readiness: the stream answers and knows this worker's groups."""
        await self.stream.pending(self.consumers[0].group)

    async def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for consumer in self.consumers:
                    self.pending[consumer.group] = float(await self.stream.pending(consumer.group))
                self.dead_letters = float(await self.stream.dead_count())
            except Exception as exc:  # the stream is down; the consumers say so too
                log.debug("stream watch: %s", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), WATCH_EVERY)
            except TimeoutError:
                pass
