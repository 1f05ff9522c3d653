"""The WebSocket hub against a real server process, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from surge.auth import mint
from tests.backends import make_backend, own_redis
from tests.server import SECRET, Server, base_env, run_cli, serve
from tests.ws import client, embedded, nothing_more, op, receive, ws_url

pytestmark = pytest.mark.anyio


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


def test_subscribers_are_told_to_resume_after_a_lost_redis_link(tmp_path: Path) -> None:
    """Pub/sub keeps nothing for a subscriber that was away: when a process's link to
    Redis comes back, its clients are told, per room, to resume with since."""
    with own_redis(tmp_path) as redis_server:
        env = base_env(
            tmp_path, {"SURGE_REDIS_URL": redis_server.url, "SURGE_REDIS_PREFIX": "rt-lost:"}
        )
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as server:
            asyncio.run(_told_to_resume(server, redis_server.port))


async def _told_to_resume(server: Server, port: int) -> None:
    async with client(server) as watcher:
        await op(watcher, op="subscribe", room="chat:lost")
        killer = Redis(port=port)
        try:
            killed = await killer.client_kill_filter(_type="pubsub")
            assert killed >= 1
        finally:
            await killer.aclose()
        notice = await receive(watcher, within=15)
        assert (notice["op"], notice["code"], notice["room"]) == ("error", "resync", "chat:lost")
