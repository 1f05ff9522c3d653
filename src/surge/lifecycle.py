"""Process lifecycle: start, serve, and the graceful shutdown of docs/operations.md.

SIGTERM: readiness turns 503 at once while requests are still served (with
`Connection: close`) for `shutdown_delay`, so load balancers stop sending; then intake
stops (connections the kernel had already accepted are still served), in-flight requests
get `drain_timeout` to finish, resources close in reverse order, exit 0. SIGINT skips the
delay. A second signal exits at once.

With `workers > 1` a supervisor binds the socket, forks the workers (they share the
listener), forwards signals and restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from surge import logs
from surge.app import App
from surge.config import Settings
from surge.http.listener import HttpServer, bind_socket
from surge.http.state import HttpLimits, ServerState, open_files_budget
from surge.metrics import Metrics, collectors

if TYPE_CHECKING:
    from surge.rpc.server import GrpcServer

log = logging.getLogger("surge.lifecycle")

EXIT_FORCED = 3
INTERNAL_CONNECTIONS = 100  # scrapers and probes on the internal listener, at once
PR_SET_PDEATHSIG = 1


def stop_on_signals() -> tuple[asyncio.Event, list[int]]:
    """SIGTERM or SIGINT sets the event (the signals received are in the list); a second
    signal exits at once (not even waiting for the log writer: it may be what hangs)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            log.warning("second signal: exiting at once")
            os._exit(EXIT_FORCED)
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop, received


async def serve(
    settings: Settings, sock: socket.socket, internal_sock: socket.socket, metrics: Metrics
) -> int:
    app = App(settings, metrics)
    await app.start()
    limits = http_limits(settings)
    # the internal listener (metrics, debug, probes) first: it must show a server that
    # is stuck starting; it shares no rate limits or shedding with the API
    # its own few connections, kept out of the open-files budget's reach (part of the
    # reserve: surge.http.state.RESERVED_FILES), so probes get through a full process
    internal_limits = dataclasses.replace(
        limits, max_connections=INTERNAL_CONNECTIONS, max_per_client=INTERNAL_CONNECTIONS
    )
    internal_state = ServerState(app.internal_router, app.metrics.observe_request, internal_limits)
    internal = HttpServer(internal_state, internal_sock)
    await internal.start()
    state = ServerState(
        app.router,
        app.metrics.observe_request,
        limits,
        app.limiter,
        app.shedder,
        settings.access_log,
        # one open-files budget for the public, internal and upgraded connections
        lambda: len(internal_state.connections) + len(app.hub.connections),
    )
    server = HttpServer(state, sock)
    await server.start()
    rpc = await start_grpc(settings, app) if settings.grpc_port else None
    tune_gc()
    collectors.http_server(app.metrics, state, internal_state)

    stop, received = stop_on_signals()
    await stop.wait()
    log.info("pid %d: %s received: draining", os.getpid(), signal.Signals(received[0]).name)
    app.draining = True  # readiness -> 503
    state.closing = True  # answers carry Connection: close
    if rpc is not None:
        await rpc.drain()  # gRPC health -> NOT_SERVING
    if received[0] == signal.SIGTERM and settings.shutdown_delay > 0:
        await asyncio.sleep(settings.shutdown_delay)
    await server.stop_intake()
    rpc_stopped = None if rpc is None else asyncio.create_task(rpc.stop(settings.drain_timeout))
    finished = await server.drain(settings.drain_timeout)
    if rpc_stopped is not None:
        await rpc_stopped
    if not finished:
        log.warning("drain timeout: %d requests cut off", state.in_flight)
    await internal.stop_intake()  # probes and scrapes are answered until the API is done
    await internal.drain(1.0)
    await app.close()
    log.info("pid %d: stopped", os.getpid())
    return 0


async def start_grpc(settings: Settings, app: App) -> GrpcServer:
    """The gRPC face on SURGE_GRPC_PORT, calling the routes of `app` (surge.rpc)."""
    from surge.rpc.bridge import Bridge  # grpc is loaded only where it serves: not
    from surge.rpc.server import GrpcLimits, GrpcServer, GrpcStats  # in the supervisor

    stats = GrpcStats()
    bridge = Bridge(app.router, app.limiter, app.shedder, stats.observe)
    limits = GrpcLimits(
        host=settings.host,
        port=settings.grpc_port,
        max_calls=settings.grpc_max_calls,
        max_message=settings.max_body_bytes,
        max_metadata=settings.max_header_bytes,
        max_connections=settings.max_connections,
        handshake_timeout=settings.header_timeout,
        message_timeout=settings.header_timeout,
    )
    rpc = GrpcServer(bridge, app.hub.watch, limits)
    await rpc.start()
    collectors.grpc(app.metrics, stats)
    return rpc


def http_limits(settings: Settings) -> HttpLimits:
    """The HTTP engine's bounds from the settings (the engine itself knows no config)."""
    return HttpLimits(
        max_body=settings.max_body_bytes,
        max_header=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_min_rate=settings.body_min_rate,
        send_timeout=settings.send_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=settings.max_connections,
        max_per_client=settings.max_connections_per_client,
        trusted=settings.trusted_networks,
        max_open=open_files_budget(),
    )


def run_process(
    settings: Settings,
    sockets: tuple[socket.socket, socket.socket],
    worker: int = 0,
    share_dir: Path | None = None,
) -> int:
    sock, internal = sockets
    return uvloop.run(serve(settings, sock, internal, Metrics(str(worker), share_dir)))


def tune_gc() -> None:
    """Keeps full collections rare and short.

    Everything alive after start-up (modules, the app) is frozen out of the collector's
    sight, and the young-generation threshold is raised: a request allocates a handful of
    short-lived containers that reference counting frees, so the default threshold (700)
    made the collector run hundreds of times a second and a full pass stall the loop for
    60-90 ms under load (measured).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run(settings: Settings) -> int:
    """Serves until a signal; returns the exit code."""
    sock = bind_socket(settings.host, settings.port)
    internal = bind_socket(settings.internal_host or settings.host, settings.internal_port)
    host, port = sock.getsockname()[:2]
    internal_host, internal_port = internal.getsockname()[:2]
    log.info(
        "internal listener on http://%s:%d (metrics, debug, probes: keep it private)",
        internal_host,
        internal_port,
    )
    log.info(
        "surge listening on http://%s:%d (workers=%d, database=%s, cache=%s)",
        host,
        port,
        settings.workers,
        settings.database_url.split(":", 1)[0],
        "redis" if settings.redis_url else "in-process",
    )
    if settings.grpc_port:
        if not _port_free(settings.host, settings.grpc_port):
            # the workers bind it with SO_REUSEPORT, which would share it silently with
            # another server's: it must be free before they start
            log.error(
                "SURGE_GRPC_PORT %d on %s is in use (another port, or 0 for no gRPC)",
                settings.grpc_port,
                settings.host,
            )
            return 2
        log.info("gRPC API on %s:%d", settings.host, settings.grpc_port)
    if settings.workers == 1:
        return run_process(settings, (sock, internal))
    return Supervisor(settings, (sock, internal)).run()


class Supervisor:
    """Forks the workers after binding, so they share one listening socket."""

    RESTART_BACKOFF = 1.0

    def __init__(self, settings: Settings, sockets: tuple[socket.socket, socket.socket]) -> None:
        self.settings = settings
        self.sockets = sockets
        self.children: dict[int, int] = {}  # pid -> slot
        # where workers leave metric snapshots for each other (see surge.metrics)
        self.share_dir = Path(tempfile.mkdtemp(prefix="surge-metrics-"))
        self.stopping: int | None = None

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_process(self.settings, self.sockets, slot, self.share_dir)
            except BaseException:
                log.exception("worker %d crashed", slot)
            finally:
                logs.shutdown()  # os._exit skips atexit: write what is queued first
                os._exit(code)
        self.children[pid] = slot

    def run(self) -> int:
        def forward(signum: int, _frame: object) -> None:
            if self.stopping is not None:
                log.warning("second signal: stopping workers at once")
                for pid in self.children:
                    _kill(pid, signal.SIGKILL)
                os._exit(EXIT_FORCED)
            self.stopping = signum
            for pid in self.children:
                _kill(pid, signum)
            # The workers drain the shared listeners and close them; our copies would keep
            # them open, queueing connections nobody accepts (reset at our exit).
            for sock in self.sockets:
                sock.close()

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for slot in range(self.settings.workers):
            self._spawn(slot)
        failed = False
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in self.children:
                continue
            slot = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping is None:
                log.error("worker %d (pid %d) exited with %d; restarting", slot, pid, code)
                time.sleep(self.RESTART_BACKOFF)
                if self.stopping is None:
                    self._spawn(slot)
            elif code != 0:
                failed = True
        for sock in self.sockets:
            sock.close()
        shutil.rmtree(self.share_dir, ignore_errors=True)
        return 1 if failed else 0


def _port_free(host: str, port: int) -> bool:
    """Nothing listens on `port` (bound without SO_REUSEPORT, so any listener refuses it)."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.bind((host, port))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _die_with_parent() -> None:
    """Asks Linux to SIGTERM this worker if the supervisor dies (even by SIGKILL), so no
    orphan keeps serving on the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
