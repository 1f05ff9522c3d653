"""Where the order mails go (the `MailSender` of surge.ground.interfaces): an SMTP server
(aiosmtplib) at `SURGE_SMTP_URL`, or, with no SMTP server configured, `mail.mbox` in the
data dir (readable with any mail reader: `mutt -f`). `open_mailbox` picks one.

Failures: anything that goes wrong while connecting (refused, timeout, greeting, EHLO,
STARTTLS, AUTH), a dropped connection, and every 4xx reply ("try again later") are
`Unavailable`: the consumer pauses and retries, and it counts against this mail only if
other mails went through meanwhile (surge.work.consumer). A 5xx reply (refused for good)
raises aiosmtplib's own exception: a failed attempt of this mail.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import time
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import aiosmtplib

from surge.ground.errors import Unavailable
from surge.ground.interfaces import MailSender

_DOWN = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    OSError,
    asyncio.TimeoutError,
)


def open_mailbox(smtp_url: str | None, mbox_path: Path) -> MailSender:
    """SMTP when a URL is given (`smtp://[user:password@]host:port`, STARTTLS when the
    server offers it; `smtps://host:465`, TLS from the start), else the mbox file."""
    if smtp_url:
        return SmtpSender(smtp_url)
    return MboxSender(mbox_path)


class SmtpSender:
    """Sends over SMTP. Connections are reused: one is opened per concurrent send at most
    and kept until it fails."""

    def __init__(self, url: str) -> None:
        self._url: SplitResult = urlsplit(url)
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, message: EmailMessage) -> None:
        client = self._idle.pop() if self._idle else None
        if client is None or not client.is_connected:
            try:
                client = await self._connect()
            except Exception as exc:  # connect, greeting, EHLO, STARTTLS, AUTH: the server's
                raise Unavailable(f"SMTP: {type(exc).__name__}: {exc}") from exc
        healthy = True
        try:
            await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(400 <= r.code < 500 for r in exc.recipients):
                raise Unavailable(f"SMTP: recipient deferred: {exc}") from exc
            raise  # refused for good (5xx): this mail's failure
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:  # "try again later", 421 included
                healthy = exc.code != 421  # 421: the server closes the connection
                raise Unavailable(f"SMTP {exc.code} {exc.message}") from exc
            raise
        except _DOWN as exc:
            healthy = False
            raise Unavailable(f"SMTP: {type(exc).__name__}: {exc}") from exc
        finally:
            if healthy and client.is_connected:
                self._idle.append(client)  # after RSET the connection serves the next mail
            else:
                client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        url = self._url
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
        """Closes idle connections: QUIT politely, but a hung server gets a second, not
        a timeout per connection."""
        idle, self._idle = self._idle, []

        async def bye(client: aiosmtplib.SMTP) -> None:
            try:
                await client.quit(timeout=1.0)
            except Exception:  # gone or hung: just close
                client.close()

        await asyncio.gather(*(bye(c) for c in idle))


class MboxSender:
    """Appends to an mbox file, which several processes may share."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    async def send(self, message: EmailMessage) -> None:
        async with self._lock:
            await asyncio.to_thread(self._append, message)

    def _append(self, message: EmailMessage) -> None:
        """One O_APPEND write of the mbox entry under a blocking flock, then fsync.
        (Not the stdlib `mailbox`: its dot-lock outlives a killed process and then refuses
        every later append, its lockf does not wait, and each add rereads the file.)"""
        out = io.BytesIO()
        out.write(b"From surge " + time.asctime(time.gmtime()).encode() + b"\n")
        BytesGenerator(out, mangle_from_=True, policy=SMTP_POLICY.clone(linesep="\n")).flatten(
            message
        )
        entry = out.getvalue().rstrip(b"\n") + b"\n\n"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process appending waits its turn
            os.write(fd, entry)
            os.fsync(fd)
        finally:
            os.close(fd)  # (releases the lock)

    async def close(self) -> None:
        pass  # nothing held between mails
