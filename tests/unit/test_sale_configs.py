"""SaleConfigs: "no such sale" is remembered briefly, and never piles up."""

from __future__ import annotations

import time
from typing import Any

import pytest

from surge.sales.cache import SaleConfigs

pytestmark = pytest.mark.anyio


class _NoSales:
    def __init__(self) -> None:
        self.queries = 0

    async def get_sale(self, sale_id: int) -> Any:
        self.queries += 1
        return None


async def test_unknown_sales_are_remembered_briefly_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 12 #8: every unknown sale id read added an entry for good."""
    sales = _NoSales()
    configs = SaleConfigs(sales)  # type: ignore[arg-type]  # only get_sale is used
    monkeypatch.setattr(SaleConfigs, "MAX", 100)
    for sale_id in range(1, 1001):
        assert await configs.get(sale_id) is None
    assert len(configs._absent) <= 100
    queries = sales.queries
    assert await configs.get(1000) is None  # still remembered: no query
    assert sales.queries == queries
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + SaleConfigs.ABSENT_TTL + 1)
    assert await configs.get(5000) is None
    assert list(configs._absent) == [5000]  # the expired ones went as the new one came
