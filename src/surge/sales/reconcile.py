"""Keeps every open sale's stock gate in step with the database, while purchases go on.

The gate (Redis, or in-process) is a fast copy of what the database decides, and it
drifts: a process killed between reserving and committing leaves its reservation counted;
Redis restarted empty forgets everything, the keys of stored orders included; bookkeeping
after a commit that could not reach Redis leaves a key pending. Start-up used to read the
database and then overwrite the gate, and lost every commit that landed between the read
and the write (the gate then counted more stock than the database: issue 13).

A reconciliation is exact whatever runs meanwhile, because of the order of its two steps:

1. one SQL statement reads the sale's `remaining` and every order of the sale, so both
   come from one snapshot (`Sales.gate_state`);
2. one atomic gate step (a Lua script in Redis) looks at every key it holds:
   - in the snapshot: committed and counted in the snapshot's remaining; it becomes (or
     stays) "done", so a replay of it gets its order, however the gate lost it;
   - not in the snapshot and done: it committed after the snapshot (the gate learns an
     order only after its commit), so it is not counted yet: subtract it;
   - not in the snapshot and pending: not committed when the snapshot was taken: subtract
     it, unless it is older than `stale_after` (its process died or gave up): then its
     stock comes back and the key becomes uncertain (surge.gate: a commit that lands
     after all is replayed to its retry, and counted by the next snapshot);
   - uncertain: holds no stock (kept for its retries, forgotten after 10 minutes);
   and adds every order of the snapshot it did not know. Remaining = the snapshot's less
   what was subtracted; each user's count likewise.

It runs at start-up (every open sale), when a purchase finds no gate (Redis lost it), and
every `interval` seconds for every open sale, by one process per sale (a lease:
`Gate.claim`). Its cost is one query and one script per open sale and period, each
proportional to the sale's orders (bounded by its stock).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from surge.ground.interfaces import Gate, Sales
from surge.ground.purchases import Reconciled
from surge.ground.tasks import shared_task

log = logging.getLogger("surge.reconcile")


class GateKeeper:
    def __init__(
        self,
        sales: Sales,
        gate: Gate,
        stale_after: float,
        changed: Callable[[int, Reconciled], Awaitable[None]],
    ) -> None:
        self._sales = sales
        self._gate = gate
        self._stale_ms = int(stale_after * 1000)
        self._changed = changed  # the stock feed and the sold-out boards hear of a change
        self._running: dict[int, asyncio.Future[Reconciled | None]] = {}
        self.runs = 0  # metrics: reconciliations done by this process
        self.corrected = 0  # stock units the gate had wrong
        self.dropped = 0  # stale pending reservations given back

    async def sale(self, sale_id: int) -> Reconciled | None:
        """Reconciles one sale now; callers who come while it runs share it (a storm
        hitting a restarted Redis rebuilds each gate once). None: no such sale."""
        running = self._running.get(sale_id)
        if running is None:
            running = shared_task(self._reconcile(sale_id))
            self._running[sale_id] = running
            running.add_done_callback(lambda _: self._running.pop(sale_id, None))
        return await asyncio.shield(running)

    async def _reconcile(self, sale_id: int) -> Reconciled | None:
        state = await self._sales.gate_state(sale_id)
        if state is None:
            return None
        done = await self._gate.reconcile(state, self._stale_ms)
        self.runs += 1
        self.dropped += done.dropped
        if done.before is not None and done.before != done.after:
            self.corrected += abs(done.before - done.after)
            log.info(
                "sale %d: the gate counted %d left, the database %d (%d stale reservations)",
                sale_id,
                done.before,
                done.after,
                done.dropped,
            )
        await self._changed(sale_id, done)
        return done

    async def open_sales(self, lease: float = 0.0) -> int:
        """Reconciles every sale not ended yet (with a `lease` in seconds, only those whose
        lease this process wins for that long); returns how many."""
        count = 0
        for sale_id in await self._sales.open_sales(datetime.now(UTC)):
            if lease and not await self._gate.claim(sale_id, lease):
                continue
            if await self.sale(sale_id) is not None:
                count += 1
        return count

    async def run(self, interval: float) -> None:
        """Every `interval` seconds (with a random start, so processes started together
        do not all ask at once), until cancelled; a failure is logged and tried again.
        The lease, a little shorter than the period, gives each sale to one process."""
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.open_sales(lease=interval * 0.9)
            except Exception as exc:  # Redis or the database down: the next period retries
                log.warning("gate reconciliation skipped: %s", exc)
            await asyncio.sleep(interval)
