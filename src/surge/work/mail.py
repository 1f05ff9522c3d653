"""The order-confirmation mail: one per `order.confirmed` event.

Sent over SMTP (aiosmtplib) to `SURGE_SMTP_URL`, or, with no SMTP server configured,
appended to `mail.mbox` in the data dir (readable with any mail reader: `mutt -f`).
The Message-ID is made of the event id, so a duplicate (see docs/worker.md) is
recognisable as one by anyone reading the mail.

Failures: the server unreachable, timing out or answering 421 ("service not available")
is `Unavailable` (the consumer pauses, nothing is counted against the mail); any other
refusal (a 4xx or 5xx reply to this message) is a failed attempt of this mail.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiosmtplib
import orjson

from surge.types import Event
from surge.work.consumer import Unavailable

log = logging.getLogger("surge.mail")

TOPIC = "order.confirmed"
_DOWN = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    OSError,
    asyncio.TimeoutError,
)


def compose(event: Event, sender: str, domain: str) -> EmailMessage:
    order = orjson.loads(event.payload)
    order_id = int(order["order_id"])
    message = EmailMessage()
    message["From"] = sender
    message["To"] = Address(username=str(order["user_id"]), domain=domain)
    message["Subject"] = f"Order {order_id} confirmed"
    message["Date"] = formatdate(event.created, usegmt=True)
    message["Message-ID"] = f"<event-{event.id}@{domain}>"
    message["X-Surge-Event"] = event.id
    message.set_content(
        f"Your order {order_id} is confirmed: {int(order['quantity'])} item(s) "
        f"of sale {int(order['sale_id'])}.\n"
    )
    return message


class Mailer:
    """The `mail` consumer's handler. SMTP connections are reused: one is opened per
    concurrent send at most and kept until it fails."""

    def __init__(self, smtp_url: str | None, mbox: Path, sender: str, domain: str) -> None:
        self._url = urlsplit(smtp_url) if smtp_url else None
        self._mbox = mbox
        self._sender = sender
        self._domain = domain
        self._idle: list[aiosmtplib.SMTP] = []
        self._mbox_lock = asyncio.Lock()

    async def __call__(self, event: Event) -> None:
        if event.topic != TOPIC:
            return
        message = compose(event, self._sender, self._domain)
        if self._url is None:
            async with self._mbox_lock:
                await asyncio.to_thread(self._append, message)
            return
        await self._send(message)

    def _append(self, message: EmailMessage) -> None:
        self._mbox.parent.mkdir(parents=True, exist_ok=True)
        box = mailbox.mbox(self._mbox)
        box.lock()
        try:
            box.add(message)
            box.flush()
        finally:
            box.unlock()
            box.close()

    async def _send(self, message: EmailMessage) -> None:
        client = self._idle.pop() if self._idle else None
        try:
            if client is None or not client.is_connected:
                client = await self._connect()
            await client.send_message(message)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise Unavailable(f"SMTP {exc.code} {exc.message}") from exc
            if client is not None and client.is_connected:
                self._idle.append(client)  # the connection is fine, the message was refused
            raise
        except _DOWN as exc:
            raise Unavailable(f"SMTP: {type(exc).__name__}: {exc}") from exc
        self._idle.append(client)

    async def _connect(self) -> aiosmtplib.SMTP:
        url = self._url
        assert url is not None
        tls = url.scheme == "smtps"
        client = aiosmtplib.SMTP(
            hostname=url.hostname or "localhost",
            port=url.port or (465 if tls else 25),
            username=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            use_tls=tls,
            timeout=10,
        )
        await client.connect()
        return client

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            try:
                await client.quit()
            except Exception:  # already gone: nothing to close politely
                client.close()
