"""Rate-limit buckets in Redis, shared by every process: one script call per loop turn.

Every request of one event-loop turn that needs a verdict waits for the same EVALSHA
(`lua/ratelimit.lua`), which decides them in order on Redis's clock: N concurrent
requests at a limit of L let exactly L through, however many processes they reach. A
request pays one round trip shared with its neighbours, not one of its own.

When Redis fails or takes longer than `timeout`, the verdicts come from this process's
own buckets (the limits then hold per process, not overall) and `on_error` is told; the
next turn tries Redis again.
All keys share the hash tag `{rl}`, so one script call is one cluster slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from surge.backends.memory_buckets import LocalBuckets
from surge.backends.redis import Client
from surge.backends.scripts import lua_script
from surge.ground.admission import Verdict
from surge.ground.buckets import Policy, passed, refused
from surge.ground.tasks import Tasks

log = logging.getLogger("surge.ratelimit")

_Waiting = tuple[str, "asyncio.Future[Verdict]"]  # caller, its verdict


class RedisBuckets:
    MAX_BATCH = 500  # buckets per script call

    def __init__(
        self,
        client: Client,
        prefix: str,
        fallback: LocalBuckets,
        on_error: Callable[[Exception], None],
        timeout: float = 0.5,  # Redis's own command timeout (backends.redis.connect)
    ) -> None:
        self._script = client.register_script(lua_script("ratelimit.lua"))
        self._prefix = f"{prefix}{{rl}}:"
        self._fallback = fallback
        self._on_error = on_error
        self._timeout = timeout  # a verdict later than this comes from the local buckets
        self._waiting: dict[Policy, list[_Waiting]] = {}  # this loop turn's, by policy
        self._tasks = Tasks()
        self.failures = 0  # calls that failed: their verdicts were this process's

    def check(self, policy: Policy, caller: str) -> asyncio.Future[Verdict]:
        loop = asyncio.get_running_loop()
        verdict: asyncio.Future[Verdict] = loop.create_future()
        waiting = self._waiting.get(policy)
        if waiting is None:
            waiting = self._waiting[policy] = []
            if len(self._waiting) == 1:
                # runs in the next loop turn: the rest of this one joins the call
                self._tasks.spawn(self._send(), shared=False)
        waiting.append((caller, verdict))
        return verdict

    async def _send(self) -> None:
        by_policy, self._waiting = self._waiting, {}
        await asyncio.gather(
            *(
                self._decide(policy, waiting[i : i + self.MAX_BATCH])
                for policy, waiting in by_policy.items()
                for i in range(0, len(waiting), self.MAX_BATCH)
            )
        )

    async def _decide(self, policy: Policy, waiting: list[_Waiting]) -> None:
        prefix = f"{self._prefix}{policy.name}:"
        keys = [prefix + caller for caller, _ in waiting]
        try:
            async with asyncio.timeout(self._timeout):
                flat = await self._script(
                    keys=keys, args=(policy.rate, policy.burst, policy.ttl_ms)
                )
        except Exception as exc:  # Redis down or slow: this process's buckets decide
            self.failures += 1
            self._on_error(exc)
            for caller, verdict in waiting:
                if not verdict.done():
                    verdict.set_result(self._fallback.check(policy, caller))
            return
        for i, (_, verdict) in enumerate(waiting):
            if not verdict.done():
                allowed, left, wait_ms = flat[3 * i : 3 * i + 3]
                verdict.set_result(passed(left) if allowed == 1 else refused(wait_ms / 1000))

    async def close(self) -> None:
        await self._tasks.cancel()
