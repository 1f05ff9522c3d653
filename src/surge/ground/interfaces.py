"""The interfaces every backend implements and Core programs against.

Each backend is built by URL scheme in `surge.backends` and passes the same contract suite
(tests/contract). The in-memory implementations are both the embedded default and the
fakes the unit tests use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

from surge.ground.events import DeadLetter, Delivery, Event
from surge.ground.orders import Order, OrderState, Transition
from surge.ground.purchases import (
    Answer,
    Confirmed,
    GateState,
    Purchase,
    Reconciled,
    StoredOrder,
    Win,
)
from surge.ground.sales import NewSale, Sale


class OrderStates(Protocol):
    """An order's life after its purchase (docs/sales.md): pending -> paid | cancelled |
    expired. Every transition is one conditional update in one transaction, so exactly
    one of any racing calls makes it; a cancellation or an expiry gives the order's units
    back to the sale and frees them from the buyer's limit in the same transaction, and
    each writes an outbox event (order.paid, order.cancelled, order.expired).
    Times are aware UTC; the database keeps them to the second."""

    async def get(self, order_id: int) -> OrderState | None: ...

    async def pay(
        self, order_id: int, user_id: str, pay_key: str, payment_ref: str, now: datetime
    ) -> Transition:
        """The owner pays a pending order before its pay_by."""
        ...

    async def cancel(self, order_id: int, user_id: str | None, now: datetime) -> Transition:
        """The owner (`user_id`) cancels a pending order; an admin (None) a pending or a
        paid one."""
        ...

    async def expire(self, order_id: int, now: datetime) -> Transition:
        """A pending order whose pay_by has passed."""
        ...

    async def expire_due(self, now: datetime, limit: int) -> list[OrderState]:
        """Expires up to `limit` pending orders whose pay_by has passed, the oldest
        deadline first, in one transaction (the sweep); the expired."""
        ...


class Cache(Protocol):
    """A shared byte cache with per-key TTL (Redis, or in-process in embedded mode)."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    def set_soon(self, key: str, value: bytes, ttl: float) -> None:
        """Schedules a write without waiting for it; failures are logged, never raised."""
        ...

    async def delete(self, *keys: str) -> None:
        """Forgets the keys (one round trip for all of them)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


Handler = Callable[[bytes], None]


class Bus(Protocol):
    """Fire-and-forget pub/sub between processes (Redis pub/sub, or in-process)."""

    async def publish(self, channel: str, message: bytes) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> None: ...

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """`hook` runs after the bus lost its connection and got it back (messages sent
        meanwhile may be lost)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """The SQL database: what must last."""

    async def get_orders(self, ids: Sequence[int]) -> dict[int, Order]: ...

    def changed(self, ids: Sequence[int]) -> None:
        """These orders were just written (bought, paid, cancelled, expired): reads of
        them must not come from a replica that may not have the write yet."""
        ...

    async def warm(self) -> None:
        """Opens its connections ahead of traffic."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def in_use(self) -> int:
        """Connections checked out right now (for the pool gauge)."""
        ...

    @property
    def size(self) -> int: ...


Probe = Callable[[], Awaitable[None]]


class Stream(Protocol):
    """A durable log of events with consumer groups (Redis Streams, or an SQLite file in
    embedded mode): at-least-once, each group sees every event, an entry stays pending
    for its consumer until acknowledged, and entries of a consumer that died are claimed
    by another after `min_idle` seconds."""

    async def prepare(self, groups: Sequence[str]) -> None:
        """Creates the groups (reading from the beginning) if they are new."""
        ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Appends the events in order; returns only once they are stored."""
        ...

    async def read(self, group: str, consumer: str, count: int, block: float) -> list[Delivery]:
        """Up to `count` new entries for `consumer`, waiting up to `block` seconds."""
        ...

    async def claim_stale(
        self, group: str, consumer: str, min_idle: float, count: int
    ) -> list[Delivery]:
        """Takes over entries other consumers have held for `min_idle` seconds or more."""
        ...

    async def touch(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        """Resets the idle time of entries still being worked on (not stale)."""
        ...

    async def release(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        """Hands entries back at once: any consumer may claim them now."""
        ...

    async def forget(self, group: str, consumer: str) -> None:
        """Drops a stopping consumer's name from the group if it holds nothing (Redis
        would list every worker that ever ran, for ever)."""
        ...

    async def done(self, group: str, event_id: str) -> bool:
        """True when the group has already handled this event (deduplication)."""
        ...

    async def ack(self, group: str, delivery: Delivery, handled: bool = True) -> None:
        """Drops the entry from the group's pending list and, when `handled`, marks the
        event done for the group (deduplication), atomically."""
        ...

    async def failed(self, group: str, delivery: Delivery) -> int:
        """Counts one failed attempt; returns the count so far (kept across restarts)."""
        ...

    async def bury(self, group: str, delivery: Delivery, error: str, attempts: int) -> None:
        """Moves the entry to the dead-letter stream and acknowledges it, atomically."""
        ...

    async def dead_letters(self, count: int) -> list[DeadLetter]: ...

    async def dead_count(self) -> int: ...

    async def replay(self, entries: Sequence[str]) -> int:
        """Republishes dead letters (each to its group alone) and removes them; returns
        how many were found."""
        ...

    async def pending(self, group: str) -> int:
        """Entries published but not yet acknowledged by the group (incl. unread)."""
        ...

    async def trim(self) -> None:
        """Drops entries every group has acknowledged."""
        ...

    async def close(self) -> None: ...


Publish = Callable[[Sequence[Event]], Awaitable[None]]


class Outbox(Protocol):
    """The outbox: events committed with the changes they announce (an order and its
    `order.confirmed` in one transaction), waiting to be relayed to the `Stream`.

    Nothing committed is lost: a row is marked published only after `publish` returned,
    in the transaction that holds its lock, so a relay that dies mid-batch leaves its rows
    unpublished for the next pass (any relay's). Several relays may share one outbox: no
    two of them hold the same row at once (row locks, or one relay at a time)."""

    async def relay_batch(self, limit: int, publish: Publish) -> int:
        """Takes up to `limit` unpublished events, oldest first (in id order), locked for
        this relay alone, and awaits `publish(events)` INSIDE the transaction that holds
        the lock; only once it returned are the rows marked published, in that same
        transaction. Returns how many were published: 0 when there are none, or when
        another relay has the right to relay now. If `publish` raises (or the outbox
        cannot mark the rows as its own any more), nothing is marked and the exception
        propagates: the rows stay unpublished and a later pass publishes them (so an
        event may be published twice, never lost)."""
        ...

    async def oldest_unpublished(self) -> float | None:
        """The creation time (Unix seconds) of the oldest event not published yet; None
        when every event is published. (Core turns it into the lag: now minus this.)"""
        ...

    async def delete_published_before(self, before: float, limit: int) -> int:
        """Deletes up to `limit` events published before `before` (Unix seconds), oldest
        first, in one transaction; returns how many (fewer than `limit`: none left)."""
        ...

    async def close(self) -> None:
        """This relay stops: gives up what it holds (the right to relay, where only one
        relay at a time may) so that another relay takes over at once. May raise: what
        it holds then lapses by itself."""
        ...


class MailSender(Protocol):
    """Where the order mails go (an SMTP server, or an mbox file)."""

    async def send(self, message: EmailMessage) -> None:
        """Delivers one message; returns once it is accepted (or stored).

        Raises `Unavailable` (surge.ground.errors) when it cannot go now and may later:
        the server cannot be reached or set up (refused, timeout, greeting, EHLO,
        STARTTLS, AUTH), the connection dropped, any 4xx reply. The consumer pauses and
        retries it without counting the attempt. Any other exception means this message
        was refused for good (SMTP 5xx): a failed attempt of this mail, whose kind and
        text the dead letter records (the SMTP sender lets the driver's own exception
        through, e.g. `SMTPRecipientsRefused`)."""
        ...

    async def close(self) -> None:
        """Closes its connections (a hung server gets a second, not a timeout each)."""
        ...


class Gate(Protocol):
    """The stock gate: one atomic step that says whether a purchase may go on to the database.

    It checks, all at once: the sale is known and live, the key was not used before, the user
    stays within the limit, stock is left; and if so reserves the stock. It is only the fast
    path: the database re-checks stock, limit and key in the purchase transaction, so a gate
    that lost its state (Redis restarted) can let too many through to the database but never
    lets an order be oversold.

    Outcomes of `reserve`: "ok", "sold_out", "limit", "in_flight" (the key's first request is
    still running), "done" (the key already bought: `order_id`), "mismatch" (the key was used
    with another request), "uncertain" (see below), "not_live", "unknown" (the gate holds no
    state for the sale: load it from the database and try again).

    A key is pending ("p") from its reservation until the gate learns its order ("d"); an
    order cancelled or expired gives its units back and its key becomes returned ("r":
    it replays the order, holds no stock, and never becomes anything else). A
    reservation whose commit may have landed although nobody heard it (the connection was
    lost during the commit, the deadline and its grace passed, or the request died and the
    reservation went stale) gives its stock back but keeps its key, as uncertain ("u"), for
    `UNCERTAIN_FOR_MS`: a retry of it gets "uncertain", and surge.sales.purchase asks the database:
    the order's 201 if it committed; else the retry may buy afresh (`retake`: the database's
    unique key would catch a late commit of the first attempt and replay it), and if the gate
    refuses it, the key stays uncertain, since the first commit may still land. Thanks to
    that and to reconciliation, the gate knows every committed key, and its refusals of
    unknown keys need no database query.

    `reconcile` installs a sale's state from a snapshot of the database, or brings an existing
    one in step with it: see surge.sales.reconcile for why that is exact while purchases go on.
    """

    async def reconcile(self, state: GateState, stale_ms: int) -> Reconciled:
        """Makes the gate agree with `state` (a snapshot taken before the call): every
        stored order's key replays it; remaining = the snapshot's, less what is reserved
        and not committed yet, less what committed after the snapshot; pending
        reservations older than `stale_ms` give their stock back and become uncertain
        (their process died or gave up; if their commit lands after all, the next
        reconciliation counts it)."""
        ...

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer: ...

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        """The reservations became orders: their keys now replay them (one step for all)."""
        ...

    async def release(
        self,
        sale_id: int,
        user_id: str,
        key: str,
        quantity: int,
        uncertain: bool = False,
        fingerprint: str = "",
    ) -> int:
        """Gives a reservation back (its commit failed; with `uncertain`, maybe not: the
        key stays, or is written, as uncertain); returns the remaining stock."""
        ...

    async def give_back(self, sale_id: int, order: StoredOrder) -> int:
        """The database cancelled or expired `order`: its units go back on sale, once (a
        repeated call, or one for a key that held no stock, changes no count); its key
        becomes returned. Returns the remaining stock (-1: the gate holds nothing for the
        sale; the next reconciliation installs it from the database)."""
        ...

    async def retake(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        """An uncertain key whose order the database does not have tries to buy, as a
        fresh attempt ("ok" reserves); refused, it stays uncertain (`uncertain_ms` says
        for how long). "again": it is no longer uncertain, `reserve` decides it."""
        ...

    async def sold_out(self, sale_id: int) -> None:
        """The database says no stock is left: the gate agrees from now on."""
        ...

    async def remaining(self, sale_id: int) -> int | None: ...

    async def keys(self, sale_id: int) -> frozenset[str] | None:
        """Every `user|key` the gate holds for the sale, committed, pending or uncertain
        (None: no state for it)."""
        ...

    async def claim(self, sale_id: int, seconds: float) -> bool:
        """True for one caller among all processes per `seconds`: the one that reconciles
        the sale this period."""
        ...


class Sales(Protocol):
    """The sales in the database: where "no oversell, no lost order" is decided, whatever
    the gate believed. `purchase` lowers the sale's stock only if enough is left, raises
    the user's count only within the limit, stores the order (unique per user and key) and
    its outbox event, and commits before anyone hears "201"."""

    async def create_sale(self, new: NewSale, now: datetime) -> Sale: ...

    async def get_sale(self, sale_id: int) -> Sale | None: ...

    async def open_sales(self, now: datetime) -> list[int]:
        """Sales not ended yet: the ones whose gates are reconciled (surge.sales.reconcile)."""
        ...

    async def sales_page(self, now: datetime, before: int | None, limit: int) -> list[Sale]:
        """Sales not ended at `now` (upcoming, live or sold out), newest first, with ids
        below `before`: one page of GET /sales."""
        ...

    async def gate_state(self, sale_id: int) -> GateState | None:
        """A sale's stock left and every order of it, from ONE snapshot."""
        ...

    async def user_orders(self, user_id: str, before: int | None, limit: int) -> list[Order]:
        """A user's orders, newest first, with ids below `before`."""
        ...

    async def order_by_key(self, user_id: str, key: str) -> tuple[Order, str] | None:
        """The order a user's idempotency key committed, with its request fingerprint."""
        ...

    async def sale_orders(self, sale_id: int) -> list[Order]: ...

    async def purchase_many(
        self, sale: Sale, wins: list[Win], now: datetime
    ) -> list[Purchase | Exception]:
        """Commits several gate winners of one sale together; each gets its own outcome
        (or the exception its own commit raised)."""
        ...

    async def purchase(
        self, sale: Sale, user_id: str, quantity: int, key: str, request_hash: str, now: datetime
    ) -> Purchase: ...
