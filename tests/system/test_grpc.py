"""The gRPC face (issue 18) against real servers on every backend kind: each call, its
answers matching the HTTP API's, the same rules (owner-or-admin, idempotency) and the
problem types carried as gRPC statuses; a sale watched over a stream while it sells out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from surge.v1 import surge_pb2 as pb
from tests.backends import Backend
from tests.grpc_client import Stubs, admin, auth, error_info, new_sale, serve_grpc, stubs
from tests.server import base_env, run_cli
from tests.system.conftest import bearer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

USERS = 5  # `db seed --users 5`: order k belongs to user((k-1) % 5 + 1)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def _as_json(order: pb.Order) -> dict[str, Any]:
    """An Order message in the HTTP API's JSON shape (created_at to the second)."""
    return {
        "id": order.id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "quantity": order.quantity,
        "status": order.status,
        "created_at": order.created_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _http_order(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "created_at": data["created_at"][:19]}


async def test_every_call_on_every_backend(backend: Backend, tmp_path: Path) -> None:
    env = base_env(tmp_path, backend.env())
    run_cli(env, "db", "migrate")
    run_cli(env, "db", "seed", "--orders", "50", "--users", str(USERS))
    with serve_grpc(env, tmp_path) as (server, address):
        async with stubs(address) as rpc, httpx.AsyncClient(base_url=server.url) as http:
            await _orders(rpc, http)
            await _sale_sold_out_while_watched(rpc, http)
            await _publish(rpc)
        assert server.stop() == 0


async def _orders(rpc: Stubs, http: httpx.AsyncClient) -> None:
    got = await rpc.orders.GetOrder(pb.GetOrderRequest(id=7), metadata=auth("user2"))
    same = (await http.get("/orders/7", headers=bearer("user2"))).json()
    assert _as_json(got) == _http_order(same)
    by_admin = await rpc.orders.GetOrder(pb.GetOrderRequest(id=7), metadata=admin())
    assert by_admin == got

    # another user's order is not found (whether it exists is not told)
    for order_id, who in ((7, "user3"), (424242, "user2")):
        error = await _refused(
            rpc.orders.GetOrder(pb.GetOrderRequest(id=order_id), metadata=auth(who))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND, (order_id, error)
        info = error_info(error)
        assert (info.reason, info.metadata["status"]) == ("order-not-found", "404")

    for bad_id in (0, -1):
        request = pb.GetOrderRequest(id=bad_id)
        error = await _refused(rpc.orders.GetOrder(request, metadata=auth("user2")))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).metadata["status"] == "400"

    error = await _refused(rpc.orders.GetOrder(pb.GetOrderRequest(id=7)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).metadata["status"] == "401"
    forged = (("authorization", "Bearer not.a.token"),)
    error = await _refused(rpc.orders.GetOrder(pb.GetOrderRequest(id=7), metadata=forged))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # ListMyOrders pages through what GET /users/me/orders lists
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        request = pb.ListMyOrdersRequest(cursor=cursor, limit=3)
        page = await rpc.orders.ListMyOrders(request, metadata=auth("user1"))
        assert len(page.items) <= 3
        seen.extend(_as_json(item) for item in page.items)
        if not page.next:
            break
        cursor = page.next
    mine = await http.get("/users/me/orders?limit=100", headers=bearer("user1"))
    listed = mine.json()["items"]
    assert seen == [_http_order(item) for item in listed]
    assert len(seen) == 10 and {order["user_id"] for order in seen} == {"user1"}
    error = await _refused(
        rpc.orders.ListMyOrders(pb.ListMyOrdersRequest(cursor="@@@"), metadata=auth("user1"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await _refused(
        rpc.orders.ListMyOrders(pb.ListMyOrdersRequest(limit=100_000), metadata=auth("user1"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _sale_sold_out_while_watched(rpc: Stubs, http: httpx.AsyncClient) -> None:
    stock, buyers = 20, 30
    error = await _refused(rpc.sales.CreateSale(new_sale(stock), metadata=auth("user1")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await _refused(rpc.sales.CreateSale(new_sale(0), metadata=admin()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["status"] in ("400", "422")

    sale = await rpc.sales.CreateSale(new_sale(stock), metadata=admin())
    assert (sale.stock, sale.remaining, sale.state, sale.per_user_limit) == (
        stock,
        stock,
        "live",
        1,
    )
    assert await rpc.sales.GetSale(pb.GetSaleRequest(id=sale.id)) == sale
    error = await _refused(rpc.sales.GetSale(pb.GetSaleRequest(id=sale.id + 1000)))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    watch = rpc.sales.WatchSale(pb.WatchSaleRequest(id=sale.id), timeout=30)
    states: list[pb.SaleState] = [await watch.read()]  # subscribed: the state now
    assert (states[0].remaining, states[0].state) == (stock, "live")

    async def read_until_sold_out() -> None:
        while states[-1].state != "sold_out":
            states.append(await watch.read())

    reader = asyncio.create_task(read_until_sold_out())

    async def buy(user: int) -> pb.Order | grpc.aio.AioRpcError:
        request = pb.PlaceOrderRequest(sale_id=sale.id, quantity=1, idempotency_key=f"k-{user}")
        try:
            return await rpc.sales.PlaceOrder(request, metadata=auth(f"buyer{user}"))
        except grpc.aio.AioRpcError as error:
            return error

    results = await asyncio.gather(*(buy(user) for user in range(buyers)))
    await asyncio.wait_for(reader, 10)
    watch.cancel()

    orders = [r for r in results if isinstance(r, pb.Order)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(orders) == stock and len({o.id for o in orders}) == stock
    # pending, to be paid within SURGE_PAY_WINDOW (15 min by default; issue 19)
    assert {(o.status, o.pay_by.ToSeconds() - o.created_at.ToSeconds()) for o in orders} == {
        ("pending", 900)
    }
    assert {(e.code(), error_info(e).reason) for e in refused} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "sold-out")
    }
    # the stream: the stock only ever went down, and ended at nothing left
    remaining = [state.remaining for state in states]
    assert remaining == sorted(remaining, reverse=True)
    assert (states[-1].remaining, states[-1].state) == (0, "sold_out")
    await asyncio.sleep(0.6)  # GET /sales/{id}'s view is rebuilt at most twice a second
    assert (await http.get(f"/sales/{sale.id}")).json()["remaining"] == 0
    assert (await rpc.sales.GetSale(pb.GetSaleRequest(id=sale.id))).state == "sold_out"

    # a retry with its key gets the same order back; another key is over the user's limit
    first = orders[0]
    buyer = auth(first.user_id)
    retry = pb.PlaceOrderRequest(sale_id=sale.id, idempotency_key=f"k-{first.user_id[5:]}")
    assert await rpc.sales.PlaceOrder(retry, metadata=buyer) == first
    assert await rpc.orders.GetOrder(pb.GetOrderRequest(id=first.id), metadata=buyer) == first
    another = pb.PlaceOrderRequest(sale_id=sale.id, idempotency_key="another")
    error = await _refused(rpc.sales.PlaceOrder(another, metadata=buyer))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason in ("limit-reached", "sold-out")
    missing_key = pb.PlaceOrderRequest(sale_id=sale.id, quantity=1)
    error = await _refused(rpc.sales.PlaceOrder(missing_key, metadata=auth("late")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    too_many = pb.PlaceOrderRequest(sale_id=sale.id, quantity=-3, idempotency_key="q")
    error = await _refused(rpc.sales.PlaceOrder(too_many, metadata=auth("late")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _publish(rpc: Stubs) -> None:
    service = auth("backend", role="service")
    reply = await rpc.rooms.Publish(
        pb.PublishRequest(room="chat:grpc", data='{"n": 1}'), metadata=service
    )
    again = await rpc.rooms.Publish(
        pb.PublishRequest(room="chat:grpc", data='"two"'), metadata=service
    )
    assert (reply.room, again.seq) == ("chat:grpc", reply.seq + 1)
    for request, who, code in (
        (pb.PublishRequest(room="chat:grpc", data="{bad"), service, "INVALID_ARGUMENT"),
        (pb.PublishRequest(room="no such kind", data="1"), service, "INVALID_ARGUMENT"),
        (pb.PublishRequest(room="chat:grpc", data="1"), auth("user1"), "PERMISSION_DENIED"),
    ):
        error = await _refused(rpc.rooms.Publish(request, metadata=who))
        assert error.code().name == code, (request, error)
