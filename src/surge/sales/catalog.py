"""Sales as a catalog: POST /sales (admin), GET /sales/{id} (anyone), GET /users/me/orders."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from surge.auth import Authenticator
from surge.ground.interfaces import Gate, Sales
from surge.ground.paging import parse_page
from surge.ground.purchases import GateState
from surge.ground.sales import Sale, parse_new_sale
from surge.ground.web import Problem, Request, Response, json_response, response
from surge.orders import encode_order, parse_id
from surge.protect.deadlines import within
from surge.sales.cache import SaleConfigs

SALE_VIEW_TTL = 0.5  # a sale's public view is rebuilt at most twice a second per process
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


class Catalog:
    def __init__(
        self,
        auth: Authenticator,
        sales: Sales,
        gate: Gate,
        configs: SaleConfigs,
        deadline: Callable[[str], float],  # route ("METHOD /template") -> seconds
    ) -> None:
        self._create_deadline = deadline("POST /sales")
        self._view_deadline = deadline("GET /sales/{id}")
        self._mine_deadline = deadline("GET /users/me/orders")
        self._auth = auth
        self._sales = sales
        self._gate = gate
        self._configs = configs
        self._views: dict[int, tuple[float, Response]] = {}

    # POST /sales ------------------------------------------------------------------------------
    def create(self, request: Request) -> Awaitable[Response]:
        return within(self._create_deadline, self._create(request))

    async def _create(self, request: Request) -> Response:
        user = self._auth.user(request.headers.get(b"authorization"))
        if not user.admin:  # authorization before the body is even looked at
            raise Problem(403, "forbidden", "admin role required")
        new = parse_new_sale(request.body)
        now = datetime.now(UTC)
        sale = await self._sales.create_sale(new, now)
        with contextlib.suppress(Exception):  # else the first purchase loads it (lazily)
            # (a snapshot as of its creation: a purchase that raced it is counted all the
            # same, see surge.sales.reconcile)
            await self._gate.reconcile(
                GateState(
                    sale.id,
                    sale.stock,
                    sale.per_user_limit,
                    int(sale.starts_at.timestamp() * 1000),
                    int(sale.ends_at.timestamp() * 1000),
                ),
                stale_ms=60_000,
            )
        return json_response(201, sale.to_json(now), (("location", f"/sales/{sale.id}"),))

    # GET /sales/{id} --------------------------------------------------------------------------
    def view(self, request: Request) -> Response | Awaitable[Response]:
        sale_id = parse_id(request.params["id"], "sale")
        cached = self._views.get(sale_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return within(self._view_deadline, self._build_view(sale_id))

    async def _build_view(self, sale_id: int) -> Response:
        sale = await self._configs.get(sale_id)
        if sale is None:
            raise Problem(404, "sale-not-found", "no such sale")
        remaining = await self._remaining(sale)
        built = json_response(200, sale.to_json(datetime.now(UTC), remaining))
        if len(self._views) > 10_000:
            self._views.clear()
        self._views[sale_id] = (time.monotonic() + SALE_VIEW_TTL, built)
        return built

    async def _remaining(self, sale: Sale) -> int:
        """The gate's count (it includes reservations being committed), else the database's."""
        try:
            counted = await self._gate.remaining(sale.id)
        except Exception:
            counted = None
        if counted is not None:
            return counted
        fresh = await self._sales.get_sale(sale.id)
        return sale.remaining if fresh is None else fresh.remaining

    # GET /users/me/orders ---------------------------------------------------------------------
    def my_orders(self, request: Request) -> Awaitable[Response]:
        return within(self._mine_deadline, self._my_orders(request))

    async def _my_orders(self, request: Request) -> Response:
        user = self._auth.user(request.headers.get(b"authorization"))
        before, limit = _page(request.query)
        found = await self._sales.user_orders(user.id, before, limit + 1)
        more = len(found) > limit
        items = found[:limit]
        body = b'{"items":[' + b",".join(encode_order(o) for o in items) + b'],"next":'
        body += (b'"%d"' % items[-1].id if more and items else b"null") + b"}"
        return response(200, body)


def _page(query: str) -> tuple[int | None, int]:
    """`?cursor=ID&limit=N`: orders older than ID (newest first), N per page."""
    return parse_page(query, PAGE_SIZE, MAX_PAGE_SIZE)
