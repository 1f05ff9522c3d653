"""Schema migrations (Alembic) and demo data, for `surge db migrate` and `surge db seed`."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from surge.backends.sql import create_engine
from surge.schema import orders, outbox, sale_buyers, sales

STATUSES = ("paid", "paid", "shipped", "delivered", "cancelled")
SEED_CHUNK = 1000


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("surge") / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


async def has_orders(url: str) -> bool:
    """True when the database holds at least one order (`surge db seed --if-empty`)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.select(orders.c.id).limit(1))).first() is not None
    finally:
        await engine.dispose()


def migrate(url: str) -> None:
    """Brings the schema to the newest revision (idempotent). Call outside an event loop."""
    _ensure_sqlite_dir(url)
    command.upgrade(_alembic_config(url), "head")


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(_alembic_config(url)).get_current_head()


async def current_revision(url: str) -> str | None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


def schema_is_current(url: str) -> bool:
    return asyncio.run(current_revision(url)) == head_revision(url)


def owner_of(index: int, users: int) -> str:
    """The user who owns the index-th seeded order (1-based); benchmarks rely on it."""
    return f"user{(index - 1) % users + 1}"


@dataclass(frozen=True, slots=True)
class SeedResult:
    orders: int
    sales: int
    first_order_id: int
    seconds: float


async def seed(
    url: str, order_count: int, users: int, reset: bool = False, rng: random.Random | None = None
) -> SeedResult:
    """Inserts demo sales and `order_count` orders spread over `users` users.

    Order k of this run (1-based) belongs to `owner_of(k, users)` and gets id
    `first_order_id + k - 1`; with `reset` the tables are emptied first and ids start at 1.
    The orders belong to 10 past (ended) sales whose stock is exactly what was sold; one
    more sale, live for a day with 100 items and a limit of 1 per user, is there to try a
    purchase.
    """
    rng = rng or random.Random(42)
    started = time.perf_counter()
    engine = create_engine(url, pool_size=1)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    try:
        async with engine.begin() as conn:
            if reset:
                for table in (outbox, orders, sale_buyers, sales):
                    await conn.execute(table.delete())
            base_sale = (await conn.execute(sa.select(sa.func.max(sales.c.id)))).scalar() or 0
            sale_rows = [
                {
                    "id": base_sale + i + 1,
                    "name": f"Demo sale {base_sale + i + 1}",
                    "stock": 0,  # set below to what was sold
                    "remaining": 0,
                    "per_user_limit": 1000,
                    "starts_at": now - timedelta(days=31),
                    "ends_at": now - timedelta(hours=1),
                    "created_at": now - timedelta(days=32),
                }
                for i in range(10)
            ]
            live = {
                "id": base_sale + 11,
                "name": "Demo live sale",
                "stock": 100,
                "remaining": 100,
                "per_user_limit": 1,
                "starts_at": now - timedelta(minutes=1),
                "ends_at": now + timedelta(days=1),
                "created_at": now - timedelta(minutes=2),
            }
            await conn.execute(sa.insert(sales).values([*sale_rows, live]))
            base = (await conn.execute(sa.select(sa.func.max(orders.c.id)))).scalar() or 0
            for start in range(0, order_count, SEED_CHUNK):
                rows = []
                for k in range(start + 1, min(start + SEED_CHUNK, order_count) + 1):
                    rows.append(
                        {
                            "id": base + k,
                            "sale_id": sale_rows[k % len(sale_rows)]["id"],
                            "user_id": owner_of(k, users),
                            "quantity": rng.randint(1, 3),
                            "status": rng.choice(STATUSES),
                            "created_at": now - timedelta(seconds=rng.randint(0, 30 * 86_400)),
                        }
                    )
                await conn.execute(sa.insert(orders), rows)  # executemany: the driver batches
            sold = (
                sa.select(sa.func.coalesce(sa.func.sum(orders.c.quantity), 0))
                .where(orders.c.sale_id == sales.c.id)
                .scalar_subquery()
            )
            await conn.execute(
                sa.update(sales)
                .where(sales.c.id.in_([row["id"] for row in sale_rows]))
                .values(stock=sold)
            )
            if conn.dialect.name == "postgresql":  # explicit ids do not move the sequences
                for name in ("orders", "sales"):
                    await conn.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                            f"(SELECT COALESCE(MAX(id), 1) FROM {name}))"
                        )
                    )
    finally:
        await engine.dispose()
    return SeedResult(order_count, len(sale_rows) + 1, base + 1, time.perf_counter() - started)
