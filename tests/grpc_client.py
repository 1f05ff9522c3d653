"""A grpcio client for the system tests of the gRPC face (proto/surge/v1/surge.proto):
a server with its gRPC port, the stubs on one channel, and the reading of a refusal."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2_grpc

from surge.auth import mint
from surge.v1 import surge_pb2 as pb
from surge.v1 import surge_pb2_grpc as pb_grpc
from tests.backends import free_port, wait_listening
from tests.server import SECRET, Server, serve

Metadata = tuple[tuple[str, str], ...]


@contextmanager
def serve_grpc(env: Mapping[str, str], tmp_path: Path, *args: str) -> Iterator[tuple[Server, str]]:
    """`surge serve` with its gRPC listener on a free port: the server and "host:port"."""
    port = free_port()
    with serve({**env, "SURGE_GRPC_PORT": str(port)}, tmp_path, *args) as server:
        wait_listening(port, 10, "surge's gRPC listener")
        yield server, f"127.0.0.1:{port}"


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.orders = pb_grpc.OrdersStub(channel)  # type: ignore[no-untyped-call]
        self.sales = pb_grpc.SalesStub(channel)  # type: ignore[no-untyped-call]
        self.rooms = pb_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
        self.health = health_pb2_grpc.HealthStub(channel)


@asynccontextmanager
async def stubs(address: str) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield Stubs(channel)


def auth(user: str, admin: bool = False, role: str = "") -> Metadata:
    return (("authorization", f"Bearer {mint(SECRET, user, admin=admin, role=role)}"),)


def admin() -> Metadata:
    return auth("root", admin=True)


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def new_sale(stock: int, seconds: float = 120, per_user_limit: int = 1) -> pb.CreateSaleRequest:
    now = dt.datetime.now(dt.UTC)
    return pb.CreateSaleRequest(
        name="grpc sale",
        stock=stock,
        per_user_limit=per_user_limit,
        starts_at=timestamp(now - dt.timedelta(seconds=1)),
        ends_at=timestamp(now + dt.timedelta(seconds=seconds)),
    )


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo a refusal carries in grpc-status-details-bin; it also
    checks the rich status agrees with the call's own code and message."""
    trailers = dict(error.trailing_metadata() or ())
    rich = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert rich.code == error.code().value[0]
    assert rich.message == error.details()
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert info.domain == "surge"
    assert trailers["surge-problem-type"] == info.metadata["type"] == f"/problems/{info.reason}"
    return info
