"""The gRPC face as an operator sees it: deadlines and limits, health checking and
reflection, oversized input, a stream that ends with its sale, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from surge.v1 import surge_pb2 as pb
from tests.backends import OwnRedis, own_redis
from tests.grpc_client import admin, auth, error_info, new_sale, serve_grpc, stubs
from tests.server import Server, base_env, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SLOWEST = 2.5  # s: the write route's deadline (2 s) plus slack
SERVICES = {"surge.v1.Orders", "surge.v1.Sales", "surge.v1.Rooms"}


@contextmanager
def _embedded(tmp_path: Path, **extra: str) -> Iterator[tuple[Server, str]]:
    env = base_env(tmp_path, {"SURGE_DATABASE_URL": f"sqlite:///{tmp_path / 'surge.db'}", **extra})
    run_cli(env, "db", "seed", "--orders", "20", "--users", "5")
    with serve_grpc(env, tmp_path) as running:
        yield running


async def test_health_reflection_and_oversized_input(tmp_path: Path) -> None:
    with _embedded(tmp_path, SURGE_MAX_BODY_BYTES="1024") as (_server, address):
        async with stubs(address) as rpc:
            for service in ("", *SERVICES):
                answer = await rpc.health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await rpc.health.Check(health_pb2.HealthCheckRequest(service="surge.v1.Nope"))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

            reflect = reflection_pb2_grpc.ServerReflectionStub(rpc.channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in reflect.ServerReflectionInfo(iter([ask])):
                names = {s.name for s in reply.list_services_response.service}
            assert names >= SERVICES | {"grpc.health.v1.Health"}

            # a message past SURGE_MAX_BODY_BYTES is refused by grpc before it is read whole
            big = pb.PublishRequest(room="chat:big", data='"' + "x" * 4096 + '"')
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc.rooms.Publish(big, metadata=auth("backend", role="service"))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # and so is metadata past SURGE_MAX_HEADER_BYTES
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc.orders.GetOrder(
                    pb.GetOrderRequest(id=1), metadata=(("x-pad", "y" * 65536),)
                )
            assert refused.value.code() in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNAVAILABLE,
            )
            # the server is unharmed
            order = await rpc.orders.GetOrder(pb.GetOrderRequest(id=1), metadata=auth("user1"))
            assert order.user_id == "user1"


async def test_rate_limit_as_resource_exhausted_with_retry_after(tmp_path: Path) -> None:
    with _embedded(tmp_path, SURGE_RATE_LIMIT_READ="2/2") as (server, address):
        async with stubs(address) as rpc:
            codes = []
            for _ in range(4):
                try:
                    await rpc.orders.GetOrder(pb.GetOrderRequest(id=1), metadata=auth("user1"))
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
                    last = error
            assert codes[:2] == [grpc.StatusCode.OK] * 2
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[2:]
            assert error_info(last).reason == "rate-limited"
            trailers = dict(last.trailing_metadata() or ())
            assert int(trailers["retry-after"]) >= 1
            # another caller has a bucket of its own
            await rpc.orders.GetOrder(pb.GetOrderRequest(id=2), metadata=auth("user2"))
        assert server.metric("grpc_refusals_total", status="429") >= 1


@contextmanager
def _frozen_redis(tmp_path: Path, **extra: str) -> Iterator[tuple[Server, str, OwnRedis]]:
    with own_redis(tmp_path) as redis:
        db = f"sqlite:///{tmp_path / 'surge.db'}"
        env = base_env(tmp_path, {"SURGE_DATABASE_URL": db, "SURGE_REDIS_URL": redis.url, **extra})
        run_cli(env, "db", "migrate")
        with serve_grpc(env, tmp_path) as (server, address):
            yield server, address, redis


async def test_deadlines_bound_the_work(tmp_path: Path) -> None:
    """A purchase waits on Redis; Redis hangs. The client's deadline bounds the call when
    it is shorter than the route's, the route's (2 s) when it is longer or absent."""
    with _frozen_redis(tmp_path, SURGE_GRPC_MAX_CALLS="3") as (server, address, redis):
        async with stubs(address) as rpc:
            sale = await rpc.sales.CreateSale(new_sale(10), metadata=admin())
            redis.freeze()
            try:

                async def buy(user: str, deadline: float | None) -> tuple[grpc.StatusCode, float]:
                    started = time.monotonic()
                    request = pb.PlaceOrderRequest(sale_id=sale.id, idempotency_key=user)
                    try:
                        await rpc.sales.PlaceOrder(request, metadata=auth(user), timeout=deadline)
                        return grpc.StatusCode.OK, time.monotonic() - started
                    except grpc.aio.AioRpcError as error:
                        return error.code(), time.monotonic() - started

                short = await buy("short", 0.3)
                assert short[0] == grpc.StatusCode.DEADLINE_EXCEEDED and short[1] < 1.0, short
                # no deadline: the route's own bounds the wait; SURGE_GRPC_MAX_CALLS=3: three
                # wait on Redis, a fourth is refused at once
                calls = (buy(f"u{n}", None) for n in range(4))
                results = await asyncio.gather(*calls)
                codes = sorted(code.name for code, _ in results)
                assert codes.count("RESOURCE_EXHAUSTED") >= 1, results
                for code, seconds in results:
                    assert code != grpc.StatusCode.OK and seconds < SLOWEST, results
                    assert code in (
                        grpc.StatusCode.UNAVAILABLE,  # the breaker, or Redis' command timeout
                        grpc.StatusCode.DEADLINE_EXCEEDED,  # the route's own deadline
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ), results
            finally:
                redis.thaw()
        cut = server.metric("grpc_refusals_total", status="504")
        cut += server.metric("grpc_refusals_total", status="499")
        assert cut >= 1  # the short call was given up on the server too
        assert server.metric("grpc_refusals_total", status="500") == 0


async def test_a_watch_started_just_after_a_change_catches_up(tmp_path: Path) -> None:
    """GET /sales/{id}'s view may be half a second old, and the change's update went out
    before the watch listened: the stream still comes to the true state by itself."""
    with _embedded(tmp_path) as (_server, address):
        async with stubs(address) as rpc:
            sale = await rpc.sales.CreateSale(new_sale(3), metadata=admin())
            await rpc.sales.GetSale(pb.GetSaleRequest(id=sale.id))  # the view, cached
            buy = pb.PlaceOrderRequest(sale_id=sale.id, idempotency_key="k")
            await rpc.sales.PlaceOrder(buy, metadata=auth("early"))
            await asyncio.sleep(0.3)  # the stock update is published, to nobody
            watch = rpc.sales.WatchSale(pb.WatchSaleRequest(id=sale.id), timeout=10)
            states = [await watch.read()]
            if states[0].remaining != 2:  # the view was stale: the recheck corrects it
                states.append(await asyncio.wait_for(watch.read(), 3))
            watch.cancel()
            assert [(s.remaining, s.state) for s in states][-1] == (2, "live"), states


async def test_watch_ends_with_its_sale_and_shutdown_is_graceful(tmp_path: Path) -> None:
    with _embedded(tmp_path, SURGE_SHUTDOWN_DELAY="1.0") as (server, address):
        async with stubs(address) as rpc:
            short = await rpc.sales.CreateSale(new_sale(5, seconds=1.5), metadata=admin())
            states = [s async for s in rpc.sales.WatchSale(pb.WatchSaleRequest(id=short.id))]
            assert [(s.remaining, s.state) for s in states] == [(5, "live"), (5, "ended")]

            long = await rpc.sales.CreateSale(new_sale(5), metadata=admin())
            watch = rpc.sales.WatchSale(pb.WatchSaleRequest(id=long.id))
            assert (await watch.read()).state == "live"
            server.process.send_signal(signal.SIGTERM)
            # draining: health says so at once (the signal reaches the loop within a
            # moment), and calls are still answered until intake stops (1 s later)
            seen = []
            for _ in range(16):
                answer = await rpc.health.Check(health_pb2.HealthCheckRequest(service=""))
                seen.append(answer.status)
                if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, seen
            order = await rpc.orders.GetOrder(pb.GetOrderRequest(id=1), metadata=auth("user1"))
            assert order.id == 1
            # the stream is told to watch again elsewhere
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(watch.read(), 10)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(ended.value).reason == "shutting-down"
        assert server.process.wait(timeout=20) == 0
        assert "stopped" in server.output()


async def test_paying_and_cancelling_over_grpc(tmp_path: Path) -> None:
    """PayOrder and CancelOrder: POST /orders/{id}/pay and /cancel, their rules and
    refusals (issue 19) as gRPC statuses."""
    with _embedded(tmp_path) as (_server, address):
        async with stubs(address) as rpc:
            sale = await rpc.sales.CreateSale(new_sale(2), metadata=admin())
            buy = pb.PlaceOrderRequest(sale_id=sale.id, idempotency_key="k")
            order = await rpc.sales.PlaceOrder(buy, metadata=auth("u"))
            assert order.status == "pending" and order.pay_by.seconds > 0

            pay = pb.PayOrderRequest(id=order.id, payment_ref="psp-9", idempotency_key="p")
            paid = await rpc.orders.PayOrder(pay, metadata=auth("u"))
            assert (paid.status, paid.payment_ref) == ("paid", "psp-9")
            assert paid.closed_at.seconds > 0
            assert await rpc.orders.PayOrder(pay, metadata=auth("u")) == paid  # the same again

            async def refused(call: object) -> tuple[str, str]:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call  # type: ignore[misc]
                return raised.value.code().name, error_info(raised.value).reason

            other_key = pb.PayOrderRequest(id=order.id, payment_ref="psp-9", idempotency_key="q")
            assert await refused(rpc.orders.PayOrder(other_key, metadata=auth("u"))) == (
                "FAILED_PRECONDITION",
                "order-paid",
            )
            no_key = pb.PayOrderRequest(id=order.id, payment_ref="psp-9")
            assert (await refused(rpc.orders.PayOrder(no_key, metadata=auth("u"))))[0] == (
                "INVALID_ARGUMENT"
            )
            no_ref = pb.PayOrderRequest(id=order.id, idempotency_key="r")
            assert await refused(rpc.orders.PayOrder(no_ref, metadata=auth("u"))) == (
                "INVALID_ARGUMENT",
                "invalid-payment",
            )
            assert await refused(rpc.orders.PayOrder(pay, metadata=auth("stranger"))) == (
                "NOT_FOUND",
                "order-not-found",
            )
            cancel = pb.CancelOrderRequest(id=order.id)
            assert await refused(rpc.orders.CancelOrder(cancel, metadata=auth("u"))) == (
                "FAILED_PRECONDITION",
                "order-paid",
            )
            cancelled = await rpc.orders.CancelOrder(cancel, metadata=admin())
            assert (cancelled.status, cancelled.payment_ref) == ("cancelled", "psp-9")
            assert await rpc.orders.CancelOrder(cancel, metadata=admin()) == cancelled
            await asyncio.sleep(0.6)  # GET /sales/{id}'s view is rebuilt twice a second
            assert (await rpc.sales.GetSale(pb.GetSaleRequest(id=sale.id))).remaining == 2
