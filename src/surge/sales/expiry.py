"""Unpaid orders expire: every EXPIRY_EVERY seconds each server process asks the database
for pending orders past their pay_by and expires them (surge.sales.payments follows up:
the units back in the gate, the feed, the boards).

Exactly once whatever runs it: an expiry is a conditional update (`WHERE status =
'pending' AND pay_by <= now`), so when two processes sweep the same order one moves it
and the other's update matches nothing. No lease is needed for correctness, and the
sweep is one indexed query (`ix_orders_status_pay_by`) per process per period when
nothing is due, so none is taken: a lost lease holder would only delay expiries.
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
AT_ONCE = 8  # expiries in flight together (one transaction each)
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
        self.expired = 0  # by this process
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
        """Expires what is due now; the number of orders that were due."""
        now = datetime.now(UTC)
        due = await self._states.due(now, BATCH)
        gate = asyncio.Semaphore(AT_ONCE)

        async def expire(order_id: int) -> None:
            async with gate:
                done = await self._states.expire(order_id, now)
            if done.changed and done.state is not None:
                self.expired += 1
                await self._moved(done.state)

        # every expiry ends before the next sweep starts (one failing leaves none running)
        outcomes = await asyncio.gather(
            *(expire(order_id) for order_id in due), return_exceptions=True
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
        return len(due)
