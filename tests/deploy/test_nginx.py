"""deploy/nginx/surge.conf, live: Debian's nginx in front of two Surge processes (two
ports standing for two pods, sharing MariaDB and Redis). The configuration must pass
`nginx -t`, proxy the API and WebSocket handshakes, and keep a rolling restart invisible:
each process in turn gets SIGTERM, drains, and starts again, while clients send order
queries through nginx; not one request may fail."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.backends import Backend, free_port, make_backend
from tests.load import Hammer, hammer
from tests.nginx import running_nginx
from tests.server import Server, base_env, run_cli, serve
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow

USERS = 20


def _env(backend: Backend, directory: Path) -> dict[str, str]:
    env = base_env(directory, backend.env())
    env.update(
        {
            "SURGE_TRUSTED_PROXIES": "127.0.0.1/32",
            "SURGE_SHUTDOWN_DELAY": "0.5",  # nginx stops sending new connections at once
            "SURGE_DRAIN_TIMEOUT": "3",
        }
    )
    return env


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    with make_backend("mariadb+redis", tmp_path) as made:
        yield made


def _order_targets() -> list[tuple[str, dict[str, str]]]:
    return [(f"/orders/{i}", bearer(f"user{(i - 1) % USERS + 1}")) for i in range(1, 41)]


def test_rolling_restart_behind_nginx_loses_no_request(backend: Backend, tmp_path: Path) -> None:
    env = _env(backend, tmp_path)
    run_cli(env, "db", "migrate")
    run_cli(env, "db", "seed", "--orders", "200", "--users", str(USERS))
    ports = [free_port(), free_port()]
    listen = free_port()
    with ExitStack() as stack:
        servers: list[Server] = [
            stack.enter_context(serve(env, tmp_path, "--port", str(port))) for port in ports
        ]
        base = stack.enter_context(
            running_nginx(tmp_path, listen, [f"127.0.0.1:{p}" for p in ports])
        )
        first = httpx.get(f"{base}/orders/1", headers=bearer("user1"), timeout=5)
        assert first.status_code == 200, first.text
        assert httpx.get(f"{base}/debug/tasks", timeout=5).status_code == 404

        stop = threading.Event()
        result: dict[str, Hammer] = {}

        def load() -> None:
            async def run() -> None:
                done = asyncio.Event()

                async def watch() -> None:
                    await asyncio.to_thread(stop.wait)  # the test's thread says when
                    done.set()

                watcher = asyncio.create_task(watch())
                result["load"] = await hammer("127.0.0.1", listen, _order_targets(), 16, done)
                await watcher

            asyncio.run(run())

        loader = threading.Thread(target=load)
        loader.start()
        try:
            time.sleep(1.0)
            for i, port in enumerate(ports):  # one "pod" at a time, as a rollout does
                assert servers[i].stop() == 0  # SIGTERM: readiness off, drain, exit 0
                servers[i] = stack.enter_context(serve(env, tmp_path, "--port", str(port)))
                time.sleep(1.0)  # it takes traffic again before the next one goes
        finally:
            stop.set()
            loader.join(timeout=30)
        load_result = result["load"]
        assert load_result.failures == [], load_result.failures[:5]
        assert set(load_result.answered.statuses) == {200}, load_result.answered.statuses
        assert load_result.answered.statuses[200] > 500  # the load really ran
        assert load_result.refused == 0


def test_websocket_handshake_through_nginx(backend: Backend, tmp_path: Path) -> None:
    env = _env(backend, tmp_path)
    run_cli(env, "db", "migrate")
    port, listen = free_port(), free_port()
    with (
        serve(env, tmp_path, "--port", str(port)),
        running_nginx(tmp_path, listen, [f"127.0.0.1:{port}"] * 2),
    ):
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
            token = bearer("alice")["Authorization"].removeprefix("Bearer ")
            sock.sendall(
                (
                    f"GET /ws?token={token} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                ).encode()
            )
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # the accept key of RFC 6455's example


class _Subscriber:
    """A chat client through nginx that, whenever its connection ends, reconnects and
    resumes with `since` (docs/realtime.md): what a browser tab does across a rollout."""

    def __init__(self, url: str, room: str) -> None:
        self.url = url
        self.room = room
        self.seqs: list[int] = []
        self.closes: list[int | None] = []

    async def run(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        while not stop.is_set():
            try:
                async with connect(self.url, open_timeout=5, close_timeout=2) as ws:
                    since = {"since": self.seqs[-1]} if self.seqs else {}
                    await ws.send(json.dumps({"op": "subscribe", "room": self.room, **since}))
                    while not stop.is_set():
                        try:
                            frame = await asyncio.wait_for(ws.recv(), 0.2)
                        except TimeoutError:
                            continue
                        message = json.loads(frame)
                        if message["op"] == "message":
                            self.seqs.append(int(message["seq"]))
                        elif message["op"] == "error":
                            raise AssertionError(f"hub error: {message}")
            except ConnectionClosed as closed:
                self.closes.append(closed.rcvd.code if closed.rcvd else None)
            except OSError:  # nginx had no process to give it for a moment
                self.closes.append(None)
                await asyncio.sleep(0.1)


async def _publish_until(url: str, room: str, stop: asyncio.Event) -> int:
    """Publishes through nginx, reconnecting when its process goes; the last acked seq."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    last, n = 0, 0
    while not stop.is_set():
        try:
            async with connect(url, open_timeout=5, close_timeout=2) as ws:
                while not stop.is_set():
                    n += 1
                    await ws.send(
                        json.dumps({"op": "publish", "room": room, "data": {"n": n}, "id": n})
                    )
                    while True:
                        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        if answer["op"] == "ack":
                            last = max(last, int(answer["seq"]))
                            break
                        assert answer["op"] == "message", answer
                    await asyncio.sleep(0.03)  # ~30 a second: under the publish limit
        except (ConnectionClosed, OSError, TimeoutError):
            await asyncio.sleep(0.1)
    return last


def test_websocket_clients_resume_across_a_rolling_restart(
    backend: Backend, tmp_path: Path
) -> None:
    """Each process in turn is restarted under 6 subscribers and a publisher, all through
    nginx: the subscribers of the process that goes get 1001, reconnect (nginx gives them
    the other one) and resume with `since`; each sees every message exactly once, in
    order."""
    env = _env(backend, tmp_path)
    run_cli(env, "db", "migrate")
    ports, listen = [free_port(), free_port()], free_port()
    room = "chat:rollout"
    with ExitStack() as stack:
        servers = [stack.enter_context(serve(env, tmp_path, "--port", str(p))) for p in ports]
        stack.enter_context(running_nginx(tmp_path, listen, [f"127.0.0.1:{p}" for p in ports]))
        url = f"ws://127.0.0.1:{listen}/ws?token={bearer('viewer')['Authorization'][7:]}"
        publisher_url = f"ws://127.0.0.1:{listen}/ws?token={bearer('author')['Authorization'][7:]}"
        subscribers = [_Subscriber(url, room) for _ in range(6)]
        stop_subscribers, stop_publisher = threading.Event(), threading.Event()
        outcome: dict[str, int] = {}

        def clients() -> None:
            async def run() -> None:
                done_sub, done_pub = asyncio.Event(), asyncio.Event()

                async def relay(flag: threading.Event, event: asyncio.Event) -> None:
                    await asyncio.to_thread(flag.wait)
                    event.set()

                tasks = [asyncio.create_task(s.run(done_sub)) for s in subscribers]
                await asyncio.sleep(0.5)  # subscribed before the first message
                relays = [
                    asyncio.create_task(relay(stop_subscribers, done_sub)),
                    asyncio.create_task(relay(stop_publisher, done_pub)),
                ]
                outcome["last"] = await _publish_until(publisher_url, room, done_pub)
                await asyncio.gather(*tasks, *relays)

            asyncio.run(run())

        thread = threading.Thread(target=clients)
        thread.start()
        try:
            time.sleep(1.5)
            for i, port in enumerate(ports):
                assert servers[i].stop() == 0
                servers[i] = stack.enter_context(serve(env, tmp_path, "--port", str(port)))
                time.sleep(1.5)
        finally:
            stop_publisher.set()
            time.sleep(1.5)  # the last messages reach every subscriber
            stop_subscribers.set()
            thread.join(timeout=30)
    last = outcome["last"]
    assert last > 50, last
    for s in subscribers:
        assert s.seqs == list(range(1, last + 1)), (s.seqs[:5], len(s.seqs), last, s.closes)
    codes = [code for s in subscribers for code in s.closes]
    assert 1001 in codes, codes  # those on a process that went were told it was going
    assert set(codes) <= {1001, None}, codes
