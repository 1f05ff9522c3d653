"""Flash-sale rules that need no I/O: the Sale, its state, and validation of input."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from surge.ground.web import Problem

MAX_STOCK = 10_000_000
MAX_QUANTITY = 1_000
MAX_NAME = 200
MAX_KEY = 64
SALE_FIELDS = {"name", "stock", "starts_at", "ends_at", "per_user_limit"}


@dataclass(frozen=True, slots=True)
class Sale:
    id: int
    name: str
    stock: int
    remaining: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    # the same two moments as epoch seconds, for `live_at`
    starts_ts: float = field(init=False, repr=False, compare=False)
    ends_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts_ts", self.starts_at.timestamp())
        object.__setattr__(self, "ends_ts", self.ends_at.timestamp())

    def state(self, now: datetime, remaining: int | None = None) -> str:
        left = self.remaining if remaining is None else remaining
        if now < self.starts_at:
            return "upcoming"
        if now >= self.ends_at:
            return "ended"
        return "sold_out" if left <= 0 else "live"

    def live(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def live_at(self, epoch: float) -> bool:
        """`live`, for a `time.time()`: the refusal path's check, without a datetime."""
        return self.starts_ts <= epoch < self.ends_ts

    def to_json(self, now: datetime, remaining: int | None = None) -> dict[str, Any]:
        left = self.remaining if remaining is None else remaining
        return {
            "id": self.id,
            "name": self.name,
            "stock": self.stock,
            "remaining": max(0, left),
            "state": self.state(now, left),
            "per_user_limit": self.per_user_limit,
            "starts_at": rfc3339(self.starts_at),
            "ends_at": rfc3339(self.ends_at),
        }


@dataclass(frozen=True, slots=True)
class NewSale:
    name: str
    stock: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "bad-json", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise Problem(400, "bad-json", "the body must be a JSON object")
    return value


def _invalid(kind: str, detail: str) -> Problem:
    return Problem(422, kind, detail)


def _int(value: Any, name: str, low: int, high: int, kind: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(kind, f"{name} must be an integer")
    if not low <= value <= high:
        raise _invalid(kind, f"{name} must be between {low} and {high}")
    return value


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise _invalid("invalid-sale", f"{name} must be an RFC 3339 date-time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _invalid("invalid-sale", f"{name} must be an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise _invalid("invalid-sale", f"{name} needs a time zone (Z or +hh:mm)")
    try:
        return moment.astimezone(UTC).replace(microsecond=0)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before the first moment there is
        raise _invalid("invalid-sale", f"{name} is out of range") from None


def parse_new_sale(body: bytes) -> NewSale:
    data = parse_json_object(body)
    unknown = set(data) - SALE_FIELDS
    if unknown:
        raise _invalid("invalid-sale", f"unknown fields: {', '.join(sorted(unknown))}")
    for required in ("name", "stock", "starts_at", "ends_at"):
        if required not in data:
            raise _invalid("invalid-sale", f"{required} is required")
    name = data["name"]
    if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME:
        raise _invalid("invalid-sale", f"name must be a non-empty string of at most {MAX_NAME}")
    stock = _int(data["stock"], "stock", 1, MAX_STOCK, "invalid-sale")
    limit = _int(data.get("per_user_limit", 1), "per_user_limit", 1, MAX_QUANTITY, "invalid-sale")
    starts, ends = _time(data["starts_at"], "starts_at"), _time(data["ends_at"], "ends_at")
    if ends <= starts:
        raise _invalid("invalid-sale", "ends_at must be after starts_at")
    return NewSale(name.strip(), stock, limit, starts, ends)


_QUANTITIES: dict[bytes, int] = {}  # body -> quantity, for the few bodies clients send


def parse_quantity(body: bytes) -> int:
    """The purchase body's quantity. Nearly every buyer sends one of a handful of bodies
    (`{"quantity":1}`), so valid short ones are remembered: a dict lookup instead of a JSON
    parse on the refusal path, which must cost no more than a cache hit."""
    known = _QUANTITIES.get(body)
    if known is not None:
        return known
    quantity = _parse_quantity(body)
    if len(body) <= 64:
        if len(_QUANTITIES) >= 1024:
            _QUANTITIES.clear()
        _QUANTITIES[body] = quantity
    return quantity


def _parse_quantity(body: bytes) -> int:
    data = parse_json_object(body)
    unknown = set(data) - {"quantity"}
    if unknown:
        raise _invalid("invalid-purchase", f"unknown fields: {', '.join(sorted(unknown))}")
    if "quantity" not in data:
        raise _invalid("invalid-purchase", "quantity is required")
    return _int(data["quantity"], "quantity", 1, MAX_QUANTITY, "invalid-purchase")


def parse_idempotency_key(header: bytes | None) -> str:
    if header is None:
        raise Problem(400, "missing-idempotency-key", "the Idempotency-Key header is required")
    try:
        key = header.decode("ascii")
    except UnicodeDecodeError:
        raise Problem(400, "bad-idempotency-key", "Idempotency-Key must be ASCII") from None
    if not 0 < len(key) <= MAX_KEY or not key.isprintable() or "|" in key:
        raise Problem(
            400,
            "bad-idempotency-key",
            f"Idempotency-Key must be 1-{MAX_KEY} printable characters, no '|'",
        )
    return key


def fingerprint(sale_id: int, quantity: int) -> str:
    """What a key's first request asked for; the same key asking otherwise is a 422."""
    return hashlib.sha256(f"{sale_id}:{quantity}".encode()).hexdigest()[:32]
