"""The nemesis: a fault schedule drawn from the seed, and the injector that plays it.

Faults are aimed: each lands a few ms into a burst of buyers (buyers.Plan.bursts), when
reservations and commits are in flight, which is where a crash or a lost connection can
leave a purchase half done. Uniform times would mostly hit idle moments or sold-out
refusals, and find little."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.chaos.cluster import Cluster

KILL_WORKER = "kill-worker"
REDIS_RESTART = "redis-restart"  # SIGKILL, then a new empty redis-server on the same port
REDIS_FREEZE = "redis-freeze"  # SIGSTOP for `hold` seconds, then SIGCONT
KILL_DB = "kill-db-connections"


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the storm started
    kind: str
    hold: float = 0.0  # how long Redis stays down or frozen


@dataclass(frozen=True)
class Injected:
    at: float  # when it was actually done, seconds after the storm started
    kind: str
    detail: str


def schedule(
    rng: random.Random, span: float, quiet: float, db_kills: int, bursts: Sequence[float]
) -> list[Fault]:
    """Worker kills every 2-4 s, one Redis restart, one 1.5 s freeze, `db_kills` database
    connection kills; nothing in the last `quiet` seconds (the system gets to recover
    while buyers go on, so what is checked is what it recovered to)."""
    end = span - quiet
    times = sorted(bursts)

    def aimed(t: float) -> float:
        # the first burst at or after t (if one is near), 10-80 ms into it: its attempts
        # arrive over 30 ms and a purchase takes a few tens of ms (gate, then commit)
        i = bisect_left(times, t)
        base = times[i] if i < len(times) and times[i] - t < 1.5 else t
        return min(base + rng.uniform(0.01, 0.08), end)

    faults: list[Fault] = []
    t = rng.uniform(1.0, 3.0)
    while t < end:
        faults.append(Fault(aimed(t), KILL_WORKER))
        t += rng.uniform(2.0, 4.0)
    # restart and freeze in different thirds, so one's recovery does not hide the other
    faults.append(Fault(aimed(rng.uniform(0.2, 0.4) * end), REDIS_RESTART, rng.uniform(0.3, 1.0)))
    freeze = aimed(rng.uniform(0.55, 0.75) * end)
    faults.append(Fault(min(freeze, end - 1.5), REDIS_FREEZE, 1.5))
    for _ in range(db_kills):
        faults.append(Fault(aimed(rng.uniform(0.05, 0.95) * end), KILL_DB))
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Injector:
    cluster: Cluster
    faults: list[Fault]
    rng: random.Random  # picks the worker to kill
    started: float  # time.monotonic() of the storm's start
    echo: Callable[[str], None] = print
    done: list[Injected] = field(default_factory=list)
    _frozen: bool = False

    async def run(self) -> None:
        """Plays the schedule in order (a fault that takes time delays the next one);
        whatever happens, Redis is left running and thawed."""
        try:
            for fault in self.faults:
                await asyncio.sleep(max(0.0, self.started + fault.at - time.monotonic()))
                at = time.monotonic() - self.started
                try:
                    detail = await self._inject(fault)
                except Exception as exc:  # a fault that failed is logged, never fatal
                    detail = f"failed: {exc!r}"
                self.done.append(Injected(at, fault.kind, detail))
                self.echo(f"  t={at:6.2f}s  {fault.kind:<20} {detail}")
        finally:
            await self.restore()

    async def restore(self) -> None:
        redis = self.cluster.redis
        if self._frozen:
            redis.thaw()
            self._frozen = False
        if redis.process is None or redis.process.poll() is not None:
            await asyncio.to_thread(redis.start)

    async def _inject(self, fault: Fault) -> str:
        redis = self.cluster.redis
        if fault.kind == KILL_WORKER:
            workers = self.cluster.workers()
            if not workers:
                return "no live worker (all restarting)"
            pid = self.rng.choice(workers)
            os.kill(pid, signal.SIGKILL)  # the supervisor restarts it after ~1 s
            return f"pid {pid} of {workers}"
        if fault.kind == REDIS_RESTART:
            await asyncio.to_thread(redis.stop)
            await asyncio.sleep(fault.hold)
            await asyncio.to_thread(redis.start)  # same port, empty: the gates are gone
            return f"down {fault.hold:.2f}s, back empty on port {redis.port}"
        if fault.kind == REDIS_FREEZE:
            redis.freeze()
            self._frozen = True
            try:
                await asyncio.sleep(fault.hold)
            finally:
                redis.thaw()
                self._frozen = False
            return f"SIGSTOP {fault.hold:.1f}s, then SIGCONT"
        if fault.kind == KILL_DB:
            killed = await self.cluster.kill_db_connections()
            return f"{killed} connections to {self.cluster.database} killed"
        raise ValueError(fault.kind)
