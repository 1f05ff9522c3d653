"""Unpaid orders expire: every EXPIRY_EVERY seconds each server process expires the pending
orders past their pay_by, up to BATCH at a time in one transaction
(`OrderStates.expire_due`), then follows each up (surge.sales.payments: the units back in
the gate, the feed, the boards, the caches).

Exactly once whatever runs it: the due rows are locked as they are read (FOR UPDATE SKIP
LOCKED on MariaDB and PostgreSQL: two processes sweeping at once take different orders;
SQLite has one writer), and only pending ones are updated. No lease is needed for
correctness, and the sweep is one indexed query (`ix_orders_status_pay_by`) per process
per period when nothing is due, so none is taken: a lost lease holder would only delay
expiries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from surge.ground.interfaces import OrderStates
from surge.ground.orders import OrderState

log = logging.getLogger("surge.expiry")

EXPIRY_EVERY = 0.5  # seconds: an unpaid order expires within about this of its pay_by
BATCH = 500  # orders read per query; a longer backlog is worked through without waiting
AT_ONCE = 8  # follow-ups in flight together (gate calls, invalidations)
MAX_PAUSE = 8.0  # seconds between sweeps at most, while they keep failing


class ExpirySweep:
    def __init__(
        self,
        states: OrderStates,
        moved: Callable[[OrderState], Awaitable[None]],
        every: float = EXPIRY_EVERY,
    ) -> None:
        self._states = states
        self._moved = moved
        self._every = every
        self.failures = 0

    async def run(self) -> None:
        pause = self._every
        while True:
            await asyncio.sleep(pause)
            try:
                while await self.sweep() == BATCH:  # more are due: go on at once
                    pass
            except Exception as exc:  # the database down: back off, log now and then
                self.failures += 1
                if self.failures % 20 == 1:
                    log.warning("expiry sweep failed (%d so far): %s", self.failures, exc)
                pause = min(pause * 2, MAX_PAUSE)
            else:
                pause = self._every

    async def sweep(self) -> int:
        """Expires what is due now, in one transaction, then follows each up (the gate,
        the feed, the caches, the buyer's room); the number expired."""
        expired = await self._states.expire_due(datetime.now(UTC), BATCH)
        gate = asyncio.Semaphore(AT_ONCE)

        async def follow(state: OrderState) -> None:
            async with gate:
                await self._moved(state)

        outcomes = await asyncio.gather(*map(follow, expired), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:  # the orders expired all the same: the reconciliation heals the gate
            log.warning("%d expiries not followed up: %r", len(failed), failed[0])
        return len(expired)
