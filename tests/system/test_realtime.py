"""The WebSocket hub against a real server process, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from surge.auth import mint
from tests.backends import make_backend
from tests.server import SECRET, Server, base_env, run_cli, serve

pytestmark = pytest.mark.anyio


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


async def test_rooms_are_isolated_and_publishers_acknowledged(tmp_path: Path) -> None:
    with embedded(tmp_path) as server:
        async with client(server, "alice") as alice, client(server) as bob, client(server) as eve:
            assert await op(alice, op="subscribe", room="chat:a", id=1) == {
                "op": "ack",
                "id": 1,
                "room": "chat:a",
            }
            await op(bob, op="subscribe", room="chat:a", id="x")
            await op(eve, op="subscribe", room="chat:b", id=2)
            ack = await op(alice, op="publish", room="chat:a", data={"text": "hi"}, id=3)
            assert ack == {"op": "ack", "id": 3, "room": "chat:a", "seq": 1}
            expected = {"op": "message", "room": "chat:a", "seq": 1, "data": {"text": "hi"}}
            assert await receive(alice) == expected  # the publisher is a subscriber too
            assert await receive(bob) == expected
            await nothing_more(eve)
            assert (await op(bob, op="unsubscribe", room="chat:a", id=4))["op"] == "ack"
            await op(alice, op="publish", room="chat:a", data=2, id=5)
            assert (await receive(alice))["seq"] == 2
            await nothing_more(bob)


async def test_bad_input_gets_error_frames_and_the_connection_stays(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_max_rooms="2", ws_publish_rate="3") as server:
        async with client(server) as anonymous, client(server, "carol") as carol:
            cases = [
                ("not json", "bad-json"),
                ("[1, 2]", "bad-message"),
                (json.dumps({"op": "dance", "room": "chat:a", "id": 1}), "bad-op"),
                (json.dumps({"op": "subscribe", "room": "lobby", "id": 1}), "bad-room"),
                (json.dumps({"op": "subscribe", "room": "chat:" + "x" * 65}), "bad-room"),
                (json.dumps({"op": "subscribe", "room": "chat:a", "since": -1}), "bad-message"),
                (json.dumps({"op": "publish", "room": "chat:a", "id": 1}), "bad-message"),
                (json.dumps({"op": "publish", "room": "chat:a", "data": 1}), "unauthorized"),
            ]
            for frame, code in cases:
                await anonymous.send(frame)
                answer = await receive(anonymous)
                assert answer["op"] == "error" and answer["code"] == code, (frame, answer)
            await anonymous.send(b"\x00binary")
            assert (await receive(anonymous))["code"] == "bad-frame"
            refused = await op(carol, op="publish", room="sale:1", data={}, id=9)
            assert (refused["code"], refused["id"]) == ("forbidden", 9)
            for room in ("chat:1", "chat:2"):
                assert (await op(carol, op="subscribe", room=room))["op"] == "ack"
            assert (await op(carol, op="subscribe", room="chat:3"))["code"] == "too-many-rooms"
            answers = [await op(carol, op="publish", room="chat:1", data=i) for i in range(5)]
            assert [a["op"] for a in answers].count("ack") == 3  # the burst of 3
            assert answers[-1]["code"] == "rate-limited"
            # still open and working
            assert (await op(anonymous, op="subscribe", room="chat:ok", id=7))["op"] == "ack"


async def test_oversized_message_closes_1009(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_max_message="1000") as server:
        async with client(server, "dave") as dave:
            await dave.send(json.dumps({"op": "publish", "room": "chat:a", "data": "x" * 2000}))
            with pytest.raises(ConnectionClosed) as closed:
                await receive(dave)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_handshake_refusals_are_problems(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_max_connections="2", ws_origins="https://shop.example") as server:
        http = httpx.AsyncClient(base_url=server.url)
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
        good = {**upgrade, "Sec-WebSocket-Key": key, "Origin": "https://shop.example"}
        cases = [
            ({}, 426, "upgrade-required"),
            ({**good, "Sec-WebSocket-Version": "8"}, 426, "websocket-version"),
            ({**good, "Sec-WebSocket-Key": "short"}, 400, "bad-websocket-key"),
            ({**good, "Origin": "https://evil.example"}, 403, "origin-not-allowed"),
            ({**good, "Authorization": "Bearer nonsense"}, 401, "unauthorized"),
        ]
        for headers, status, kind in cases:
            answer = await http.get("/ws", headers=headers)
            assert answer.status_code == status, (headers, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["type"] == f"/problems/{kind}"
        origin = {"origin": "https://shop.example"}
        async with (
            connect(ws_url(server), additional_headers=origin),
            connect(ws_url(server), additional_headers=origin),
        ):
            answer = await http.get("/ws", headers=good)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.json()["type"] == "/problems/too-many-connections"
            assert server.metric("ws_connections") == 2
        await http.aclose()


async def test_history_resume_and_resync(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_history="3") as server:
        async with client(server, "erin") as erin:
            for i in range(1, 6):
                await op(erin, op="publish", room="chat:h", data=i)
        async with client(server) as late:
            ack = await op(late, op="subscribe", room="chat:h", since=3, id=1)
            assert ack == {"op": "ack", "id": 1, "room": "chat:h", "seq": 5}
            assert [(await receive(late))["seq"] for _ in range(2)] == [4, 5]
            await nothing_more(late)
        async with client(server) as lost, client(server, "erin") as erin:
            assert (await op(lost, op="subscribe", room="chat:h", since=0, id=2))["op"] == "ack"
            resync = await receive(lost)
            assert (resync["op"], resync["code"], resync["id"]) == ("error", "resync", 2)
            assert [(await receive(lost))["data"] for _ in range(3)] == [3, 4, 5]
            await op(erin, op="publish", room="chat:h", data=6)
            assert (await receive(lost))["seq"] == 6  # and live from there on


def _raw_upgrade(server: Server, room: str) -> socket.socket:
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


async def test_a_slow_client_is_dropped_and_the_others_keep_up(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_send_buffer="65536", ws_publish_rate="10000") as server:
        slow = _raw_upgrade(server, "chat:s")
        try:
            async with client(server, "frank") as frank:
                await op(frank, op="subscribe", room="chat:s")
                await asyncio.sleep(0.2)
                blob = "y" * 60_000
                latencies = []
                # 9 MB: more than the kernel buffers (up to 4 MB a socket) and the 64 KB
                # the server may queue on top for the client that never reads
                for i in range(150):
                    sent = time.monotonic()
                    await op(frank, op="publish", room="chat:s", data=[i, blob])
                    message = await receive(frank)
                    latencies.append(time.monotonic() - sent)
                    assert message["data"][0] == i
                assert max(latencies) < 0.5, latencies  # not held back by the slow one
                for _ in range(50):
                    if server.metric("ws_dropped_slow_total") >= 1:
                        break
                    await asyncio.sleep(0.1)
                assert server.metric("ws_dropped_slow_total") == 1
                # out of every room at once; its socket is dropped once it had 5 s to read
                # up to the close frame (4008)
                for _ in range(100):
                    if server.metric("ws_connections") == 1:
                        break
                    await asyncio.sleep(0.1)
                assert server.metric("ws_connections") == 1
        finally:
            slow.close()


async def test_a_peer_that_stops_answering_pings_is_dropped(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_ping_interval="0.3", ws_ping_timeout="0.3") as server:
        silent = _raw_upgrade(server, "chat:p")  # never reads, never answers pings
        try:
            async with client(server) as alive:  # answers pings (websockets does)
                await op(alive, op="subscribe", room="chat:p")
                for _ in range(50):
                    if server.metric("ws_heartbeat_timeouts_total") >= 1:
                        break
                    await asyncio.sleep(0.1)
                assert server.metric("ws_heartbeat_timeouts_total") == 1
                await asyncio.sleep(1.0)
                assert server.metric("ws_connections") == 1
                assert (await op(alive, op="subscribe", room="chat:q"))["op"] == "ack"
        finally:
            silent.close()


async def test_shutdown_closes_sockets_with_1001(tmp_path: Path) -> None:
    with embedded(tmp_path, shutdown_delay="0") as server:
        async with client(server) as ws:
            await op(ws, op="subscribe", room="chat:bye")
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws, within=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert server.process.wait(timeout=15) == 0


def test_chat_between_two_processes_through_redis(tmp_path: Path) -> None:
    with make_backend("mariadb+redis", tmp_path) as backend:
        env = base_env(tmp_path, backend.env())
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as one, serve(env, tmp_path) as two:
            asyncio.run(_chat_across(one, two))
            asyncio.run(_sale_across(one, two))


async def _sale_across(one: Server, two: Server) -> None:
    """A purchase on one process moves the stock seen by a subscriber of the other."""
    now = datetime.now(UTC)
    async with httpx.AsyncClient() as http:
        created = await http.post(
            f"{one.url}/sales",
            json={
                "name": "across",
                "stock": 5,
                "per_user_limit": 2,
                "starts_at": (now - timedelta(minutes=1)).isoformat(),
                "ends_at": (now + timedelta(hours=1)).isoformat(),
            },
            headers={"Authorization": f"Bearer {mint(SECRET, 'root', admin=True)}"},
        )
        sale = int(created.json()["id"])
        async with client(two) as watcher:
            await op(watcher, op="subscribe", room=f"sale:{sale}")
            bought = await http.post(
                f"{one.url}/sales/{sale}/orders",
                json={"quantity": 2},
                headers={
                    "Authorization": f"Bearer {mint(SECRET, 'kim')}",
                    "Idempotency-Key": "k",
                },
            )
            assert bought.status_code == 201
            update = await receive(watcher)
            assert (update["room"], update["data"]) == (
                f"sale:{sale}",
                {"remaining": 3, "state": "live"},
            )
            refused = await op(watcher, op="publish", room=f"sale:{sale}", data={})
            assert refused["code"] == "unauthorized"  # anonymous; with a token: forbidden


async def _chat_across(one: Server, two: Server) -> None:
    async with client(one, "gina") as gina, client(two) as hal, client(one) as ian:
        for ws in (gina, hal, ian):
            await op(ws, op="subscribe", room="chat:x")
        for i in range(20):
            await op(gina, op="publish", room="chat:x", data=i)
        for ws in (hal, ian):
            got = [(await receive(ws))["data"] for _ in range(20)]
            assert got == list(range(20))  # every one, in order, once
            await nothing_more(ws)
    async with client(two) as late:  # the history is shared too
        await op(late, op="subscribe", room="chat:x", since=18)
        assert [(await receive(late))["data"] for _ in range(2)] == [18, 19]


async def test_a_protocol_violation_closes_with_1002(tmp_path: Path) -> None:
    with embedded(tmp_path) as server:
        sock = _raw_upgrade(server, "chat:v")
        try:
            sock.sendall(b"\x81\x02hi")  # a client frame without a mask
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(4096):  # until the server closes
                data += chunk
            frames = []
            while data:  # small unmasked server frames: 2-byte headers
                size = data[1] & 0x7F
                frames.append((data[0], data[2 : 2 + size]))
                data = data[2 + size :]
            assert frames[-1][0] == 0x88  # a close frame, last...
            assert int.from_bytes(frames[-1][1][:2], "big") == 1002  # ...protocol error
            assert (await _healthy(server)) == 200  # and the server goes on
        finally:
            sock.close()


async def _healthy(server: Server) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{server.url}/healthz")).status_code


async def test_a_client_that_never_reads_its_answers_is_dropped_too(tmp_path: Path) -> None:
    """Acks, errors and resumed history are bounded like room messages (review finding):
    resuming a room of 60 KB messages over and over without reading ends in 4008."""
    with embedded(tmp_path, ws_send_buffer="262144", ws_publish_rate="1000") as server:
        async with client(server, "lee") as lee:
            for i in range(40):
                await op(lee, op="publish", room="chat:big", data=["z" * 60_000, i])
        reader = _raw_upgrade(server, "chat:other")  # tiny window, never reads
        try:
            for _ in range(40):
                for message in (
                    {"op": "subscribe", "room": "chat:big", "since": 0},
                    {"op": "unsubscribe", "room": "chat:big"},
                ):
                    _send_masked(reader, json.dumps(message).encode())
                await asyncio.sleep(0.02)
            for _ in range(100):
                if server.metric("ws_dropped_slow_total") >= 1:
                    break
                await asyncio.sleep(0.1)
            assert server.metric("ws_dropped_slow_total") == 1
        finally:
            reader.close()


def _send_masked(sock: socket.socket, payload: bytes) -> None:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    with contextlib.suppress(OSError):
        sock.sendall(head + mask + masked)


async def test_an_upgrade_llhttp_does_not_see_gets_one_answer(tmp_path: Path) -> None:
    """`Connection: keep-alive, upgradex` is no upgrade token (review finding): one 426,
    nothing pending, and the connection counts nowhere."""
    with embedded(tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        key = base64.b64encode(os.urandom(16)).decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, upgradex\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}"
            "\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 426")
        writer.close()
        assert server.metric("http_in_flight") == 1  # the scrape itself: none left pending
        assert server.metric("ws_connections") == 0


async def test_every_subscribe_is_answered_even_when_superseded(tmp_path: Path) -> None:
    with embedded(tmp_path) as server:
        async with client(server, "mo") as mo:
            await op(mo, op="publish", room="chat:r", data=1)
            for message in (
                {"op": "subscribe", "room": "chat:r", "since": 0, "id": "A"},
                {"op": "unsubscribe", "room": "chat:r", "id": "U"},
                {"op": "subscribe", "room": "chat:r", "since": 0, "id": "B"},
            ):
                await mo.send(json.dumps(message))
            answered = set()
            while answered != {"A", "U", "B"}:
                answer = await receive(mo)
                if answer["op"] != "message":
                    answered.add(answer["id"])
