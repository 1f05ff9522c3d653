"""The gRPC listener of one server process: the services, grpc.health.v1 and server
reflection on grpc.aio's server, bounded like the HTTP engine, drained with it.

Each worker process binds the port itself with SO_REUSEPORT (grpc's default on Linux):
the kernel spreads connections over them as it spreads HTTP ones over the shared socket.
grpc must not be started before the supervisor forks (its threads do not survive a fork),
so only workers import this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from surge.ground.histogram import Histogram
from surge.rpc.bridge import Bridge
from surge.rpc.guard import CallGuard
from surge.rpc.services import Calls, Orders, Rooms, Sales, Watch
from surge.v1 import surge_pb2 as pb
from surge.v1 import surge_pb2_grpc as pb_grpc

log = logging.getLogger("surge.grpc")

SERVICES = tuple(f"surge.v1.{name}" for name in ("Orders", "Sales", "Rooms"))


class _QuietUndecodable(logging.Filter):
    """grpc logs an error with a traceback for each metadata value that is not UTF-8 (and
    passes the bytes on): any client could fill the log with them. The call itself is
    answered as usual (an `authorization` of such bytes is an invalid token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid encoding on")


logging.getLogger("grpc._cython.cygrpc").addFilter(_QuietUndecodable())


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    host: str
    port: int
    max_calls: int  # calls in progress at once in this process; past it RESOURCE_EXHAUSTED
    max_message: int  # bytes of a request message (the HTTP body limit)
    max_metadata: int  # bytes of a call's metadata (the HTTP header limit)
    max_connections: int  # connections open at once in this process
    handshake_timeout: float  # seconds for a new connection's HTTP/2 preface
    # seconds for a call's request message after its HEADERS (surge.rpc.guard)
    message_timeout: float
    # seconds a connection without calls stays open: longer than HTTP's keep-alive, since
    # a gRPC client keeps one channel for its life (the connection bound holds regardless)
    idle_timeout: float = 300.0


class GrpcStats:
    """The metrics of the gRPC face (surge.metrics.collectors.grpc)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # by method
        self.refusals: dict[str, int] = {}  # by the HTTP status the refusal stands for
        self.seconds = Histogram()

    def observe(self, rpc: str, status: int, seconds: float) -> None:
        self.calls[rpc] = self.calls.get(rpc, 0) + 1
        if status >= 400:
            key = str(status)
            self.refusals[key] = self.refusals.get(key, 0) + 1
        self.seconds.observe(seconds)


class GrpcServer:
    def __init__(self, bridge: Bridge, watch: Watch, limits: GrpcLimits) -> None:
        self._limits = limits
        self._calls = Calls(bridge)
        self._health = health.aio.HealthServicer()
        # streams, which may last, get half the call slots: unary calls keep the rest
        self.guard = CallGuard(limits.message_timeout, max(1, limits.max_calls // 2))
        self._server = grpc.aio.server(
            interceptors=[self.guard],
            maximum_concurrent_rpcs=limits.max_calls,
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", limits.max_message),
                ("grpc.max_metadata_size", limits.max_metadata),
                ("grpc.max_concurrent_streams", 100),  # per connection
                ("grpc.max_allowed_incoming_connections", limits.max_connections),
                ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout * 1000)),
                ("grpc.max_connection_idle_ms", int(limits.idle_timeout * 1000)),
            ],
        )
        # protoc's grpc plugin writes these without annotations
        pb_grpc.add_OrdersServicer_to_server(Orders(self._calls), self._server)  # type: ignore[no-untyped-call]
        pb_grpc.add_SalesServicer_to_server(Sales(self._calls, watch), self._server)  # type: ignore[no-untyped-call]
        pb_grpc.add_RoomsServicer_to_server(Rooms(self._calls), self._server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = (
            *(pb.DESCRIPTOR.services_by_name[n.rsplit(".", 1)[1]].full_name for n in SERVICES),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self._server)
        self.port = 0

    async def start(self) -> int:
        host = self._limits.host
        address = f"[{host}]:{self._limits.port}" if ":" in host else f"{host}:{self._limits.port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"gRPC: cannot listen on {address}: {exc}") from None
        await self._server.start()
        for service in ("", *SERVICES):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC listening on %s:%d", host, self.port)
        return self.port

    async def drain(self) -> None:
        """Health turns NOT_SERVING at once (as readiness turns 503); calls go on."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """No new calls; streams are told to watch again elsewhere; calls in progress get
        `grace` seconds, then are cancelled."""
        self._calls.closing.set()
        await self._server.stop(grace)
