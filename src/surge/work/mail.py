"""The order mails: one per `order.confirmed` event (the purchase), `order.paid` and
`order.expired` (issue 19: the payment received, the unpaid order given up).

Composed here and handed to a `MailSender` (backends/mail.py: SMTP, or the mbox file
when no SMTP server is configured). The Message-ID is made of the event id, so a
duplicate (see docs/worker.md) is recognisable as one by anyone reading the mail.

Failures are the sender's to classify: `Unavailable` ("try later": the consumer pauses
and retries, and it counts against this mail only if other mails went through meanwhile,
surge.work.consumer); any other exception (refused for good) is a failed attempt of this
mail, as is a payload that cannot be composed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

import orjson

from surge.ground.events import Event
from surge.ground.interfaces import MailSender
from surge.ground.rooms import user_room

TOPIC = "order.confirmed"
# topic -> (subject, first line): `{id}`, `{quantity}`, `{sale}` filled in
MAILS = {
    TOPIC: (
        "Order {id} confirmed",
        "Your order {id} is confirmed: {quantity} item(s) of sale {sale}.",
    ),
    "order.paid": (
        "Order {id} paid",
        "We received the payment for order {id} ({quantity} item(s) of sale {sale}).",
    ),
    "order.expired": (
        "Order {id} expired",
        "Order {id} was not paid in time: its {quantity} item(s) of sale {sale} went back on sale.",
    ),
}
log = logging.getLogger("surge.mail")
# publishes into a room: (room, data as JSON) -> the message's number
Notify = Callable[[str, bytes], Awaitable[int]]


def compose(event: Event, sender: str, domain: str) -> EmailMessage:
    order = orjson.loads(event.payload)
    order_id = int(order["order_id"])
    message = EmailMessage()
    message["From"] = sender
    message["To"] = Address(username=str(order["user_id"]), domain=domain)
    subject, line = MAILS[event.topic]
    fields = {"id": order_id, "quantity": int(order["quantity"]), "sale": int(order["sale_id"])}
    message["Subject"] = subject.format(**fields)
    message["Date"] = formatdate(event.created, usegmt=True)
    message["Message-ID"] = f"<event-{event.id}@{domain}>"
    message["X-Surge-Event"] = event.id
    message.set_content(line.format(**fields) + "\n")
    return message


class Mailer:
    """The `mail` consumer's handler: composes each order mail and hands it to the
    sender (`sender` is the From address). With `notify`, the buyer's room
    (`user:ID`, docs/realtime.md) then hears `{"event": "mail-sent", "order_id": N}`: best
    effort, after the mail went (a failure is logged; the mail is not sent again for it)."""

    def __init__(
        self, mailbox: MailSender, sender: str, domain: str, notify: Notify | None = None
    ) -> None:
        self._mailbox = mailbox
        self._sender = sender
        self._domain = domain
        self._notify = notify

    async def __call__(self, event: Event) -> None:
        if event.topic not in MAILS:
            return
        message = compose(event, self._sender, self._domain)
        await self._mailbox.send(message)
        if self._notify is not None and event.topic == TOPIC:
            await self._tell(event)

    async def _tell(self, event: Event) -> None:
        order = orjson.loads(event.payload)
        room = user_room(str(order["user_id"]))
        if room is None:
            return
        data = b'{"event":"mail-sent","order_id":%d}' % int(order["order_id"])
        try:
            await self._notify(room, data)  # type: ignore[misc]
        except Exception as exc:
            log.warning("%s: mail-sent not published: %s", room, exc)

    async def close(self) -> None:
        await self._mailbox.close()
