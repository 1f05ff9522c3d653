"""What every process keeps in memory about sales, so most purchase attempts are refused
or routed without I/O: sale configs (`SaleConfigs`) and the sold-out board
(`SoldOutBoard`)."""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import takewhile

from surge.ground.evict import evict_oldest
from surge.ground.interfaces import Bus, Gate, Sales
from surge.ground.sales import Sale
from surge.ground.tasks import shared_task

log = logging.getLogger("surge.sale_cache")

SOLD_OUT_CHANNEL = "sales.sold_out"
RESTOCKED_CHANNEL = "sales.restocked"


class SaleConfigs:
    """Sales by id, cached in-process: a sale's config never changes once created, so it is
    kept for good (bounded); "no such sale" is remembered for a second only, since another
    process may create it. Concurrent misses for one id share one query."""

    MAX = 10_000
    ABSENT_TTL = 1.0

    def __init__(self, sales: Sales) -> None:
        self._sales = sales
        self._known: dict[int, Sale] = {}
        self._absent: dict[int, float] = {}
        self._loading: dict[int, asyncio.Future[Sale | None]] = {}

    def cached(self, sale_id: int) -> Sale | None:
        return self._known.get(sale_id)

    async def get(self, sale_id: int) -> Sale | None:
        sale = self._known.get(sale_id)
        if sale is not None:
            return sale
        if self._absent.get(sale_id, 0.0) > time.monotonic():
            return None
        loading = self._loading.get(sale_id)
        if loading is None:
            loading = shared_task(self._sales.get_sale(sale_id))
            self._loading[sale_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(sale_id, None))
        sale = await asyncio.shield(loading)
        if sale is None:
            self._remember_absent(sale_id)
        else:
            if len(self._known) >= self.MAX:
                self._known.clear()
            self._known[sale_id] = sale
        return sale

    def _remember_absent(self, sale_id: int) -> None:
        """Kept in the order they expire (one TTL for all: insertion order); at most MAX
        (every unknown id read once added an entry for good: issue 12 #8). Once full,
        the expired ones are dropped from the front in one pass, and if none had expired,
        the oldest hundredth (surge.ground.evict: one look at the front per new id
        walked every slot deleted before it)."""
        absent = self._absent
        now = time.monotonic()
        absent.pop(sale_id, None)  # re-inserted last: its new expiry is the latest
        if len(absent) >= self.MAX:
            expired = list(takewhile(lambda key: absent[key] <= now, absent))
            for key in expired:
                del absent[key]
            if not expired:
                evict_oldest(absent, self.MAX)
        absent[sale_id] = now + self.ABSENT_TTL


class SoldOutBoard:
    """Sale ids known sold out, so the flood of late buyers is refused from memory.

    A hold lasts `HOLD` seconds, then the next buyer asks the gate again (and holds anew if
    still sold out): stock given back by a failed commit reaches buyers within `HOLD`
    even if a "restocked" message raced a late "sold out" one, and nothing can stay
    wrongly sold out. Holds travel between processes by pub/sub.

    A hold never refuses a key the gate holds for the sale (committed, pending or
    uncertain): the request may be the retry or replay of a purchase that committed, and
    its answer is that purchase's 201, not 409 (issue 13). So each hold starts with a copy
    of the gate's `user|key`s (about the stock's count: every entry took stock once, or
    its commit is in doubt); the copy is the gate's as it was when the hold began, and a
    key reserved later can only be reserved after a release, whose "restocked" message
    ends the holds. Past `MAX_KEYS` the copy would cost too much in every process: such
    a sale is not held, and its late buyers are refused by the gate.
    """

    HOLD = 1.0
    MAX_KEYS = 100_000

    def __init__(self, bus: Bus, gate: Gate) -> None:
        self._bus = bus
        self._gate = gate
        self._holds: dict[int, tuple[float, frozenset[str]]] = {}  # sale -> until, user|keys
        self._loading: dict[int, asyncio.Task[None]] = {}
        self._released: dict[int, int] = {}  # sale -> releases seen (a load begun before is void)

    async def start(self) -> None:
        await self._bus.subscribe(SOLD_OUT_CHANNEL, lambda m: self._learn(int(m)))
        await self._bus.subscribe(RESTOCKED_CHANNEL, lambda m: self._release(int(m)))
        self._bus.on_reconnect(self._forget_all)  # missed news: ask the gate again

    def refuses(self, sale_id: int, user_id: str, key: str) -> bool:
        hold = self._holds.get(sale_id)
        return hold is not None and hold[0] > time.monotonic() and f"{user_id}|{key}" not in hold[1]

    def held(self, sale_id: int) -> bool:
        hold = self._holds.get(sale_id)
        return hold is not None and hold[0] > time.monotonic()

    def _forget_all(self) -> None:
        for sale_id in list(self._holds):
            self._release(sale_id)

    def _release(self, sale_id: int) -> None:
        self._holds.pop(sale_id, None)
        self._released[sale_id] = self._released.get(sale_id, 0) + 1

    def _learn(self, sale_id: int) -> None:
        """The sale is sold out (the gate said so, here or in another process): hold it,
        once the gate's keys are copied. A hold that only ran out is renewed at once with
        the copy it had, and the copy is read again behind it: with no hold while the
        read took its loop turns, every second the flood went to Redis for a while
        (refusals fell to 0.98x the cache hits in the storm benchmark)."""
        hold = self._holds.get(sale_id)
        if hold is not None and hold[0] > time.monotonic():
            return
        if hold is not None:  # ran out: the gate says sold out again
            self._holds[sale_id] = (time.monotonic() + self.HOLD, hold[1])
        if sale_id in self._loading:
            return
        task = shared_task(self._load(sale_id, self._released.get(sale_id, 0)))
        self._loading[sale_id] = task
        task.add_done_callback(lambda _: self._loading.pop(sale_id, None))

    async def _load(self, sale_id: int, releases: int) -> None:
        try:
            keys = await self._gate.keys(sale_id)
        except Exception as exc:  # no hold: the gate refuses them meanwhile
            log.debug("sale %d: keys not read: %s", sale_id, exc)
            return
        if keys is None or len(keys) > self.MAX_KEYS:
            return
        if self._released.get(sale_id, 0) != releases:  # restocked meanwhile
            return
        now = time.monotonic()
        # copies of holds over for a while are dropped (a sale sold out long ago)
        for stale in [s for s, (until, _) in self._holds.items() if until <= now - 60]:
            del self._holds[stale]
        self._holds[sale_id] = (now + self.HOLD, keys)

    async def mark(self, sale_id: int) -> None:
        fresh = not self.held(sale_id) and sale_id not in self._loading
        self._learn(sale_id)
        if fresh:
            await self._bus.publish(SOLD_OUT_CHANNEL, str(sale_id).encode())

    async def unmark(self, sale_id: int) -> None:
        self._release(sale_id)
        await self._bus.publish(RESTOCKED_CHANNEL, str(sale_id).encode())
