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
