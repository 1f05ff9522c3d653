"""An order after its purchase (docs/sales.md): `POST /orders/{id}/pay`,
`POST /orders/{id}/cancel`, and what follows a cancellation or an expiry.

The database decides every transition, exactly once (surge.ground.interfaces.OrderStates):
a call that finds the order already where it asked to go gets the same answer again
(a payment only with its own Idempotency-Key), and one that finds it elsewhere gets a
409 naming where it is. When units come back, the rest follows from the process that
moved the order, best effort and in this order: the gate counts them again (its key
becomes returned), the live stock feed shows them, every sold-out board lets buyers
through again, the order caches forget the order, and the buyer's room hears of it.
If the process dies in between, the next reconciliation of the sale's gate counts them
(surge.sales.reconcile), and the boards' holds run out within a second anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from surge.auth import Authenticator, User
from surge.ground.interfaces import Gate, OrderStates
from surge.ground.orders import (
    CANCELLED,
    EXPIRED,
    PAID,
    PENDING,
    RETURNED,
    OrderState,
    Transition,
)
from surge.ground.purchases import StoredOrder
from surge.ground.sales import parse_idempotency_key, parse_json_object, rfc3339
from surge.ground.tasks import Tasks
from surge.ground.web import Problem, Request, Response, json_response
from surge.orders import parse_id
from surge.protect.deadlines import within
from surge.sales.feed import UserEvents
from surge.sales.restock import StockBack

log = logging.getLogger("surge.payments")

MAX_PAYMENT_REF = 128


def _not_found() -> Problem:
    return Problem(404, "order-not-found", "no such order")


def _elsewhere(status: str) -> Problem:
    """The order is not where the call can take it from: the 409 names where it is."""
    kind = f"order-{status}" if status in (PAID, CANCELLED, EXPIRED) else "order-closed"
    return Problem(409, kind, f"the order is {status}")


def parse_payment_ref(body: bytes) -> str:
    data = parse_json_object(body)
    unknown = set(data) - {"payment_ref"}
    if unknown:
        raise Problem(422, "invalid-payment", f"unknown fields: {', '.join(sorted(unknown))}")
    ref = data.get("payment_ref")
    if not isinstance(ref, str) or not 0 < len(ref) <= MAX_PAYMENT_REF or not ref.isprintable():
        raise Problem(
            422,
            "invalid-payment",
            f"payment_ref must be 1-{MAX_PAYMENT_REF} printable characters",
        )
    return ref


def encode_state(state: OrderState) -> dict[str, object]:
    """An order as the lifecycle routes answer it: GET /orders/{id}'s fields and the
    payment's."""
    order = state.order
    return {
        "id": order.id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "quantity": order.quantity,
        "status": order.status,
        "created_at": rfc3339(order.created_at),
        "pay_by": None if state.pay_by is None else rfc3339(state.pay_by),
        "closed_at": None if state.closed_at is None else rfc3339(state.closed_at),
        "payment_ref": state.payment_ref,
    }


class OrderLifecycle:
    def __init__(
        self,
        auth: Authenticator,
        states: OrderStates,
        gate: Gate,
        stock_back: StockBack,  # the feed and the sold-out boards, when units come back
        invalidate: Callable[..., Awaitable[None]],
        events: UserEvents,
        deadline: Callable[[str], float],  # of a route, "METHOD /template"
    ) -> None:
        self._auth = auth
        self._states = states
        self._gate = gate
        self._stock_back = stock_back
        self._invalidate = invalidate
        self._events = events
        self._following = Tasks()  # follow-ups no deadline may cut off
        self._pay_deadline = deadline("POST /orders/{id}/pay")
        self._cancel_deadline = deadline("POST /orders/{id}/cancel")
        self.transitions: dict[str, int] = {}  # orders_transitions_total{to} (surge.metrics)

    # POST /orders/{id}/pay ------------------------------------------------------------------
    def pay(self, request: Request) -> Awaitable[Response]:
        user = self._auth.user(request.headers.get(b"authorization"))
        order_id = parse_id(request.params["id"], "order")
        key = parse_idempotency_key(request.headers.get(b"idempotency-key"))
        ref = parse_payment_ref(request.body)
        return within(self._pay_deadline, self._pay(user, order_id, key, ref))

    async def _pay(self, user: User, order_id: int, key: str, ref: str) -> Response:
        now = datetime.now(UTC)
        done = await self._settled(self._states.pay(order_id, user.id, key, ref, now))
        state = self._visible(done, user)
        if done.changed:
            return json_response(200, encode_state(state))
        status = state.order.status
        if state.order.user_id != user.id:  # an admin: only the buyer pays
            raise Problem(403, "forbidden", "only the order's buyer pays for it")
        if status == PAID and state.pay_key == key:  # the same payment again
            if state.payment_ref != ref:
                raise Problem(
                    422, "key-reused", "this Idempotency-Key paid with another payment_ref"
                )
            return json_response(200, encode_state(state))
        if status == PENDING:  # its deadline passed and the sweep has not come yet
            late = await self._settled(self._states.expire(order_id, now))
            status = late.state.order.status if late.state is not None else status
        raise _elsewhere(status)

    # POST /orders/{id}/cancel ---------------------------------------------------------------
    def cancel(self, request: Request) -> Awaitable[Response]:
        user = self._auth.user(request.headers.get(b"authorization"))
        order_id = parse_id(request.params["id"], "order")
        return within(self._cancel_deadline, self._cancel(user, order_id))

    async def _cancel(self, user: User, order_id: int) -> Response:
        by = None if user.admin else user.id
        done = await self._settled(self._states.cancel(order_id, by, datetime.now(UTC)))
        state = self._visible(done, user)
        if not done.changed and state.order.status != CANCELLED:
            raise _elsewhere(state.order.status)
        if not done.changed:  # cancelled already: the same answer again, and the follow-up
            # once more in case the first was cut off (harmless twice; no second event)
            await self._follow(state, announce=False)
        return json_response(200, encode_state(state))

    def _visible(self, done: Transition, user: User) -> OrderState:
        """The order, to its buyer or an admin; to anyone else it does not exist."""
        state = done.state
        if state is None or (state.order.user_id != user.id and not user.admin):
            raise _not_found()
        return state

    # what follows a transition ----------------------------------------------------------
    async def _settled(self, transition: Awaitable[Transition]) -> Transition:
        """The transition and what follows it, in a task of its own: the route's deadline
        may cut the answer off, never the database's transaction (a connection cancelled
        mid-transaction could keep its lock) nor what must follow the commit."""

        async def work() -> Transition:
            done = await transition
            if done.changed and done.state is not None:
                await self.moved(done.state)
            return done

        return await asyncio.shield(self._following.spawn(work()))

    async def _follow(self, state: OrderState, announce: bool = True) -> None:
        """`moved` in a task of its own: the route's deadline may cut the answer off after
        the database committed, never what must follow the commit."""
        await asyncio.shield(self._following.spawn(self.moved(state, announce)))

    async def close(self) -> None:
        await self._following.finish(2.0)

    async def moved(self, state: OrderState, announce: bool = True) -> None:
        """After the database moved the order (by a call here, or by the expiry sweep)."""
        order = state.order
        if announce:
            self.transitions[order.status] = self.transitions.get(order.status, 0) + 1
        if order.status in RETURNED:
            await self._restock(state)
        try:
            await self._invalidate(order.id, settle=True)  # GET /orders/{id} shows it
        except Exception as exc:
            log.warning("order %d: caches not told of its %s: %s", order.id, order.status, exc)
        if announce:
            self._events.order_event(f"order-{order.status}", order)

    async def _restock(self, state: OrderState) -> None:
        order = state.order
        returned = StoredOrder(
            order.user_id, state.key, order.id, order.quantity, state.fingerprint, returned=True
        )
        try:
            left = await self._gate.give_back(order.sale_id, returned)
        except Exception as exc:  # the reconciliation will count them (surge.sales.reconcile)
            log.warning(
                "sale %d: units of order %d not given back yet: %s", order.sale_id, order.id, exc
            )
            return
        if left >= 0:  # (no gate: the sale's next purchase installs it from the database)
            await self._stock_back(order.sale_id, left)
