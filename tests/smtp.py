"""A real SMTP server (aiosmtpd) in the test process, for the worker's mail tests."""

from __future__ import annotations

import email
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from tests.backends import free_port


class SmtpSink:
    """Accepts every message, except to recipients in `refuse` (550) or `defer` (450);
    can be stopped and started again on the same port (an outage)."""

    def __init__(self, port: int | None = None, delay: float = 0.0) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.refuse: set[str] = set()  # 550: refused for good
        self.defer: set[str] = set()  # 450: try again later
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages()]

    # aiosmtpd handler hooks (its names)
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.partition("@")[0] in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        if address.partition("@")[0] in self.defer:
            return "450 4.2.1 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        message = email.message_from_bytes(envelope.content)
        with self._lock:
            self._messages.append(message)
        return "250 OK"


@contextmanager
def smtp_sink(delay: float = 0.0) -> Iterator[SmtpSink]:
    sink = SmtpSink(delay=delay)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
