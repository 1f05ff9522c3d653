"""An order, as every layer sees it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    sale_id: int
    user_id: str
    quantity: int
    status: str
    created_at: datetime
