from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from surge import db
from surge.backends.sql import create_engine
from surge.backends.sql_sales import SqlSales
from surge.ground.interfaces import Sales
from tests.backends import KINDS, Backend, make_backend
from tests.fakes import MemorySales

# The Sales interface: the fake the unit tests use, and SqlSales on every database.
SALES_STORES = ("memory", *KINDS)


@pytest.fixture(params=SALES_STORES)
def sales_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend | None]:
    """None for the in-process fake, else a fresh backend of each kind."""
    if request.param == "memory":
        yield None
        return
    with make_backend(request.param, tmp_path) as made:
        yield made


@pytest.fixture
async def sales_store(sales_backend: Backend | None) -> AsyncIterator[Sales]:
    """A fresh, empty `Sales`: `MemorySales`, or `SqlSales` on a migrated database."""
    if sales_backend is None:
        yield MemorySales()
        return
    await asyncio.to_thread(db.migrate, sales_backend.database_url)
    engine = create_engine(sales_backend.database_url, pool_size=4)
    try:
        yield SqlSales(engine)
    finally:
        await engine.dispose()
