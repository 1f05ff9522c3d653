"""Purchases as every layer sees them: what the stock gate answers (surge.sales.purchase reads
it; the gates in surge.backends write it), what the purchase transaction did, and the
snapshot of a sale the gate is reconciled with (surge.sales.reconcile).

Outcomes are `Literal`s, so a misspelt comparison is a type error rather than a branch
that never runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from surge.ground.orders import Order

# What the gate answers (`Gate.reserve`, `Gate.retake`), described in surge.gate's
# docstring; "gone" is surge.sales.purchase's own: an ended sale whose gate expired.
GateOutcome = Literal[
    "ok",
    "sold_out",
    "limit",
    "in_flight",
    "done",
    "mismatch",
    "uncertain",
    "not_live",
    "unknown",
    "again",
    "gone",
]
# What the purchase transaction did (`Sales.purchase`)
PurchaseOutcome = Literal["committed", "sold_out", "limit", "duplicate"]

UNCERTAIN_FOR_MS = 600_000  # an uncertain key is forgotten after this: no commit lasts it


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: GateOutcome
    remaining: int = 0
    order_id: int = 0  # "done": the key's order
    uncertain_ms: int = 0  # `retake` refused: how long the key has been uncertain


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A reservation that became an order."""

    user_id: str
    key: str
    fingerprint: str
    order_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order of the sale as the database committed it, as far as the gate cares.
    `returned`: it was cancelled or expired, its units back on sale; its key still
    replays it but holds no stock."""

    user_id: str
    key: str
    order_id: int
    quantity: int
    fingerprint: str
    returned: bool = False


@dataclass(frozen=True, slots=True)
class GateState:
    """A sale as one database snapshot has it: its stock left and every order of it."""

    sale_id: int
    remaining: int
    per_user_limit: int
    starts_ms: int
    ends_ms: int
    orders: tuple[StoredOrder, ...] = ()


@dataclass(frozen=True, slots=True)
class Reconciled:
    before: int | None  # the gate's remaining before (None: it held nothing for the sale)
    after: int
    dropped: int  # pending reservations older than `stale_ms`, given back (now uncertain)


def field_of(user_id: str, key: str) -> str:
    return f"{user_id}|{key}"  # keys never hold "|" (surge.ground.sales.parse_idempotency_key)


def user_of(field: str) -> str:
    return field.rpartition("|")[0]


@dataclass(frozen=True, slots=True)
class Purchase:
    """What the purchase transaction did: "committed", "sold_out", "limit" or "duplicate"
    (the user already used the key: `order` is that first order)."""

    outcome: PurchaseOutcome
    order: Order | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Win:
    """A purchase that passed the gate and waits to be committed."""

    user_id: str
    quantity: int
    key: str
    request_hash: str
