"""The order query's database reads on the driver's own pool, past SQLAlchemy.

A miss batch is one `SELECT ... WHERE id IN (...)`. Through SQLAlchemy's async engine it
cost 580 us of CPU on MariaDB (measured, one id; 620 us for 10): the pool's checkout and
check-in run through greenlets, the result through its Row machinery, and on check-in
the pool rolls back the transaction the SELECT opened, one more round trip. On the
driver's own pool, with autocommit on so nothing is left to roll back, the same query
costs 70 us (95 us for 20 ids): at the cold start's 4,000 misses a second per process
that is two thirds of a core. asyncmy and asyncpg each ship a pool made for this; we
write only the glue: the query, the row decoding, and sending failures to the same
circuit breaker as every other database call (surge.backends.sql.guard).

Only MariaDB/MySQL and PostgreSQL take this path, and only with a URL without options;
everything else (SQLite, a URL with `?ssl=...` or any other option) stays on SQLAlchemy.
The pool has its own connections (`pool_size` of them, opened on first use or by `warm`),
in autocommit mode: reads see every committed write at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

import sqlalchemy as sa

from surge.backends.breaker import Guard
from surge.ground.errors import count_as_unavailable
from surge.ground.orders import Order
from surge.schema import ORDER_COLUMNS

_COLUMNS = ", ".join(column.name for column in ORDER_COLUMNS)
_MYSQL_SELECT = f"SELECT {_COLUMNS} FROM orders WHERE id IN ({{}})"  # ids written in
_PG_SELECT = f"SELECT {_COLUMNS} FROM orders WHERE id = ANY($1::bigint[])"
RECYCLE = 1800  # seconds, as the engine's pool_recycle (surge.backends.sql.create_engine)


def orders_by_id(rows: Iterable[Sequence[Any]]) -> dict[int, Order]:
    """Rows of ORDER_COLUMNS, from any driver, as orders by id (times are naive UTC)."""
    return {
        row[0]: Order(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5].replace(tzinfo=UTC),
            None if row[6] is None else row[6].replace(tzinfo=UTC),
        )
        for row in rows
    }


class OrderReads:
    """`get_orders` on a driver pool. Subclasses open the pool and run the query."""

    def __init__(
        self, url: sa.URL, size: int, guard: Guard, connect_timeout: float, timeout: float
    ) -> None:
        self._url = url
        self._size = size
        self._guard = guard
        self._connect_timeout = connect_timeout
        self._timeout = timeout  # seconds a whole use may take, as the engine's
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def get_orders(self, ids: Sequence[int]) -> dict[int, Order]:
        if not ids:
            return {}  # `IN ()` is a syntax error on MySQL
        # one guard and one timeout around the whole use, as `connected` does for the engine
        async with self._guard(), asyncio.timeout(self._timeout):
            pool = self._pool or await self._open()
            rows = await self._fetch(pool, ids)
        return orders_by_id(rows)

    async def _open(self) -> Any:
        async with self._opening:
            if self._pool is None:
                self._pool = await self._create()
        return self._pool

    async def warm(self) -> None:
        async with self._guard():
            await self._fill(await self._open())

    async def _fill(self, pool: Any) -> None:
        """Opens every connection of the pool now (see SqlStore.warm); whatever happens,
        each connection taken is given back."""
        held: list[Any] = []
        try:
            for _ in range(self._size):
                held.append(await pool.acquire())
        finally:
            for conn in held:
                await self._release(pool, conn)

    async def _release(self, pool: Any, conn: Any) -> None:
        raise NotImplementedError

    @property
    def in_use(self) -> int:
        return 0 if self._pool is None else self._in_use(self._pool)

    def _in_use(self, pool: Any) -> int:
        raise NotImplementedError

    async def _create(self) -> Any:
        raise NotImplementedError

    async def _fetch(self, pool: Any, ids: Sequence[int]) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class MysqlOrderReads(OrderReads):
    async def _create(self) -> Any:
        import asyncmy

        url = self._url
        # minsize 0: asyncmy opens up to minsize connections one after another on first
        # use, and those opened before a failure (too many connections, the timeout) were
        # never closed; `warm` fills the pool instead, giving back what it got
        return await asyncmy.create_pool(
            minsize=0,
            maxsize=self._size,
            pool_recycle=RECYCLE,
            autocommit=True,
            host=url.host or "localhost",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            db=url.database,
            charset="utf8mb4",
            connect_timeout=self._connect_timeout,
        )

    async def _fetch(self, pool: Any, ids: Sequence[int]) -> Sequence[Sequence[Any]]:
        conn = await pool.acquire()
        try:
            async with conn.cursor() as cursor:
                # ids are ints (parse_id), written out: no escaping pass over them
                await cursor.execute(_MYSQL_SELECT.format(",".join(map(str, map(int, ids)))))
                rows: Sequence[Sequence[Any]] = await cursor.fetchall()
        except BaseException:
            # cancelled or failed mid-reply: what is left on the wire is unknown, so the
            # connection is closed, and the pool forgets a closed one
            conn.close()
            raise
        finally:
            pool.release(conn)
        return rows

    def _in_use(self, pool: Any) -> int:
        return int(pool.size - pool.freesize)

    async def _release(self, pool: Any, conn: Any) -> None:
        pool.release(conn)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()


class PostgresOrderReads(OrderReads):
    async def _create(self) -> Any:
        import asyncpg

        dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        # min_size 0: with more, asyncpg keeps reconnecting in the background while the
        # database is down and logs a traceback each time; `warm` fills the pool instead
        return await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=self._size,
            max_inactive_connection_lifetime=RECYCLE,
            timeout=self._connect_timeout,
        )

    async def _fetch(self, pool: Any, ids: Sequence[int]) -> Sequence[Sequence[Any]]:
        # outside a transaction block each statement commits on its own; asyncpg's pool
        # resets and, if a query was cut short, closes the connection on release
        rows: Sequence[Sequence[Any]] = await pool.fetch(_PG_SELECT, list(ids))
        return rows

    def _in_use(self, pool: Any) -> int:
        return int(pool.get_size() - pool.get_idle_size())

    async def _release(self, pool: Any, conn: Any) -> None:
        await pool.release(conn)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def order_reads(
    url: sa.URL, size: int, guard: Guard, connect_timeout: float, timeout: float
) -> OrderReads | None:
    """The driver-pool reader for `url` (an engine URL: `mysql+asyncmy://...`), or None
    when SQLAlchemy should keep the reads (SQLite, or options this module does not pass on)."""
    backend = url.get_backend_name()
    if backend == "mysql" and not url.query:
        import asyncmy.errors

        count_as_unavailable(asyncmy.errors.Error)
        return MysqlOrderReads(url, size, guard, connect_timeout, timeout)
    if backend == "postgresql" and not url.query:
        # with options (`?ssl=require`...) SQLAlchemy's translation of them is needed:
        # asyncpg would send the unknown ones to the server as settings, refused
        import asyncpg

        count_as_unavailable(asyncpg.PostgresError)
        count_as_unavailable(asyncpg.InterfaceError)
        return PostgresOrderReads(url, size, guard, connect_timeout, timeout)
    return None
