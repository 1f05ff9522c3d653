"""The order mail: composed from the event (surge.work.mail), sent over real SMTP
(aiosmtpd in this process) or appended to an mbox (surge.backends.mail); failures sorted
into "the server" and "this mail", and the consumer treating each as it should."""

from __future__ import annotations

import asyncio
import mailbox
from collections import Counter
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import orjson
import pytest

from surge.backends.mail import SmtpSender, open_mailbox
from surge.ground.events import Delivery, Event
from surge.work.consumer import Consumer, RetryPolicy, Unavailable
from surge.work.mail import Mailer
from tests.smtp import SmtpSink, smtp_sink

pytestmark = pytest.mark.anyio


def order_event(
    order_id: int, user: str = "alice", body: str = "", topic: str = "order.confirmed"
) -> Event:
    payload = {"order_id": order_id, "sale_id": 3, "user_id": user, "quantity": 2}
    return Event(f"{order_id}.1795000000", topic, orjson.dumps(payload), 1.795e9)


async def test_mails_go_over_smtp_on_one_reused_connection() -> None:
    with smtp_sink() as sink:
        smtp = open_mailbox(sink.url, Path("/nonexistent"))
        assert isinstance(smtp, SmtpSender)
        mailer = Mailer(smtp, "shop@example.com", "example.com")
        for i in range(3):
            await mailer(order_event(i + 1))
        await mailer(Event("9.1", "sale.created", b"{}", 1.0))  # not a mail
        await mailer(Event("9.2", "order.cancelled", b"{}", 1.0))  # nor this (issue 19)
        await mailer(order_event(1, topic="order.paid"))
        await mailer(order_event(2, topic="order.expired"))
        await mailer.close()
        got = sink.messages()
    assert [m["Subject"] for m in got] == [
        *(f"Order {i} confirmed" for i in (1, 2, 3)),
        "Order 1 paid",
        "Order 2 expired",
    ]
    assert "went back on sale" in got[-1].get_payload()
    first = got[0]
    assert (first["From"], first["To"]) == ("shop@example.com", "alice@example.com")
    assert first["Message-ID"] == "<event-1.1795000000@example.com>"
    assert "2 item(s) of sale 3" in first.get_payload()
    assert len(smtp._idle) == 0  # closed


async def test_failures_of_the_server_and_of_the_mail_are_told_apart() -> None:
    down = SmtpSink()  # never started: connection refused
    mailer = Mailer(open_mailbox(down.url, Path("/nonexistent")), "shop@example.com", "example.com")
    with pytest.raises(Unavailable):
        await mailer(order_event(1))
    with smtp_sink() as sink:
        sink.refuse, sink.defer = {"bob"}, {"carol"}
        smtp = SmtpSender(sink.url)
        mailer = Mailer(smtp, "shop@example.com", "example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):  # 550: this mail, for good
            await mailer(order_event(2, "bob"))
        with pytest.raises(Unavailable):  # 450: try again later
            await mailer(order_event(3, "carol"))
        await mailer(order_event(4, "dave"))  # the connection survived both refusals
        assert len(smtp._idle) == 1
        await mailer.close()
        assert [m["Subject"] for m in sink.messages()] == ["Order 4 confirmed"]


async def test_the_mbox_takes_concurrent_appends_and_escapes_from_lines(tmp_path: Path) -> None:
    path = tmp_path / "mail.mbox"
    (tmp_path / "mail.mbox.lock").write_text("left by a killed process")  # no dot-locks here
    mailers = [
        Mailer(open_mailbox(None, path), "shop@example.com", "example.com") for _ in range(3)
    ]
    await asyncio.gather(*(mailers[i % 3](order_event(i + 1, user="From me")) for i in range(30)))
    box = mailbox.mbox(path, create=False)
    try:
        subjects = sorted(int(str(m["Subject"]).split()[1]) for m in box)
        bodies = [m.get_payload() for m in box]
    finally:
        box.close()
    assert subjects == list(range(1, 31))
    assert all(body.startswith("Your order") for body in bodies)


# The handler under the consumer with a fake sender and a fake stream: Core alone, no
# SMTP server, no database.

FAST = RetryPolicy(max_attempts=3, base=0.01, cap=0.05, pause_cap=0.2)


class Refused(Exception):
    """What a sender raises for a message refused for good (SMTP 5xx)."""


class FakeSender:
    """Accepts every message, except: while `down`, raises Unavailable; to a recipient in
    `refuse`, raises Refused."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self.down = False
        self.refuse: set[str] = set()
        self.attempts = 0
        self.closed = False

    async def send(self, message: EmailMessage) -> None:
        self.attempts += 1
        if self.down:
            raise Unavailable("SMTP: ConnectionRefusedError")
        if str(message["To"]).split("@")[0] in self.refuse:
            raise Refused("550 mailbox unavailable")
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True


class ListStream:
    """The part of a Stream one consumer uses, in a list: every event read once, failed
    attempts counted, buried letters kept."""

    def __init__(self, events: list[Event]) -> None:
        self.unread = [Delivery(str(i), e) for i, e in enumerate(events)]
        self.acked: list[str] = []
        self.done_ids: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.buried: list[tuple[str, str, int]] = []

    async def read(self, group: str, consumer: str, count: int, block: float) -> list[Delivery]:
        taken, self.unread = self.unread[:count], self.unread[count:]
        if not taken:
            await asyncio.sleep(min(block, 0.01))
        return taken

    async def claim_stale(
        self, group: str, consumer: str, min_idle: float, count: int
    ) -> list[Delivery]:
        return []

    async def touch(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        pass

    async def release(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        pass

    async def forget(self, group: str, consumer: str) -> None:
        pass

    async def done(self, group: str, event_id: str) -> bool:
        return event_id in self.done_ids

    async def ack(self, group: str, delivery: Delivery, handled: bool = True) -> None:
        self.acked.append(delivery.entry)
        if handled:
            self.done_ids.add(delivery.event.id)

    async def failed(self, group: str, delivery: Delivery) -> int:
        self.attempts[delivery.entry] += 1
        return self.attempts[delivery.entry]

    async def bury(self, group: str, delivery: Delivery, error: str, attempts: int) -> None:
        self.buried.append((delivery.event.id, error, attempts))
        self.acked.append(delivery.entry)


async def consume(
    mailer: Mailer, stream: ListStream, until: Callable[[Consumer], bool]
) -> Consumer:
    consumer = Consumer("mail", mailer, stream, "c1", retry=FAST, read_block=0.05)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, drain_timeout=1.0))
    try:
        async with asyncio.timeout(5):
            while not until(consumer):  # noqa: ASYNC110 (polling what the consumer does)
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    return consumer


async def test_a_sender_that_is_down_pauses_the_consumer_and_buries_nothing() -> None:
    sender = FakeSender()
    sender.down = True
    stream = ListStream([order_event(i) for i in range(1, 4)])
    mailer = Mailer(sender, "shop@example.com", "example.com")

    async def back_later() -> None:
        while sender.attempts < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        sender.down = False

    back = asyncio.create_task(back_later())
    c = await consume(mailer, stream, lambda c: c.stats.handled == 3)
    await back
    assert c.stats.unavailable >= 4
    assert (c.stats.failures, c.stats.dead_letters) == (0, 0)  # an outage counts nothing
    assert sorted(str(m["Subject"]) for m in sender.sent) == [
        f"Order {i} confirmed" for i in (1, 2, 3)
    ]
    assert not stream.attempts and not stream.buried


async def test_a_refused_mail_is_a_failed_attempt_then_a_dead_letter() -> None:
    sender = FakeSender()
    sender.refuse = {"bob"}
    events = [order_event(1), order_event(2, "bob"), order_event(3)]
    events.append(Event("4.1", "sale.created", b"{}", 1.0))  # not a mail: handled, unsent
    events.append(Event("5.1", "order.confirmed", b"{}", 1.0))  # cannot be composed
    stream = ListStream(events)
    mailer = Mailer(sender, "shop@example.com", "example.com")
    c = await consume(mailer, stream, lambda c: c.stats.dead_letters == 2)
    await mailer.close()
    assert sender.closed
    assert [str(m["To"]) for m in sender.sent] == ["alice@example.com"] * 2
    assert (c.stats.handled, c.stats.unavailable) == (3, 0)
    assert (c.stats.failures, c.stats.retries) == (6, 4)  # 3 attempts each, 2 retries each
    assert sorted(stream.buried) == [
        ("2.1795000000", "Refused: 550 mailbox unavailable", 3),
        ("5.1", "KeyError: 'order_id'", 3),
    ]
