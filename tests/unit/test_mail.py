"""The order mail: composed from the event, sent over real SMTP (aiosmtpd in this
process) or appended to an mbox; failures sorted into "the server" and "this mail"."""

from __future__ import annotations

import asyncio
import mailbox
from pathlib import Path

import aiosmtplib
import orjson
import pytest

from surge.ground.events import Event
from surge.work.consumer import Unavailable
from surge.work.mail import Mailer
from tests.smtp import SmtpSink, smtp_sink

pytestmark = pytest.mark.anyio


def order_event(order_id: int, user: str = "alice", body: str = "") -> Event:
    payload = {"order_id": order_id, "sale_id": 3, "user_id": user, "quantity": 2}
    return Event(f"{order_id}.1795000000", "order.confirmed", orjson.dumps(payload), 1.795e9)


async def test_mails_go_over_smtp_on_one_reused_connection() -> None:
    with smtp_sink() as sink:
        mailer = Mailer(sink.url, Path("/nonexistent"), "shop@example.com", "example.com")
        for i in range(3):
            await mailer(order_event(i + 1))
        await mailer(Event("9.1", "sale.created", b"{}", 1.0))  # not a mail
        await mailer.close()
        got = sink.messages()
    assert [m["Subject"] for m in got] == [f"Order {i} confirmed" for i in (1, 2, 3)]
    first = got[0]
    assert (first["From"], first["To"]) == ("shop@example.com", "alice@example.com")
    assert first["Message-ID"] == "<event-1.1795000000@example.com>"
    assert "2 item(s) of sale 3" in first.get_payload()
    assert len(mailer._idle) == 0  # closed


async def test_failures_of_the_server_and_of_the_mail_are_told_apart() -> None:
    down = SmtpSink()  # never started: connection refused
    mailer = Mailer(down.url, Path("/nonexistent"), "shop@example.com", "example.com")
    with pytest.raises(Unavailable):
        await mailer(order_event(1))
    with smtp_sink() as sink:
        sink.refuse, sink.defer = {"bob"}, {"carol"}
        mailer = Mailer(sink.url, Path("/nonexistent"), "shop@example.com", "example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):  # 550: this mail, for good
            await mailer(order_event(2, "bob"))
        with pytest.raises(Unavailable):  # 450: try again later
            await mailer(order_event(3, "carol"))
        await mailer(order_event(4, "dave"))  # the connection survived both refusals
        assert len(mailer._idle) == 1
        await mailer.close()
        assert [m["Subject"] for m in sink.messages()] == ["Order 4 confirmed"]


async def test_the_mbox_takes_concurrent_appends_and_escapes_from_lines(tmp_path: Path) -> None:
    path = tmp_path / "mail.mbox"
    (tmp_path / "mail.mbox.lock").write_text("left by a killed process")  # no dot-locks here
    mailers = [Mailer(None, path, "shop@example.com", "example.com") for _ in range(3)]
    await asyncio.gather(*(mailers[i % 3](order_event(i + 1, user="From me")) for i in range(30)))
    box = mailbox.mbox(path, create=False)
    try:
        subjects = sorted(int(str(m["Subject"]).split()[1]) for m in box)
        bodies = [m.get_payload() for m in box]
    finally:
        box.close()
    assert subjects == list(range(1, 31))
    assert all(body.startswith("Your order") for body in bodies)
