"""The listening socket and the lifetime of one process's connections: start, stop
intake without dropping what the kernel accepted, drain."""

from __future__ import annotations

import asyncio
import socket

from surge.http.server import HttpProtocol
from surge.http.state import ServerState


def bind_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """Binds the listening socket; done once before workers fork, so they share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """Owns the listener and the connections of one process."""

    def __init__(self, state: ServerState, sock: socket.socket) -> None:
        self.state = state
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # asyncio closes the socket it serves on; give it a duplicate so the original stays
        # open for the drain (see stop_intake).
        self._server = await loop.create_server(
            lambda: HttpProtocol(self.state), sock=self._sock.dup(), backlog=4096
        )
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        self.state.tick()
        now = self.state.now
        for conn in list(self.state.connections):
            conn.sweep(now)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + 1.0, self._schedule_tick)

    async def stop_intake(self) -> None:
        """Stops accepting, then serves every connection the kernel had already accepted."""
        state = self.state
        state.closing = True
        state.stopped = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        while True:
            try:
                accepted, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            await loop.connect_accepted_socket(lambda: HttpProtocol(state), accepted)
        self._sock.close()
        for conn in list(state.connections):
            conn.close_if_idle()

    async def drain(self, grace: float) -> bool:
        """Waits until every connection has been answered and closed (each closes after its
        answer now); returns False if `grace` ran out first and the rest were cut off."""
        state = self.state
        try:
            async with asyncio.timeout(grace):
                # re-check after each wake-up: a connection accepted just before intake
                # stopped may join after the set was momentarily empty
                while state.connections:
                    state.drained.clear()
                    await state.drained.wait()
            return True
        except TimeoutError:
            for conn in list(state.connections):
                conn.abort()
            return False
        finally:
            if self._timer is not None:
                self._timer.cancel()
