"""The services of proto/surge/v1/surge.proto: each call is its HTTP twin's route
(surge.rpc.bridge), its answer converted (surge.rpc.convert). WatchSale is the one call
of its own: the sale's stock room of the hub, as a stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import grpc
import orjson

from surge.ground.web import Response
from surge.rpc import convert
from surge.rpc.bridge import Bridge
from surge.v1 import surge_pb2 as pb
from surge.v1 import surge_pb2_grpc as pb_grpc

T = TypeVar("T")
# GET /sales/{id}'s view is rebuilt at most every 0.5 s (surge.sales.catalog.SALE_VIEW_TTL);
# a WatchSale reads it again this long after it started listening
VIEW_AGE = 0.6
Listener = Callable[[bytes], None]
Watch = Callable[[str, Listener], Callable[[], None]]  # room, listener -> stop watching


def _peer_host(peer: str) -> str:
    """The address part of grpc's peer string ("ipv4:127.0.0.1:5555", "ipv6:[::1]:5555")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return kind


def _state(sale: pb.Sale) -> pb.SaleState:
    return pb.SaleState(sale_id=sale.id, remaining=sale.remaining, state=sale.state)


class Calls:
    """What every service shares: the bridge, and the reading of a call's context."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.closing = asyncio.Event()  # set when the server drains: streams end

    async def http(
        self,
        context: grpc.aio.ServicerContext,
        rpc: str,
        method: str,
        template: str,
        params: dict[str, str],
        body: bytes = b"",
        query: str = "",
        idempotency_key: str | None = None,
    ) -> Response:
        headers: dict[bytes, bytes] = {}
        for key, value in context.invocation_metadata() or ():
            if key != "authorization":
                continue
            if b"authorization" in headers:  # as HTTP: which one counts is not guessed
                await self.refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "duplicate-header",
                    "authorization may be sent once",
                    400,
                )
            # bytes: grpc could not read them as UTF-8 (surge.rpc.server quiets its log line)
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
            headers[b"authorization"] = raw
        if idempotency_key is not None:
            headers[b"idempotency-key"] = idempotency_key.encode("utf-8", "replace")
        return await self.bridge.call(
            rpc,
            method,
            template,
            params,
            headers,
            _peer_host(context.peer()),
            context.time_remaining(),
            body,
            query,
        )

    async def reply(
        self,
        context: grpc.aio.ServicerContext,
        answer: Response,
        expected: int,
        make: Callable[[Any], T],
    ) -> T:
        try:
            return make(convert.json_of(answer, expected))
        except convert.Refusal as refused:
            await abort(context, refused)

    async def refuse(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        kind: str,
        detail: str,
        status: int = 0,
    ) -> NoReturn:
        await abort(context, convert.refusal_of(code, kind, detail, status))
        raise AssertionError("unreachable")  # abort raises


async def abort(context: grpc.aio.ServicerContext, refused: convert.Refusal) -> NoReturn:
    await context.abort(refused.code, refused.detail, trailing_metadata=refused.trailers)
    raise AssertionError("unreachable")  # abort raises


class Orders(pb_grpc.OrdersServicer):
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        params = {"id": str(request.id)}
        answer = await self._calls.http(context, "GetOrder", "GET", "/orders/{id}", params)
        return await self._calls.reply(context, answer, 200, convert.order)

    async def ListMyOrders(
        self, request: pb.ListMyOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMyOrdersResponse:
        query = []
        if request.cursor:
            query.append(f"cursor={quote(request.cursor, safe='')}")
        if request.limit:
            query.append(f"limit={request.limit}")
        answer = await self._calls.http(
            context, "ListMyOrders", "GET", "/users/me/orders", {}, query="&".join(query)
        )

        def page(data: dict[str, Any]) -> pb.ListMyOrdersResponse:
            items = [convert.order(item) for item in data["items"]]
            return pb.ListMyOrdersResponse(items=items, next=data["next"] or "")

        return await self._calls.reply(context, answer, 200, page)

    async def PayOrder(
        self, request: pb.PayOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        body = orjson.dumps({"payment_ref": request.payment_ref})
        answer = await self._calls.http(
            context,
            "PayOrder",
            "POST",
            "/orders/{id}/pay",
            {"id": str(request.id)},
            body,
            idempotency_key=request.idempotency_key or None,
        )
        return await self._calls.reply(context, answer, 200, convert.order)

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        params = {"id": str(request.id)}
        answer = await self._calls.http(
            context, "CancelOrder", "POST", "/orders/{id}/cancel", params
        )
        return await self._calls.reply(context, answer, 200, convert.order)


class Sales(pb_grpc.SalesServicer):
    def __init__(self, calls: Calls, watch: Watch) -> None:
        self._calls = calls
        self._watch = watch

    async def CreateSale(
        self, request: pb.CreateSaleRequest, context: grpc.aio.ServicerContext
    ) -> pb.Sale:
        try:
            body = convert.new_sale_body(request)
        except ValueError as exc:  # a Timestamp outside RFC 3339's years
            await self._calls.refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "invalid-sale", str(exc)
            )
        answer = await self._calls.http(context, "CreateSale", "POST", "/sales", {}, body)
        return await self._calls.reply(context, answer, 201, convert.sale)

    async def GetSale(
        self, request: pb.GetSaleRequest, context: grpc.aio.ServicerContext
    ) -> pb.Sale:
        params = {"id": str(request.id)}
        answer = await self._calls.http(context, "GetSale", "GET", "/sales/{id}", params)
        return await self._calls.reply(context, answer, 200, convert.sale)

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.Order:
        body = b'{"quantity":%d}' % (request.quantity or 1)
        answer = await self._calls.http(
            context,
            "PlaceOrder",
            "POST",
            "/sales/{id}/orders",
            {"id": str(request.sale_id)},
            body,
            idempotency_key=request.idempotency_key or None,
        )
        return await self._calls.reply(context, answer, 201, convert.order)

    async def WatchSale(
        self, request: pb.WatchSaleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SaleState]:
        # coalescing: a state is a whole snapshot, so a slow reader needs only the newest
        latest: list[pb.SaleState] = []
        changed = asyncio.Event()

        def heard(payload: bytes) -> None:
            try:
                data = orjson.loads(payload)["data"]
                state = pb.SaleState(
                    sale_id=request.id, remaining=int(data["remaining"]), state=str(data["state"])
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                return  # not a stock update (nothing else is published there)
            latest[:] = [state]
            changed.set()

        # listening before the first read: no change can fall between the two
        stop = self._watch(f"sale:{request.id}", heard)
        closing = asyncio.ensure_future(self._calls.closing.wait())
        try:
            sale = await self._view(context, request.id)
            sent = _state(sale)
            yield sent
            if sale.state == "ended":
                return
            # the view may be up to VIEW_AGE old: one built after we listened, unless a
            # change came first (it is newer), says what changed just before
            recheck_at: float | None = time.monotonic() + VIEW_AGE
            # the end is an instant: seconds since the epoch, never a local wall-clock time
            ends_at = time.monotonic() + sale.ends_at.ToNanoseconds() / 1e9 - time.time()
            # (no `yield` inside asyncio.timeout: its cancellation would land in grpc's write)
            while True:
                wake_at = ends_at if recheck_at is None else min(ends_at, recheck_at)
                news = asyncio.ensure_future(changed.wait())
                await asyncio.wait(
                    (news, closing),
                    timeout=max(0.0, wake_at - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if news.done():
                    changed.clear()
                    recheck_at = None
                    sent = latest.pop()
                    yield sent
                    if sent.state == "ended":  # the stream's last word, whoever said it
                        return
                    continue
                news.cancel()
                if closing.done():
                    await self._calls.refuse(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        "shutting-down",
                        "the server is shutting down: watch again",
                    )
                if recheck_at is not None and time.monotonic() < ends_at:
                    recheck_at = None
                    params = {"id": str(request.id)}
                    answer = await self._calls.http(
                        context, "WatchSale", "GET", "/sales/{id}", params
                    )
                    try:  # a refusal now (rate-limited, shed) costs only the recheck
                        again = convert.sale(convert.json_of(answer, 200))
                    except convert.Refusal:
                        continue
                    now = pb.SaleState(
                        sale_id=again.id, remaining=again.remaining, state=again.state
                    )
                    if now != sent and not changed.is_set():
                        sent = now
                        yield sent
                        if sent.state == "ended":  # (a recheck that came late)
                            return
                    continue
                yield pb.SaleState(sale_id=sale.id, remaining=sent.remaining, state="ended")
                return
        finally:
            stop()
            closing.cancel()

    async def _view(self, context: grpc.aio.ServicerContext, sale_id: int) -> pb.Sale:
        params = {"id": str(sale_id)}
        answer = await self._calls.http(context, "WatchSale", "GET", "/sales/{id}", params)
        return await self._calls.reply(context, answer, 200, convert.sale)


class Rooms(pb_grpc.RoomsServicer):
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def Publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublishReply:
        answer = await self._calls.http(
            context,
            "Publish",
            "POST",
            "/rooms/{room}/messages",
            {"room": request.room},
            request.data.encode(),
        )
        return await self._calls.reply(
            context, answer, 201, lambda data: pb.PublishReply(room=data["room"], seq=data["seq"])
        )
