"""GET /orders/{id}: near cache -> shared cache (Redis) -> database (`query.py` tells the
whole path; `near.py` is the near cache)."""

from surge.ground.paging import parse_id
from surge.orders.flights import OrderQueryOptions, OrderStats
from surge.orders.near import NearCache
from surge.orders.query import INVALIDATE_CHANNEL, OrderQuery, encode_order

__all__ = [
    "INVALIDATE_CHANNEL",
    "NearCache",
    "OrderQuery",
    "OrderQueryOptions",
    "OrderStats",
    "encode_order",
    "parse_id",
]
