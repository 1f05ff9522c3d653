"""An order, as every layer sees it, and the states it goes through (docs/sales.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# A purchase makes a pending order; it is paid within the pay window, or cancelled, or it
# expires. Orders from before the payment window (status "confirmed") became paid.
PENDING = "pending"
PAID = "paid"
CANCELLED = "cancelled"
EXPIRED = "expired"
# the states whose units went back on sale: the order holds no stock any more
RETURNED = frozenset({CANCELLED, EXPIRED})


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    sale_id: int
    user_id: str
    quantity: int
    status: str
    created_at: datetime
    pay_by: datetime | None = None  # a pending order's payment deadline (aware UTC)


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order with what its lifecycle needs: the purchase's key and fingerprint (the
    gate's entry for it), the payment deadline, and how it left `pending`."""

    order: Order
    key: str
    fingerprint: str
    pay_by: datetime | None  # None: paid at purchase (no payment window)
    closed_at: datetime | None  # when it was paid, cancelled or expired
    pay_key: str | None  # the payment's Idempotency-Key
    payment_ref: str | None


@dataclass(frozen=True, slots=True)
class Transition:
    """What a transition did: `changed`, this call moved the order (exactly one call
    does); otherwise the order was not in a state it could leave, and `state` says where
    it is. `state` None: no such order."""

    state: OrderState | None
    changed: bool = False
