"""The gRPC face against a hostile client: what the outsider's attack found, kept found.

Raw HTTP/2 is written by hand here (a few frames, HPACK literals without indexing or
Huffman): no HTTP/2 library is needed to open streams that never send their message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from surge.v1 import surge_pb2 as pb
from tests.grpc_client import admin, auth, error_info, new_sale, serve_grpc, stubs, timestamp
from tests.server import Server, base_env, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0x0, 0x1, 0x4
END_STREAM, END_HEADERS = 0x1, 0x4


@contextmanager
def _embedded(tmp_path: Path, **extra: str) -> Iterator[tuple[Server, str]]:
    env = base_env(tmp_path, {"SURGE_DATABASE_URL": f"sqlite:///{tmp_path / 'surge.db'}", **extra})
    run_cli(env, "db", "seed", "--orders", "20", "--users", "5")
    with serve_grpc(env, tmp_path) as running:
        yield running


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream)
    return head + payload


def _literal(name: str, value: str | bytes) -> bytes:
    """An HPACK literal field without indexing, new name, no Huffman (short strings)."""
    raw = value if isinstance(value, bytes) else value.encode()
    return b"\x00" + bytes((len(name),)) + name.encode() + bytes((len(raw),)) + raw


def _call_headers(path: str, *extra: tuple[str, str | bytes]) -> bytes:
    fields = (
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "surge"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    )
    return b"".join(_literal(name, value) for name, value in fields)


def _raw_call(address: str, path: str, message: bytes, *extra: tuple[str, str | bytes]) -> bytes:
    """One call over a raw connection: the bytes the server answered within a second."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        data = b"\x00" + struct.pack(">I", len(message)) + message
        sock.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0)
            + _frame(HEADERS, END_HEADERS, 1, _call_headers(path, *extra))
            + _frame(DATA, END_STREAM, 1, data)
        )
        answer = b""
        sock.settimeout(0.2)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            answer += chunk
        return answer


def _half_open(address: str, streams: int, path: str) -> socket.socket:
    """A connection with `streams` calls whose HEADERS came and whose message never will."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    block = _call_headers(path)
    frames = [PREFACE, _frame(SETTINGS, 0, 0)]
    frames += [_frame(HEADERS, END_HEADERS, 1 + 2 * n, block) for n in range(streams)]
    sock.sendall(b"".join(frames))
    return sock


async def test_duplicate_authorization_is_refused(tmp_path: Path) -> None:
    """HTTP refuses a second Authorization (400 duplicate-header): which token counts must
    not be left to the reader, as a proxy in front may have checked the other one."""
    with _embedded(tmp_path) as (_server, address):
        async with stubs(address) as rpc:
            for metadata in (
                auth("user2") + auth("user1"),
                (("authorization", "Bearer forged"), *auth("user1")),
                auth("user1") * 10,
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await rpc.orders.GetOrder(pb.GetOrderRequest(id=1), metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                info = error_info(refused.value)
                assert info.reason == "duplicate-header"
                assert info.metadata["status"] == "400"
            # one is fine
            order = await rpc.orders.GetOrder(pb.GetOrderRequest(id=1), metadata=auth("user1"))
            assert order.user_id == "user1"


async def test_half_open_calls_do_not_hold_the_call_slots(tmp_path: Path) -> None:
    """Calls whose message never comes are ended after SURGE_HEADER_TIMEOUT, and streams
    (which may last) can take only half the process's call slots: unary calls keep room."""
    with _embedded(tmp_path, SURGE_GRPC_MAX_CALLS="40", SURGE_HEADER_TIMEOUT="1") as (
        _server,
        address,
    ):
        held = [
            _half_open(address, 30, "/surge.v1.Sales/GetSale"),
            _half_open(address, 30, "/surge.v1.Sales/WatchSale"),
        ]
        try:
            async with stubs(address) as rpc:
                await asyncio.sleep(0.3)  # the streams are in
                started = time.monotonic()
                while True:  # within the message timeout (1 s) and some slack
                    try:
                        sale = await rpc.sales.GetSale(pb.GetSaleRequest(id=1), timeout=2)
                        break
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        assert time.monotonic() - started < 3, "the half-open calls stay"
                        await asyncio.sleep(0.1)
                assert sale.id == 1

                # streams that get their message and last: at most half the slots
                live = await rpc.sales.CreateSale(new_sale(10), metadata=admin())
                watches = [rpc.sales.WatchSale(pb.WatchSaleRequest(id=live.id)) for _ in range(25)]
                outcomes = []
                for watch in watches:
                    try:
                        first = await asyncio.wait_for(watch.read(), 5)
                        outcomes.append(first.state)
                    except grpc.aio.AioRpcError as error:
                        outcomes.append(error.code().name)
                assert outcomes.count("live") == 20, outcomes
                assert outcomes.count("RESOURCE_EXHAUSTED") == 5, outcomes
                # the other half is the unary calls'
                for _ in range(3):
                    again = await rpc.sales.GetSale(pb.GetSaleRequest(id=live.id), timeout=2)
                    assert again.remaining == 10
                for watch in watches:
                    watch.cancel()
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/New_York"])
async def test_watch_sale_ends_with_its_sale_in_any_time_zone(tmp_path: Path, zone: str) -> None:
    """The sale's end is an instant: the server's local time zone must not move it."""
    with _embedded(tmp_path, TZ=zone) as (_server, address):
        async with stubs(address) as rpc:
            live = await rpc.sales.CreateSale(new_sale(5, seconds=120), metadata=admin())
            states = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for state in rpc.sales.WatchSale(
                    pb.WatchSaleRequest(id=live.id), timeout=1.5
                ):
                    states.append(state.state)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert states == ["live"]

            # a sale ending at the last second of year 9999 is watched as well
            now = dt.datetime.now(dt.UTC)
            far = pb.CreateSaleRequest(
                name="far",
                stock=1,
                starts_at=timestamp(now - dt.timedelta(seconds=1)),
                ends_at=timestamp(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
            )
            forever = await rpc.sales.CreateSale(far, metadata=admin())
            states = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for state in rpc.sales.WatchSale(
                    pb.WatchSaleRequest(id=forever.id), timeout=1.5
                ):
                    states.append(state.state)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert states == ["live"]


async def test_malformed_input_is_refused_without_noise(tmp_path: Path) -> None:
    """A message that is not the method's protobuf is INVALID_ARGUMENT (not UNKNOWN naming
    a Python exception), and bytes that are not UTF-8 in `authorization` are an invalid
    token: neither writes an error with a traceback to the log."""
    with _embedded(tmp_path) as (server, address):
        async with stubs(address) as rpc:
            for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f"):
                call = rpc.channel.unary_unary(
                    "/surge.v1.Sales/GetSale", response_deserializer=pb.Sale.FromString
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(garbage, timeout=5)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert error_info(refused.value).reason == "malformed-message"
                assert "DecodeError" not in (refused.value.details() or "")

            token = ("authorization", b"Bearer \x80\x81\xfe")
            order = b"\x08\x01"  # GetOrderRequest(id=1)
            answer = await asyncio.to_thread(
                _raw_call, address, "/surge.v1.Orders/GetOrder", order, token
            )
            assert answer  # a status, not a hang
            assert b"user1" not in answer

            # the server is unharmed, and said nothing alarming
            sale = await rpc.sales.GetSale(pb.GetSaleRequest(id=1), timeout=5)
            assert sale.id == 1
        log = server.output()
        assert "Traceback" not in log, log[-3000:]
        assert "Invalid encoding" not in log
        assert "Unexpected [DecodeError]" not in log
