"""The hub against clients that misbehave: slow, silent, malformed, or never reading."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.server import Server
from tests.ws import client, embedded, metric_reaches, op, raw_upgrade, receive, send_masked

pytestmark = pytest.mark.anyio


async def test_a_slow_client_is_dropped_and_the_others_keep_up(tmp_path: Path) -> None:
    with embedded(
        tmp_path, ws_send_buffer="65536", ws_publish_rate="10000", ws_publish_bytes="100000000"
    ) as server:
        slow = raw_upgrade(server, "chat:s")
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
                assert (
                    await metric_reaches(server, "ws_dropped_slow_total", lambda v: v >= 1, 50)
                ) == 1
                # out of every room at once; its socket is dropped once it had 5 s to read
                # up to the close frame (4008)
                assert (await metric_reaches(server, "ws_connections", lambda v: v == 1, 100)) == 1
        finally:
            slow.close()


async def test_a_peer_that_stops_answering_pings_is_dropped(tmp_path: Path) -> None:
    with embedded(tmp_path, ws_ping_interval="0.3", ws_ping_timeout="0.3") as server:
        silent = raw_upgrade(server, "chat:p")  # never reads, never answers pings
        try:
            async with client(server) as alive:  # answers pings (websockets does)
                await op(alive, op="subscribe", room="chat:p")
                assert (
                    await metric_reaches(
                        server, "ws_heartbeat_timeouts_total", lambda v: v >= 1, 50
                    )
                ) == 1
                await asyncio.sleep(1.0)
                assert server.metric("ws_connections") == 1
                assert (await op(alive, op="subscribe", room="chat:q"))["op"] == "ack"
        finally:
            silent.close()


async def test_a_protocol_violation_closes_with_1002(tmp_path: Path) -> None:
    with embedded(tmp_path) as server:
        sock = raw_upgrade(server, "chat:v")
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
    with embedded(
        tmp_path,
        ws_send_buffer="262144",
        ws_publish_rate="1000",
        ws_publish_bytes="100000000",
        ws_history_bytes="64000000",  # all 40 kept: each resume is 2.4 MB
    ) as server:
        async with client(server, "lee") as lee:
            for i in range(40):
                await op(lee, op="publish", room="chat:big", data=["z" * 60_000, i])
        reader = raw_upgrade(server, "chat:other")  # tiny window, never reads
        try:
            for _ in range(40):
                for message in (
                    {"op": "subscribe", "room": "chat:big", "since": 0},
                    {"op": "unsubscribe", "room": "chat:big"},
                ):
                    send_masked(reader, json.dumps(message).encode())
                await asyncio.sleep(0.02)
            assert (
                await metric_reaches(server, "ws_dropped_slow_total", lambda v: v >= 1, 100)
            ) == 1
        finally:
            reader.close()


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
        assert server.metric("http_in_flight") == 0  # none left pending (scraped elsewhere)
        assert server.metric("ws_connections") == 0


async def test_a_slow_client_still_gets_its_close_frame_when_it_speaks_again(
    tmp_path: Path,
) -> None:
    """A lingering close: the client dropped as too slow sends a frame afterwards; the
    server goes on reading (discarding) instead of resetting the connection, so the client
    reads its whole backlog and then the 4008 close frame (review finding)."""
    with embedded(
        tmp_path, ws_send_buffer="65536", ws_publish_rate="10000", ws_publish_bytes="100000000"
    ) as server:
        slow = raw_upgrade(server, "chat:linger")
        try:
            async with client(server, "nia") as nia:
                await op(nia, op="subscribe", room="chat:linger")
                for i in range(150):  # far more than the slow client's buffers
                    await op(nia, op="publish", room="chat:linger", data=[i, "y" * 60_000])
                assert (
                    await metric_reaches(server, "ws_dropped_slow_total", lambda v: v >= 1, 100)
                ) == 1
            send_masked(slow, json.dumps({"op": "subscribe", "room": "chat:late"}).encode())
            await asyncio.sleep(0.2)
            data = await asyncio.to_thread(_read_to_end, slow)
            opcode, payload = _frames(data)[-1]
            assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 4008
        finally:
            slow.close()


def _read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(1 << 20):  # a reset would raise here
        chunks.append(chunk)
    return b"".join(chunks)


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked), in order; the part of one cut short is left out."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, head = data[at] & 0x0F, data[at + 1] & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if at + head + size > len(data):
            break
        frames.append((opcode, data[at + head : at + head + size]))
        at += head + size
    return frames
