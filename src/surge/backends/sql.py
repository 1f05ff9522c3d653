"""The SQL store on SQLAlchemy's async engine: SQLite, MariaDB/MySQL or PostgreSQL.

The pool holds `pool_size` connections and no overflow; callers bound their own
concurrency below it (the order query's BatchLoader), so a request waits for a
connection at most until its own deadline cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from surge.backends.breaker import Breaker, Guard
from surge.backends.sql_reads import order_reads, orders_by_id
from surge.backends.sql_replicas import ReplicaSet
from surge.ground.errors import count_as_unavailable
from surge.ground.orders import Order
from surge.schema import ORDER_COLUMNS, orders

log = logging.getLogger("surge.sql")
# a database error that escapes a handler answers 503, not 500 (surge.protect.deadlines)
count_as_unavailable(sa.exc.SQLAlchemyError)

CONNECT_TIMEOUT = 2  # seconds
OPERATION_TIMEOUT = 5.0  # seconds a connection may be held (every use is a batch or one row)

DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def engine_url(url: str) -> sa.URL:
    """Maps a user-facing URL (`mysql://...`) to the async driver SQLAlchemy should load."""
    parsed = make_url(url)
    scheme = parsed.drivername.split("+", 1)[0]
    return parsed.set(drivername=DRIVERS[scheme])


def create_engine(url: str, pool_size: int) -> AsyncEngine:
    target = engine_url(url)
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0}
    backend = target.get_backend_name()
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    elif backend == "mysql":  # an unreachable server costs this, not the OS's minutes
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"timeout": CONNECT_TIMEOUT}
    if backend != "sqlite":
        # No pre-ping: it costs a round trip per checkout (measured: one per batched
        # lookup). A connection that died is invalidated by SQLAlchemy when its query
        # fails; that batch answers 503 and the next gets a fresh connection. Recycled
        # after half an hour, well inside MySQL's wait_timeout (8 h by default) and any
        # proxy's idle cut-off, so a quiet night does not cost the morning's first batch.
        kwargs.update(pool_recycle=1800)
    if target.get_backend_name() == "mysql":
        # READ COMMITTED for the whole engine, set once per connection: InnoDB's default
        # REPEATABLE READ gap-locks a user's missing sale_buyers row and two first buyers
        # deadlock on the insert. Set per transaction instead, it cost four round trips
        # (SET + COMMIT, and again to restore it on check-in).
        kwargs.update(isolation_level="READ COMMITTED", pool_reset_on_return=None)
    engine = create_async_engine(target, **kwargs)
    if target.get_backend_name() == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    if target.get_backend_name() == "mysql":
        sa.event.listen(engine.sync_engine, "reset", _rollback_unless_ended)
    return engine


@contextlib.asynccontextmanager
async def connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.connect()`, closed inline. SQLAlchemy's own context manager closes the
    connection in a task of its own, shielded from cancellation: two more turns of the
    event loop for every query, and under a storm a turn takes 10-25 ms (measured: a
    winners' batch spent 50 ms of its 75 there). If a cancellation interrupts the close,
    the connection is discarded (its state is unknown) in the background."""
    # OPERATION_TIMEOUT: a server that stops answering (a partition drops packets) would
    # keep a query waiting for TCP's minutes; past it the call counts as the database
    # being down, and the breaker opens
    async with guard(engine)(), asyncio.timeout(OPERATION_TIMEOUT):
        conn = await engine.connect()
        try:
            yield conn
        finally:
            try:
                await conn.close()
            except asyncio.CancelledError:
                task = asyncio.ensure_future(_discard(conn))
                _discarding.add(task)
                task.add_done_callback(_discarding.discard)
                raise


# Driver errors that mean the connection or the server is gone: MySQL client codes (can't
# connect, server gone away, lost connection...) and PostgreSQL SQLSTATE classes 08
# (connection exception) and 57P (admin shutdown, crash shutdown, cannot connect now).
# 1927: connection killed (a server shutting down); 2014: commands out of sync (a reply
# left unread); 2045, 4031: the server closed an idle connection. As SQLAlchemy's dialect.
_MYSQL_DOWN = {1927, 2002, 2003, 2005, 2006, 2013, 2014, 2045, 2055, 4031}
_PG_DOWN = ("08", "57P")


def database_down(error: BaseException) -> bool:
    """Whether `error` means the database is down or unreachable; a deadlock, a lock
    wait timeout or a constraint violation means it answered."""
    if isinstance(error, OSError | TimeoutError):
        return True
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        orig: BaseException | None = error.orig
    elif isinstance(error, sa.exc.SQLAlchemyError):
        return False
    else:  # the driver's own error (surge.backends.sql_reads calls the driver directly)
        orig = error
    code = orig.args[0] if orig is not None and orig.args else None
    if isinstance(code, int) and code in _MYSQL_DOWN:
        return True
    if type(orig).__name__ == "InterfaceError" and (
        code == 0 or "closed" in str(orig)  # asyncmy "Not connected"; asyncpg "... is closed"
    ):
        return True
    state = getattr(orig, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_PG_DOWN)


_guards: weakref.WeakKeyDictionary[AsyncEngine, Guard] = weakref.WeakKeyDictionary()


def guard(engine: AsyncEngine, breaker: Breaker | None = None) -> Guard:
    """The circuit breaker around every use of `engine` through `connected` (`breaker`,
    on the first call for the engine: a replica's has a name of its own)."""
    found = _guards.get(engine)
    if found is None:
        found = _guards[engine] = Guard(breaker or Breaker("database"), database_down)
    return found


def breaker(engine: AsyncEngine) -> Breaker:
    return guard(engine).breaker


_discarding: set[asyncio.Future[None]] = set()


async def _discard(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
    except Exception as exc:  # already closed, or the database is gone: nothing to do
        log.debug("discarding a connection: %s", exc)


ENDED = "surge.transaction_ended"


def mark_ended(info: dict[Any, Any]) -> None:
    """Tells the pool that this connection's transaction was committed (or rolled back)
    just now, so checking it in needs no ROLLBACK round trip; pass `AsyncConnection.info`
    right after `begin()`'s block ended. Only for connections that ran nothing since."""
    info[ENDED] = True


def _rollback_unless_ended(dbapi_conn: Any, record: Any, state: Any) -> None:
    # The pool's own reset-on-return is off on MySQL (see create_engine): it rolls back
    # every connection checked in whose Connection did not just roll back itself, and so
    # the purchase batch, committed already, paid a sixth round trip for nothing. Every
    # other use still ends here without a transaction left open.
    ended = record is not None and record.info.pop(ENDED, False)
    if ended or state.transaction_was_reset or state.terminate_only or not state.asyncio_safe:
        return
    dbapi_conn.rollback()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; NORMAL sync is durable in WAL mode up to the
    # last checkpointed transaction on power loss, and loses nothing on a process crash.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_SELECT_ORDERS = sa.select(*ORDER_COLUMNS)


class SqlStore:
    def __init__(self, engine: AsyncEngine, pool_size: int) -> None:
        self.engine = engine
        self._size = pool_size
        # the order query's reads, on the driver's pool where it has one (sql_reads)
        self._reads = order_reads(
            engine.url, pool_size, guard(engine), CONNECT_TIMEOUT, OPERATION_TIMEOUT
        )
        self.replicas: ReplicaSet | None = None  # set by the factory when there are some

    @property
    def in_use(self) -> int:
        pool = self.engine.sync_engine.pool
        checked_out = getattr(pool, "checkedout", None)
        engine = int(checked_out()) if checked_out is not None else 0
        # two pools of `size`: the busier one is the one that runs out first
        return max(engine, self._reads.in_use) if self._reads is not None else engine

    @property
    def size(self) -> int:
        return self._size

    def changed(self, ids: Sequence[int]) -> None:
        if self.replicas is not None:
            self.replicas.changed(ids)

    async def get_orders(self, ids: Sequence[int]) -> dict[int, Order]:
        if self.replicas is not None:
            return await self.replicas.get_orders(ids, self._get_orders)
        return await self._get_orders(ids)

    async def _get_orders(self, ids: Sequence[int]) -> dict[int, Order]:
        if self._reads is not None:
            return await self._reads.get_orders(ids)
        query = _SELECT_ORDERS.where(orders.c.id.in_(list(ids)))
        async with connected(self.engine) as conn:
            rows = (await conn.execute(query)).all()
        return orders_by_id(rows)

    async def warm(self) -> None:
        """Opens the whole pool now. Connections are otherwise opened on first use, and a
        storm's first burst (a sale opening) paid a connection handshake per query, on a
        loop already busy with thousands of requests: the slowest winners were the first
        ones. Idle connections stay pooled (recycled after 30 min)."""
        async with contextlib.AsyncExitStack() as held:
            for _ in range(self._size):
                await held.enter_async_context(self.engine.connect())
        if self._reads is not None:
            await self._reads.warm()

    async def ping(self) -> None:
        async with connected(self.engine) as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        if self._reads is not None:
            await self._reads.close()
        await self.engine.dispose()
