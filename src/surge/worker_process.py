"""`surge worker`: a process that runs the side work, and the dead-letter commands.

SIGTERM or SIGINT: readiness turns 503, the relay and the consumers stop taking work,
events in flight get SURGE_DRAIN_TIMEOUT to finish and the rest are handed back to the
stream (another worker takes them at once), then exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import UTC, datetime

from surge.api import ops
from surge.app import backend_options, side_worker
from surge.backends import open_room_publisher, open_store, open_stream
from surge.config import Settings
from surge.ground.interfaces import Probe
from surge.http.listener import HttpServer, bind_socket
from surge.http.router import Router
from surge.http.state import HttpLimits, ServerState
from surge.lifecycle import stop_on_signals
from surge.metrics import Metrics, collectors

log = logging.getLogger("surge.worker")

REPLAY_ALL_MAX = 100_000  # dead letters one `replay --all` takes (run it again for more)


async def run_worker(settings: Settings) -> int:
    metrics = Metrics()
    stop, received = stop_on_signals()

    async with contextlib.AsyncExitStack() as stack:
        options = backend_options(settings)
        store = open_store(options, stack, pool_size=4)
        stream = await open_stream(options, stack)
        notify = open_room_publisher(options, stack, settings.ws_history)
        worker = side_worker(settings, store, stream, notify)
        collectors.worker(metrics, worker)
        server = None
        if settings.worker_port:
            # both required: a worker that cannot reach either cannot do any of its work
            probes: dict[str, Probe] = {"database": store.ping, "stream": worker.probe_stream}
            server = await _ops_server(settings, metrics, probes, stop)
        await worker.start()
        await stop.wait()
        log.info("pid %d: %s received: stopping", os.getpid(), signal.Signals(received[0]).name)
        await worker.stop()
        if server is not None:
            await server.stop_intake()
            await server.drain(1.0)
    log.info("pid %d: stopped", os.getpid())
    return 0


async def _ops_server(
    settings: Settings, metrics: Metrics, probes: dict[str, Probe], stop: asyncio.Event
) -> HttpServer:
    router = Router()
    readiness = ops.Readiness(probes, stop.is_set, frozenset(probes))
    ops.add_probe_routes(router, metrics, readiness)
    state = ServerState(router, metrics.observe_request, HttpLimits(max_body=4096))
    server = HttpServer(state, bind_socket(settings.host, settings.worker_port))
    await server.start()
    log.info("worker probes and metrics on http://%s:%d", settings.host, settings.worker_port)
    return server


async def list_dead_letters(settings: Settings, limit: int) -> list[str]:
    """One line per dead letter: its id, group, attempts, when, the error, the event."""
    async with contextlib.AsyncExitStack() as stack:
        stream = await open_stream(backend_options(settings), stack)
        letters = await stream.dead_letters(limit)
    return [
        f"{d.entry}\t{d.group}\t{d.attempts} attempts\t"
        f"{datetime.fromtimestamp(d.buried, UTC):%Y-%m-%dT%H:%M:%SZ}\t{d.error}\t"
        f"event {d.event.id} {d.event.topic} {d.event.payload.decode(errors='replace')}"
        for d in letters
    ]


async def replay_dead_letters(settings: Settings, entries: list[str], everything: bool) -> int:
    """Puts dead letters back on the stream, each for the group that gave up on it. With
    `everything`, the letters there are now, once each (one that fails again is buried
    again and stays there for the next replay)."""
    async with contextlib.AsyncExitStack() as stack:
        stream = await open_stream(backend_options(settings), stack)
        if everything:
            entries = [d.entry for d in await stream.dead_letters(REPLAY_ALL_MAX)]
        return await stream.replay(entries)
