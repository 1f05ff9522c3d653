"""The invariants, checked once the faults stopped and the system recovered.

The database is the truth (read directly, not through the code under test); what the
buyers were told is held against it. Each check returns pass/fail with a one-line
summary and a few examples, enough to go and look in the database and server.log."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.chaos.buyers import Client, Purchase, Record, buy_all
from tests.chaos.cluster import RECONCILE_INTERVAL, Cluster
from tests.load import Attempt

CONVERGE = 3 * RECONCILE_INTERVAL + 10  # seconds a healing check may wait
EXAMPLES = 8  # examples kept per failed check


@dataclass
class Check:
    name: str
    ok: bool
    summary: str
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stored:
    id: int
    sale: int
    user: str
    quantity: int
    key: str


@dataclass(frozen=True)
class SaleRow:
    stock: int
    remaining: int
    limit: int


async def read_db(cluster: Cluster) -> tuple[dict[int, SaleRow], list[Stored]]:
    sales = {
        int(i): SaleRow(int(s), int(r), int(lim))
        for i, s, r, lim in await cluster.rows(
            "SELECT id, stock, remaining, per_user_limit FROM sales"
        )
    }
    orders = [
        Stored(int(i), int(s), str(u), int(q), str(k))
        for i, s, u, q, k in await cluster.rows(
            "SELECT id, sale_id, user_id, quantity, idempotency_key FROM orders"
        )
    ]
    return sales, orders


def _check(name: str, bad: list[str], passed: str, failed: str) -> Check:
    if not bad:
        return Check(name, True, passed)
    return Check(name, False, failed.format(n=len(bad)), bad[:EXAMPLES])


def _grouped(name: str, bad: list[tuple[str, str]], passed: str, what: str) -> Check:
    """A failed check whose cases fall in kinds (the answer given): counted by kind, and
    examples taken from every kind in turn, so a rare one is not hidden by a common one."""
    if not bad:
        return Check(name, True, passed)
    kinds = Counter(kind for kind, _ in bad)
    queues = {kind: [text for k, text in bad if k == kind] for kind in kinds}
    examples: list[str] = []
    while len(examples) < min(EXAMPLES, len(bad)):
        for queue in queues.values():
            if queue and len(examples) < EXAMPLES:
                examples.append(queue.pop(0))
    return Check(name, False, f"{len(bad)} {what}: {dict(kinds.most_common())}", examples)


def trail(record: Record) -> str:
    """Each try's answer, from t (seconds into the storm) for `took` seconds."""
    tries = record.trail
    shown = tries if len(tries) <= 8 else [*tries[:4], f"...{len(tries) - 7}...", *tries[-3:]]
    return f"t={record.at:.2f}s+{record.took:.2f}s: " + " > ".join(shown)


def _sold(orders: Iterable[Stored]) -> Counter[int]:
    """Quantity ordered per sale."""
    sold: Counter[int] = Counter()
    for order in orders:
        sold[order.sale] += order.quantity
    return sold


def no_oversell(sales: dict[int, SaleRow], orders: list[Stored]) -> Check:
    sold = _sold(orders)
    bad = [
        f"sale {i}: stock {row.stock}, orders sum {sold[i]}, remaining {row.remaining}"
        for i, row in sales.items()
        if sold[i] > row.stock or sold[i] != row.stock - row.remaining or row.remaining < 0
    ]
    shown = ", ".join(f"{i}: {sold[i]}/{row.stock}" for i, row in sorted(sales.items()))
    return _check("no-oversell", bad, f"sold/stock {shown}", "{n} sales inconsistent")


def acknowledged_stored(records: list[Record], orders: list[Stored]) -> Check:
    by_id = {o.id: o for o in orders}
    bad, acked = [], 0
    for r in records:
        if r.status != 201:
            continue
        acked += 1
        told = json.loads(r.body)
        o = by_id.get(int(told["id"]))
        p = r.purchase
        if o is None:
            bad.append(f"201 {told} for {p} is not in the database")
        elif (o.user, o.sale, o.quantity, o.key) != (p.user, p.sale, p.quantity, p.key):
            bad.append(f"201 {told} for {p} but the database has {o}")
    return _check(
        "acknowledged-stored", bad, f"{acked} 201s, all stored as told", "{n} 201s not stored"
    )


def orders_requested(records: list[Record], orders: list[Stored]) -> Check:
    """Every order is one a buyer asked for: its user, key, sale and quantity."""
    asked = {(r.purchase.user, r.purchase.key): r.purchase for r in records}
    bad = [
        f"{o} was never asked for"
        for o in orders
        if (p := asked.get((o.user, o.key))) is None or (p.sale, p.quantity) != (o.sale, o.quantity)
    ]
    return _check("orders-requested", bad, f"{len(orders)} orders", "{n} orders nobody asked for")


def per_user_limit(sales: dict[int, SaleRow], orders: list[Stored]) -> Check:
    bought: Counter[tuple[int, str]] = Counter()
    for o in orders:
        bought[(o.sale, o.user)] += o.quantity
    bad = [
        f"sale {sale}: {user} has {n} (limit {sales[sale].limit})"
        for (sale, user), n in bought.items()
        if n > sales[sale].limit
    ]
    at_limit = sum(1 for (sale, _), n in bought.items() if n == sales[sale].limit)
    return _check(
        "per-user-limit", bad, f"{len(bought)} buyers, {at_limit} at their limit", "{n} over"
    )


def no_refused_commit(records: list[Record], orders: list[Stored]) -> Check:
    """A buyer told "no" (or 500) for a purchase that committed never learns it bought."""
    stored = {(o.user, o.key): o for o in orders}
    bad = [
        (
            f"{r.phase} {r.status} {r.kind}",
            f"{r.phase} {r.purchase}: final {r.status} {r.kind} but order "
            f"{stored[(r.purchase.user, r.purchase.key)].id} exists; tries: {trail(r)}",
        )
        for r in records
        if r.status not in (0, 201) and (r.purchase.user, r.purchase.key) in stored
    ]
    return _grouped("no-refused-commit", bad, "no final refusal of a committed key", "refused")


def is_500(record: Record) -> bool:
    return any(t.partition(" ")[0] == "500" for t in record.trail)  # "500 <problem type>"


def no_500(records: Iterable[Record]) -> Check:
    bad = [f"{r.phase} {r.purchase}: {trail(r)}" for r in records if is_500(r)]
    return _check("no-500", bad, "no 500 answered", "{n} attempts got a 500")


async def api_remaining(client: Client, sale_id: int) -> int | None:
    try:
        status, _, body = await client.send(Attempt("GET", f"/sales/{sale_id}", {}).encode())
    except Exception:
        return None
    return int(json.loads(body)["remaining"]) if status == 200 else None


async def remaining_agrees(cluster: Cluster, client: Client) -> Check:
    """The API, the gate and the database agree on what is left, within CONVERGE."""
    deadline = time.monotonic() + CONVERGE
    first: dict[int, tuple[int | None, ...]] = {}
    while True:
        sales, _ = await read_db(cluster)
        seen: dict[int, tuple[int | None, ...]] = {}
        for i, row in sorted(sales.items()):
            api = await api_remaining(client, i)
            seen[i] = (api, await cluster.gate_remaining(i), row.remaining)
        first = first or seen
        apart = {i: v for i, v in seen.items() if len(set(v)) > 1}
        waited = CONVERGE - (deadline - time.monotonic())
        if not apart or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    shown = "; ".join(f"sale {i}: api/gate/db {v}" for i, v in seen.items())
    if not apart:
        return Check("remaining-agrees", True, f"agreed after {waited:.1f}s: {shown}")
    examples = [
        f"sale {i}: api {v[0]}, gate {v[1]} (None: absent), db {v[2]}; first seen {first[i]}"
        for i, v in apart.items()
    ]
    return Check("remaining-agrees", False, f"still apart after {CONVERGE:.0f}s", examples)


async def nothing_stranded(
    cluster: Cluster, client: Client, budget: float
) -> tuple[Check, list[Record]]:
    """Fresh buyers (new users) must be able to buy every unit the database has left.
    Rounds of remaining + 5 buyers per sale until sold out or CONVERGE runs out."""
    records: list[Record] = []
    deadline = time.monotonic() + CONVERGE
    rounds = 0
    while True:
        sales, orders = await read_db(cluster)
        left = {i: row.remaining for i, row in sales.items() if row.remaining > 0}
        if not left or time.monotonic() > deadline:
            break
        wave = [
            Purchase(f"fresh{rounds}-{i}-{n}", i, f"fresh{rounds}-{n}", 1)
            for i, remaining in left.items()
            for n in range(remaining + 5)
        ]
        rounds += 1
        records += await buy_all(client, wave, "fresh", budget, 50)
        await asyncio.sleep(0.2)
    sold = _sold(orders)
    bad = [
        f"sale {i}: db remaining {row.remaining}, orders {sold[i]}/{row.stock}"
        for i, row in sales.items()
        if row.remaining != 0 or sold[i] != row.stock
    ]
    answers = dict(Counter(f"{r.status} {r.kind}".strip() for r in records))
    fresh = f"{len(records)} fresh buyers, {rounds} rounds: {answers}"
    if not bad:
        return Check("nothing-stranded", True, f"every sale sold out; {fresh}"), records
    summary = f"{len(bad)} sales kept stock after {CONVERGE:.0f}s; {fresh}"
    return Check("nothing-stranded", False, summary, bad[:EXAMPLES]), records


async def replay(
    cluster: Cluster, client: Client, records: list[Record], budget: float
) -> tuple[Check, list[Record]]:
    """Every stored order replays: the same key gets 201 with the same order id, and
    the very bytes any earlier 201 for that key had."""
    _, orders = await read_db(cluster)
    bodies: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    before: dict[tuple[str, str], list[str]] = defaultdict(list)  # what the buyers were told
    for r in records:
        if r.status == 201:
            bodies[(r.purchase.user, r.purchase.key)].add(r.body)
        said = f"{r.phase} {r.status} {r.kind}".rstrip()
        before[(r.purchase.user, r.purchase.key)].append(said)
    wave = [Purchase(o.user, o.sale, o.key, o.quantity) for o in orders]
    again = await buy_all(client, wave, "check", budget, 100)
    bad: list[tuple[str, str]] = []
    for o, r in zip(orders, again, strict=True):
        told = bodies[(o.user, o.key)]
        if r.status != 201:
            earlier = ", ".join(before[(o.user, o.key)]) or "none"
            text = f"order {o.id} {o.user}/{o.key} (sale {o.sale}; earlier: {earlier}): "
            bad.append((f"{r.status} {r.kind}", text + trail(r)))
        elif int(json.loads(r.body)["id"]) != o.id:
            bad.append(("other order", f"order {o.id} {o.user}/{o.key}: replayed as {r.body!r}"))
        elif told and told != {r.body}:
            bad.append(("other bytes", f"order {o.id}: bytes differ: {sorted(told | {r.body})}"))
    return _grouped("replay", bad, f"{len(orders)} orders replayed", "orders"), again


async def recovered(cluster: Cluster, client: Client, seconds: float = 30) -> str:
    """Waits for Redis and for /readyz "ready"; says how it went."""
    deadline = time.monotonic() + seconds
    status = "no answer"
    while time.monotonic() < deadline:
        try:
            code, _, body = await client.send(Attempt("GET", "/readyz", {}).encode())
            status = f"{code} {json.loads(body).get('status')}"
        except Exception as exc:
            status = type(exc).__name__
        if await cluster.redis_up() and status == "200 ready":
            return f"ready after {seconds - (deadline - time.monotonic()):.1f}s"
        await asyncio.sleep(0.25)
    return f"NOT ready after {seconds:.0f}s (/readyz: {status}); checking anyway"
