"""WebSocket test clients for the hub's system tests: a real client (websockets) with
helpers to send ops and read answers, and a raw socket for clients that misbehave."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from surge.auth import mint
from tests.backends import make_backend
from tests.server import SECRET, Server, base_env, serve


@contextmanager
def embedded(tmp_path: Path, **settings: str) -> Iterator[Server]:
    with make_backend("embedded", tmp_path) as backend:
        env = base_env(tmp_path, {**backend.env(), **_env(settings)})
        with serve(env, tmp_path) as server:
            yield server


def _env(settings: dict[str, str]) -> dict[str, str]:
    return {f"SURGE_{k.upper()}": v for k, v in settings.items()}


def ws_url(server: Server, user: str | None = None) -> str:
    url = server.url.replace("http://", "ws://") + "/ws"
    return url if user is None else f"{url}?token={mint(SECRET, user)}"


@asynccontextmanager
async def client(server: Server, user: str | None = None) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(server, user), open_timeout=5, close_timeout=2) as ws:
        yield ws


_early: dict[int, list[dict[str, Any]]] = {}  # room messages that came before an answer


async def receive(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    early = _early.get(id(ws))
    if early:
        return early.pop(0)
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
    return message


async def op(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    """Sends one op and returns its answer; room messages that arrive first (a publisher
    is a subscriber too) are kept for `receive`."""
    await ws.send(json.dumps(message))
    while True:
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5.0))
        if answer["op"] != "message":
            return answer
        _early.setdefault(id(ws), []).append(answer)


async def nothing_more(ws: ClientConnection, within: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), within)


async def metric_reaches(
    server: Server, name: str, reached: Callable[[float], bool], tries: int = 100
) -> float:
    """Polls /metrics every 0.1 s until `reached(value)` or `tries` run out; the last
    value (the caller asserts on it)."""
    value = server.metric(name)
    for _ in range(tries):
        if reached(value):
            break
        await asyncio.sleep(0.1)
        value = server.metric(name)
    return value


def raw_upgrade(server: Server, room: str) -> socket.socket:
    """A client that completes the handshake and subscribes, then never reads again."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    payload = json.dumps({"op": "subscribe", "room": room}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def send_masked(sock: socket.socket, payload: bytes) -> None:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    with contextlib.suppress(OSError):
        sock.sendall(head + mask + masked)
