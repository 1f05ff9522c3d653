"""`surge db`'s database work on every database: migrate, has_orders, seed."""

from __future__ import annotations

import asyncio

import pytest

from surge import db
from tests.backends import Backend

pytestmark = pytest.mark.anyio


async def test_seed_if_empty_sees_the_orders_there_are(backend: Backend) -> None:
    await asyncio.to_thread(db.migrate, backend.database_url)
    assert await db.has_orders(backend.database_url) is False  # a fresh database
    seeded = await db.seed(backend.database_url, 5, 2, False)
    assert seeded.orders == 5
    assert await db.has_orders(backend.database_url) is True
    assert await asyncio.to_thread(db.schema_is_current, backend.database_url)
