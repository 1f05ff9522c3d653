"""Database read replicas: reads that a moment's staleness cannot hurt, spread over
replicas, with the primary behind them.

`SURGE_DATABASE_REPLICA_URL` names one or more replicas (comma-separated URLs of the same
kind as the primary's). What reads them:

- **Order-query misses** (`get_orders`). An id the replica does not have is asked of the
  primary in the same call: an order just bought (its buyer reads it right after the 201)
  may not have reached the replica yet, and orders never change once committed, so
  "found on the replica" is as good as "found on the primary", and "not found" is not
  believed until the primary says so.
- **Pages after the first of a buyer's orders** (`user_orders` with a cursor). The first
  page, where a purchase just made shows, is read on the primary.

Everything else (purchases, idempotency replays, the admin's reads, reconciliation) stays
on the primary.

Each replica has its own circuit breaker and is probed every `PROBE_EVERY` seconds for
its lag behind the primary. A replica that is down, not replicating, or more than
`max_lag` seconds behind is skipped until a probe finds it well again; with none usable,
the primary serves. A read that fails on a replica is retried on the primary at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from surge.backends.breaker import Breaker, Guard
from surge.ground.evict import evict_oldest
from surge.ground.orders import Order

log = logging.getLogger("surge.replicas")

PROBE_EVERY = 1.0  # seconds between lag probes
FRESH_BOUND = 100_000  # orders remembered as written lately (the oldest go first)
DOWN = -1.0  # the lag gauge of a replica that is down or not replicating

# Seconds the replica's last applied change is behind the primary, or NULL when it is not
# replicating. PostgreSQL: nothing left to replay means caught up, however old the last
# replayed transaction (an idle primary sends nothing new).
# A standby whose WAL receiver is not streaming (primary unreachable, broken conninfo)
# does not replicate, however caught up its positions look (reading pg_stat_wal_receiver
# needs pg_monitor). A primary that falls silent without closing the connection is noticed
# by the receiver after wal_receiver_timeout (60 s by default). The age of the receiver's
# last message cannot bound the lag: an idle primary sends a keepalive only every 30 s.
_PG_LAG = sa.text(
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL"
    " WHEN NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')"
    " THEN NULL"
    " WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass(slots=True)
class Replica:
    name: str  # host:port, for the metrics and the logs
    engine: AsyncEngine
    guard: Guard
    get_orders: Callable[[Sequence[int]], Awaitable[dict[int, Order]]]
    user_orders: Callable[[str, int | None, int], Awaitable[list[Order]]]
    close: Callable[[], Awaitable[None]]
    lag: float = DOWN  # seconds, from the last probe
    reads: int = 0
    probed: bool = False  # a probe has answered or failed once


@dataclass(slots=True)
class ReplicaSet:
    replicas: list[Replica]
    max_lag: float
    # a read a replica has not answered in this long is the primary's (a frozen replica
    # would otherwise hold it for the engine's 5 s operation timeout); the probe then
    # finds the replica unwell within a second or two
    read_timeout: float = 0.5
    fallbacks: dict[str, int] = field(default_factory=dict)  # why the primary served
    # orders written lately -> until when (monotonic) the primary answers them: a replica
    # may lag behind a payment, a cancellation or an expiry by up to max_lag
    _fresh: dict[int, float] = field(default_factory=dict)
    _turn: int = 0
    _prober: asyncio.Task[None] | None = None

    def usable(self) -> Replica | None:
        """The next replica in turn that is up, replicating and not too far behind."""
        count = len(self.replicas)
        for step in range(count):
            replica = self.replicas[(self._turn + step) % count]
            if 0 <= replica.lag <= self.max_lag and not replica.guard.breaker.is_open:
                self._turn = (self._turn + step + 1) % count
                return replica
        return None

    def _fell_back(self, why: str) -> None:
        self.fallbacks[why] = self.fallbacks.get(why, 0) + 1

    def _failed(self, replica: Replica, exc: Exception) -> None:
        """A read the replica failed: the primary answers. Logged once per 1,000 (a replica
        that answers every read with an error would otherwise flood the log in a storm)."""
        self._fell_back("replica-failed")
        if self.fallbacks["replica-failed"] % 1000 == 1:
            log.warning("replica %s failed a read (%r): the primary answers", replica.name, exc)

    def changed(self, ids: Sequence[int]) -> None:
        until = time.monotonic() + self.max_lag + 1.0
        for order_id in ids:
            self._fresh.pop(order_id, None)  # re-inserted last: the dict stays in time order
            self._fresh[order_id] = until
        if len(self._fresh) > FRESH_BOUND:
            evict_oldest(self._fresh, FRESH_BOUND)

    async def get_orders(
        self, ids: Sequence[int], primary: Callable[[Sequence[int]], Awaitable[dict[int, Order]]]
    ) -> dict[int, Order]:
        if self._fresh:
            now = time.monotonic()
            recent = [i for i in ids if self._fresh.get(i, 0.0) > now]
            if recent:  # written lately: the primary's, the rest as usual
                self._fell_back("recently-written")
                rest = [i for i in ids if self._fresh.get(i, 0.0) <= now]
                found = await primary(recent)
                if rest:
                    found.update(await self.get_orders(rest, primary))
                return found
        replica = self.usable()
        if replica is None:
            self._fell_back("no-replica")
            return await primary(ids)
        try:
            async with asyncio.timeout(self.read_timeout):
                found = await replica.get_orders(ids)
        except Exception as exc:
            self._failed(replica, exc)
            return await primary(ids)
        replica.reads += 1
        missing = [i for i in ids if i not in found]
        if missing:  # perhaps too new for the replica: only the primary may say "no such order"
            self._fell_back("not-on-replica")
            found.update(await primary(missing))
        return found

    async def user_orders(
        self,
        user_id: str,
        before: int | None,
        limit: int,
        primary: Callable[[str, int | None, int], Awaitable[list[Order]]],
    ) -> list[Order]:
        replica = self.usable() if before is not None else None  # the first page: primary
        if replica is None:
            return await primary(user_id, before, limit)
        try:
            async with asyncio.timeout(self.read_timeout):
                found = await replica.user_orders(user_id, before, limit)
        except Exception as exc:
            self._failed(replica, exc)
            return await primary(user_id, before, limit)
        replica.reads += 1
        return found

    def start(self) -> None:
        if self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_forever(), name="replica-prober"
            )

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(replica) for replica in self.replicas))
            await asyncio.sleep(PROBE_EVERY)

    async def _probe(self, replica: Replica) -> None:
        was_usable = replica.probed and 0 <= replica.lag <= self.max_lag
        try:
            async with replica.guard(), asyncio.timeout(PROBE_EVERY):
                lag = await measure_lag(replica.engine)
            error = "not replicating" if lag is None else ""
        except Exception as exc:
            lag, error = None, f"unreachable ({exc!r})"
        first = not replica.probed
        replica.probed = True
        replica.lag = DOWN if lag is None else lag
        usable = 0 <= replica.lag <= self.max_lag
        if usable and (first or not was_usable):
            log.warning("replica %s serves reads (%.1f s behind)", replica.name, replica.lag)
        elif not usable and (first or was_usable):
            why = error or f"{replica.lag:.1f} s behind, over {self.max_lag} s"
            log.warning("replica %s: %s; the primary serves its reads", replica.name, why)

    async def check(self) -> None:
        """Readiness: every replica usable, else an error naming those that are not (the
        process is `degraded`: the primary serves their reads)."""
        unwell = [
            f"{r.name} {_state(r.lag)}"
            for r in self.replicas
            if not 0 <= r.lag <= self.max_lag or r.guard.breaker.is_open
        ]
        if unwell:
            raise ReplicaUnwell("; ".join(unwell))

    def lags(self) -> dict[str, float]:
        return {replica.name: replica.lag for replica in self.replicas}

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        for replica in self.replicas:
            try:
                await replica.close()
            except Exception as exc:  # the others are closed all the same
                log.warning("closing replica %s: %r", replica.name, exc)


class ReplicaUnwell(Exception):
    pass


def _state(lag: float) -> str:
    return "down or not replicating" if lag < 0 else f"{lag:.1f} s behind"


async def measure_lag(engine: AsyncEngine) -> float | None:
    """Seconds the replica is behind its primary (0: caught up), or None if it does not
    replicate (stopped, broken, or not a replica at all)."""
    async with engine.connect() as conn:
        if engine.url.get_backend_name() == "postgresql":
            value = (await conn.execute(_PG_LAG)).scalar()
            return None if value is None else max(0.0, float(value))
        # MariaDB 10.5+ and MySQL 8.0.22+ know SHOW REPLICA STATUS (MySQL 8.4 knows only
        # it); MySQL renamed the columns (Replica_*, *_Source), MariaDB kept Slave_*
        try:
            row = (await conn.execute(sa.text("SHOW REPLICA STATUS"))).mappings().first()
        except sa.exc.DBAPIError:
            row = (await conn.execute(sa.text("SHOW SLAVE STATUS"))).mappings().first()
    if row is None:
        return None
    columns = dict(row)
    running = [columns.get(f"{w}_{t}_Running") for w in ("Slave", "Replica") for t in ("IO", "SQL")]
    if running.count("Yes") < 2:
        return None
    behind: Any = columns.get("Seconds_Behind_Master", columns.get("Seconds_Behind_Source"))
    return None if behind is None else float(behind)


def open_replica(url: str, pool_size: int) -> Replica:
    """One replica: an engine and a driver pool of `pool_size` each, as the primary's,
    behind a circuit breaker of its own (`replica HOST:PORT`)."""
    from surge.backends.sql import SqlStore, create_engine, guard
    from surge.backends.sql_sales import SqlSales

    engine = create_engine(url, pool_size)
    name = f"{engine.url.host}:{engine.url.port or ''}".rstrip(":")
    own = guard(engine, Breaker(f"replica {name}"))
    store = SqlStore(engine, pool_size)
    return Replica(name, engine, own, store.get_orders, SqlSales(engine).user_orders, store.close)
