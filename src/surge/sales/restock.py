"""Stock came back into a sale's gate: a purchase whose commit failed gave its reservation
back, or a cancelled or expired order gave its units back (surge.sales.payments). Either
way the live feed shows the gate's count with the sale's own state (an ended sale stays
`ended`), and no sold-out board may refuse a buyer for those units any longer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from surge.sales.cache import SaleConfigs, SoldOutBoard
from surge.sales.feed import StockFeed

log = logging.getLogger("surge.sales")


class StockBack:
    def __init__(self, configs: SaleConfigs, feed: StockFeed, board: SoldOutBoard) -> None:
        self._configs = configs
        self._feed = feed
        self._board = board

    async def __call__(self, sale_id: int, left: int) -> None:
        """`left`: the gate's remaining stock after the units came back."""
        try:
            sale = await self._configs.get(sale_id)
        except Exception:  # the database down: the count says what it can
            sale = None
        if sale is not None:  # upcoming, live, sold out or ended, as GET /sales/{id} says
            self._feed.changed(sale_id, left, sale.state(datetime.now(UTC), left))
        else:
            self._feed.changed(sale_id, left, "live" if left > 0 else "sold_out")
        if left > 0:
            try:
                await self._board.unmark(sale_id)
            except Exception as exc:  # each hold runs out within a second anyway
                log.warning("sale %d: sold-out boards not told of a restock: %s", sale_id, exc)
