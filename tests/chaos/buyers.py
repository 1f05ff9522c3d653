"""The buyers: a seeded plan of purchases, and clients that see each one through.

A buyer behaves like a careful real client: it retries with the SAME Idempotency-Key on
anything that does not say what happened (a dropped connection, 503, 504, 429, 409
`key-in-flight`), with a small backoff, until a final answer or its budget runs out (then
the outcome is "unknown"). So every final answer is a claim the checks can hold the
system to: a 409 `sold-out` means "you did not buy", a 201 means "you bought this".

Raw keep-alive sockets (tests.load's request bytes and parser): ~200 attempts in flight
cost one event loop and no HTTP library, and a reused connection shows a killed worker
the way a real client sees it (a reset, or an answer that never comes)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.load import Attempt, read_response
from tests.system.conftest import bearer

RETRIED = {503, 504, 429}  # and 409 key-in-flight: the answer is still to come
TRY_TIMEOUT = 10.0  # one request; the server's own deadlines are 2 s (+2 s commit grace)
IDLE_FOR = 3.0  # the server closes idle keep-alive connections after 5 s
TRANSPORT = (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError)


@dataclass(frozen=True)
class Purchase:
    user: str
    sale: int
    key: str
    quantity: int


@dataclass
class Record:
    purchase: Purchase
    phase: str  # storm, replay (right after its 201, in the storm), fresh (second pass), check
    status: int = 0  # the final answer; 0: none within the budget ("unknown")
    kind: str = ""  # the final problem type without /problems/; "unknown" for status 0
    body: bytes = b""  # a 201's bytes
    trail: list[str] = field(default_factory=list)  # every try's answer, in order
    at: float = 0.0  # first sent, seconds after the storm started
    took: float = 0.0  # until the final answer (or giving up)


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the storm started
    purchase: Purchase
    hot: bool  # sent while its sale is selling (else: the flood after)
    replay: bool  # after a 201, replay the same key at once


@dataclass
class Plan:
    attempts: list[Planned]
    bursts: list[float]  # when hot buyers arrive together: faults aim at these


def problem_kind(body: bytes) -> str:
    try:
        return str(json.loads(body)["type"]).removeprefix("/problems/")
    except (ValueError, KeyError, TypeError):
        return "?"


def make_plan(
    rng: random.Random,
    sales: Sequence[tuple[int, int, int]],  # (id, stock, per_user_limit)
    users: int,
    attempts: int,
    span: float,
) -> Plan:
    """Each sale sells during its own slot of the storm: "hot" attempts in bursts, from a
    pool of users 90% of the stock's size, so many buy twice or three times (limits).
    Without slots a sale of 200 would be sold out in the first seconds and every later
    fault would only hit refusals. Sales 0, 2, 4... are popular: 1.1 x stock hot attempts,
    then the flood (random users, mostly refused) takes what is left once the slot is over.
    The others get 0.7 x stock and no flood, so they end the storm with stock left after
    selling under faults: only there can remaining-agrees see a gate that counts wrong (on
    a sold-out sale the database's "sold out" resets the gate to 0 and hides it)."""
    slot = span / len(sales)
    plan = Plan([], [])
    index = 0

    def add(at: float, sale: tuple[int, int, int], user: int, hot: bool) -> None:
        nonlocal index
        sale_id, _, limit = sale
        two = rng.random() < (0.3 if limit >= 2 else 0.02)  # 2 on a limit of 1: refused
        purchase = Purchase(f"u{user}", sale_id, f"k{index}", 2 if two else 1)
        replay = rng.random() < (0.15 if hot else 0.02)
        plan.attempts.append(Planned(at, purchase, hot, replay))
        index += 1

    for s, sale in enumerate(sales):
        pool = rng.sample(range(users), max(1, int(sale[1] * 0.9)))
        hot = int(sale[1] * (1.1 if s % 2 == 0 else 0.7))
        while hot > 0:
            # ~9 bursts a slot, of 5-20% of the stock: a kill or a freeze lands in one
            burst = min(hot, rng.randint(max(3, sale[1] // 20), max(6, sale[1] // 5)))
            at = s * slot + rng.uniform(0, slot * 0.95)
            plan.bursts.append(at)
            for _ in range(burst):
                add(at + rng.uniform(0, 0.03), sale, rng.choice(pool), True)
            hot -= burst
    for _ in range(max(0, attempts - len(plan.attempts))):
        at = rng.uniform(slot, span)
        over = [sale for s, sale in enumerate(sales) if (s + 1) * slot <= at and s % 2 == 0]
        add(at, rng.choice(over or [sales[0]]), rng.randrange(users), False)
    plan.attempts.sort(key=lambda p: p.at)
    plan.bursts.sort()
    return plan


class Client:
    """Keep-alive connections to the server, each used by one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.started = time.monotonic()  # the storm's start: records' times count from it
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = deque()

    async def send(self, request: bytes) -> tuple[int, bytes, bytes]:
        reader = writer = None
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < IDLE_FOR and not reader.at_eof():
                break
            writer.close()
            reader = writer = None
        try:
            async with asyncio.timeout(TRY_TIMEOUT):
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(request)
                status, head, body = await read_response(reader)
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, head, body

    async def close(self) -> None:
        while self._idle:
            _, writer, _ = self._idle.pop()
            writer.close()
        await asyncio.sleep(0)  # let the transports finish closing


_tokens: dict[str, dict[str, str]] = {}


def purchase_bytes(purchase: Purchase) -> bytes:
    token = _tokens.get(purchase.user)
    if token is None:
        token = _tokens[purchase.user] = bearer(purchase.user)
    headers = {**token, "Idempotency-Key": purchase.key, "Content-Type": "application/json"}
    body = json.dumps({"quantity": purchase.quantity}).encode()
    return Attempt("POST", f"/sales/{purchase.sale}/orders", headers, body).encode()


async def buy(client: Client, purchase: Purchase, phase: str, budget: float) -> Record:
    """One purchase seen through: the same bytes (same key) until a final answer."""
    began = time.monotonic()
    record = Record(purchase, phase, at=began - client.started)
    request = purchase_bytes(purchase)
    deadline = began + budget
    delay = 0.05
    while True:
        try:
            status, _, body = await client.send(request)
        except TRANSPORT as exc:
            record.trail.append(type(exc).__name__)
        else:
            kind = problem_kind(body) if status >= 400 else ""
            record.trail.append(f"{status} {kind}".rstrip())
            if status not in RETRIED and not (status == 409 and kind == "key-in-flight"):
                record.status, record.kind = status, kind
                record.body = body if status == 201 else b""
                record.took = time.monotonic() - began
                return record
        if time.monotonic() + delay > deadline:
            record.kind = "unknown"
            record.took = time.monotonic() - began
            return record
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 1.0)


async def run_plan(
    client: Client, plan: Plan, concurrency: int, started: float, budget: float
) -> list[Record]:
    """Starts each attempt at its time. Hot buyers have seats of their own, so a stalled
    flood (a frozen Redis) cannot delay the bursts the faults are aimed at."""
    records: list[Record] = []
    hot_seats = asyncio.Semaphore(max(10, concurrency // 5))
    flood_seats = asyncio.Semaphore(concurrency - max(10, concurrency // 5))

    async def one(planned: Planned) -> None:
        async with hot_seats if planned.hot else flood_seats:
            first = await buy(client, planned.purchase, "storm", budget)
            records.append(first)
            if planned.replay and first.status == 201:
                records.append(await buy(client, planned.purchase, "replay", budget))

    tasks: list[asyncio.Task[None]] = []
    for planned in plan.attempts:
        await asyncio.sleep(max(0.0, started + planned.at - time.monotonic()))
        tasks.append(asyncio.create_task(one(planned)))
    await asyncio.gather(*tasks)
    return records


async def buy_all(
    client: Client, purchases: Sequence[Purchase], phase: str, budget: float, concurrency: int
) -> list[Record]:
    seats = asyncio.Semaphore(concurrency)

    async def one(purchase: Purchase) -> Record:
        async with seats:
            return await buy(client, purchase, phase, budget)

    return list(await asyncio.gather(*(one(p) for p in purchases)))
