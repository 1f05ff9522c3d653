"""Server-side publish and users' own rooms (issue 18): a backend publishes into a room
over HTTP with a `service` token; `user:ID` rooms are their user's (or an admin's); a
purchase tells its buyer's room."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from surge.auth import mint
from tests import ws
from tests.backends import make_backend
from tests.server import SECRET, Server, base_env, run_cli, serve, work
from tests.system.conftest import bearer
from tests.system.test_flash_sale import _sale_body

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with ws.embedded(tmp_path_factory.mktemp("rooms")) as running:
        yield running


def _service() -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, 'backend', role='service')}"}


def _post(server: Server, room: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/rooms/{room}/messages",
        content=body,
        headers={**headers, "Content-Type": "application/json"},
        timeout=10,
    )


def test_a_backend_publishes_and_subscribers_get_it(server: Server) -> None:
    async def run() -> tuple[dict[str, Any], list[httpx.Response]]:
        async with ws.client(server) as listener:
            assert (await ws.op(listener, op="subscribe", room="chat:news", id=1))["op"] == "ack"
            first = await asyncio.to_thread(_post, server, "chat:news", b'{"x": 1}', _service())
            second = await asyncio.to_thread(
                _post, server, "chat%3Anews", b'"two"', bearer("root", admin=True)
            )
            got = [await ws.receive(listener), await ws.receive(listener)]
            return {"got": got}, [first, second]

    seen, answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    seqs = [a.json()["seq"] for a in answers]
    assert answers[0].json() == {"room": "chat:news", "seq": seqs[0]} and seqs[1] == seqs[0] + 1
    assert seen["got"] == [
        {"op": "message", "room": "chat:news", "seq": seqs[0], "data": {"x": 1}},
        {"op": "message", "room": "chat:news", "seq": seqs[1], "data": "two"},
    ]


@pytest.mark.parametrize(
    ("room", "body", "headers", "status", "kind"),
    [
        ("chat:news", b"{}", {}, 401, "unauthorized"),
        ("chat:news", b"{}", bearer("someone"), 403, "forbidden"),  # a user, not a service
        ("sale:1", b"{}", _service(), 403, "forbidden"),  # the server's stock feed
        ("lobby", b"{}", _service(), 400, "bad-room"),
        ("chat:a%20b", b"{}", _service(), 400, "bad-room"),
        ("user%253Aalice", b"{}", _service(), 400, "bad-room"),  # decoded once, not twice
        ("chat:news", b"{not json", _service(), 400, "bad-json"),
        ("chat:news", b"[" * 2000 + b"]" * 2000, _service(), 400, "bad-json"),
        ("chat:news", b'"' + b"x" * 70_000 + b'"', _service(), 413, "body-too-large"),
        # under the limit as sent, 3.8 times over once re-encoded (1e15: 1000000000000000.0)
        (
            "chat:news",
            b"[" + b",".join([b"1e15"] * 13_000) + b"]",
            _service(),
            413,
            "body-too-large",
        ),
    ],
)
def test_bad_publishes_are_problems(
    server: Server, room: str, body: bytes, headers: dict[str, str], status: int, kind: str
) -> None:
    answer = _post(server, room, body, headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == f"/problems/{kind}"


def test_a_users_room_is_theirs_or_an_admins(server: Server) -> None:
    async def answer(user: str | None, admin: bool = False) -> dict[str, Any]:
        url = f"{ws.ws_url(server)}"
        if user is not None:
            url += f"?token={mint(SECRET, user, admin=admin)}"
        async with ws.connect(url, open_timeout=5) as client:
            return await ws.op(client, op="subscribe", room="user:alice", id=1)

    async def run() -> list[dict[str, Any]]:
        return [
            await answer("alice"),
            await answer("bob"),
            await answer(None),
            await answer("root", admin=True),
        ]

    own, other, anonymous, admin = asyncio.run(run())
    assert own["op"] == "ack" and admin["op"] == "ack"
    assert other["op"] == "error" and other["code"] == "forbidden"
    assert anonymous["op"] == "error" and anonymous["code"] == "forbidden"


def test_a_purchase_tells_its_buyers_room(server: Server) -> None:
    sale = httpx.post(
        f"{server.url}/sales", json=_sale_body(5), headers=bearer("root", admin=True), timeout=10
    )
    assert sale.status_code == 201, sale.text

    async def run() -> tuple[httpx.Response, dict[str, Any]]:
        async with ws.client(server, "carol") as mine:
            assert (await ws.op(mine, op="subscribe", room="user:carol", id=1))["op"] == "ack"
            bought = await asyncio.to_thread(
                httpx.post,
                f"{server.url}/sales/{sale.json()['id']}/orders",
                json={"quantity": 1},
                headers={**bearer("carol"), "Idempotency-Key": "k1"},
                timeout=10,
            )
            return bought, [await ws.receive(mine), await ws.receive(mine, within=15)]

    bought, (confirmed, mailed) = asyncio.run(run())
    assert bought.status_code == 201, bought.text
    order = json.loads(bought.content)
    assert confirmed["op"] == "message" and confirmed["room"] == "user:carol"
    assert confirmed["data"] == {"event": "order-confirmed", "order": order}
    # then the inline worker's mail, and its word in the same room
    assert mailed["data"] == {"event": "mail-sent", "order_id": order["id"]}
    assert mailed["seq"] == confirmed["seq"] + 1


def test_presence_counts_a_rooms_subscribers(server: Server) -> None:
    async def run() -> list[httpx.Response]:
        async with ws.client(server) as one, ws.client(server, "dave") as two:
            for client in (one, two):
                assert (await ws.op(client, op="subscribe", room="chat:here", id=1))["op"] == "ack"
            assert (await ws.op(two, op="subscribe", room="user:dave", id=2))["op"] == "ack"

            def ask(room: str, headers: dict[str, str]) -> httpx.Response:
                return httpx.get(f"{server.url}/rooms/{room}", headers=headers, timeout=10)

            return [
                await asyncio.to_thread(ask, "chat:here", {}),
                await asyncio.to_thread(ask, "chat:empty", {}),
                await asyncio.to_thread(ask, "user:dave", bearer("dave")),
                await asyncio.to_thread(ask, "user:dave", bearer("eve")),
                await asyncio.to_thread(ask, "user:dave", {}),
                await asyncio.to_thread(ask, "nowhere", {}),
            ]

    here, empty, mine, other, anonymous, bad = asyncio.run(run())
    assert here.json() == {"room": "chat:here", "subscribers": 2}
    assert empty.json() == {"room": "chat:empty", "subscribers": 0}
    assert mine.json() == {"room": "user:dave", "subscribers": 1}
    assert (other.status_code, anonymous.status_code, bad.status_code) == (403, 401, 400)


def test_presence_adds_up_across_processes(tmp_path: Path) -> None:
    """2 workers on Redis: a room's subscribers land on either; each worker shares its
    count every 5 s, so any worker soon answers the total."""
    with make_backend("mariadb+redis", tmp_path) as backend:
        env = base_env(tmp_path, backend.env())
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path, "--workers", "2") as running:

            async def run() -> list[int]:
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(6):
                        client = await stack.enter_async_context(ws.client(running))
                        reply = await ws.op(client, op="subscribe", room="chat:crowd", id=1)
                        assert reply["op"] == "ack"
                    seen = []
                    for _ in range(30):  # two reports, at most, and a margin
                        answer = await asyncio.to_thread(
                            httpx.get, f"{running.url}/rooms/chat:crowd", timeout=10
                        )
                        seen.append(answer.json()["subscribers"])
                        if seen[-3:] == [6, 6, 6]:
                            break
                        await asyncio.sleep(0.5)
                    return seen

            seen = asyncio.run(run())
            assert seen[-3:] == [6, 6, 6], seen

            # `surge worker` (a process without a hub) tells the buyer's room of the mail
            with work(env, tmp_path):
                sale = httpx.post(
                    f"{running.url}/sales",
                    json=_sale_body(5),
                    headers=bearer("root", admin=True),
                    timeout=10,
                ).json()["id"]

                async def buy() -> tuple[httpx.Response, list[dict[str, Any]]]:
                    async with ws.client(running, "frank") as mine:
                        reply = await ws.op(mine, op="subscribe", room="user:frank", id=1)
                        assert reply["op"] == "ack"
                        bought = await asyncio.to_thread(
                            httpx.post,
                            f"{running.url}/sales/{sale}/orders",
                            json={"quantity": 1},
                            headers={**bearer("frank"), "Idempotency-Key": "k"},
                            timeout=10,
                        )
                        events = [await ws.receive(mine, within=15) for _ in range(2)]
                        return bought, events

                bought, events = asyncio.run(buy())
                assert bought.status_code == 201, bought.text
                assert [e["data"]["event"] for e in events] == ["order-confirmed", "mail-sent"]
                assert events[1]["data"]["order_id"] == bought.json()["id"]


def test_a_websocket_is_closed_when_its_token_expires(server: Server) -> None:
    """The token granted the user's room: when it expires, the connection ends (4001)."""

    async def run() -> tuple[dict[str, Any], int | None]:
        # exp 28 s ago: within the 30 s leeway for 2 s more (the leeway counts too)
        token = mint(SECRET, "gina", ttl=-28)
        url = f"{ws.ws_url(server)}?token={token}"
        async with ws.connect(url, open_timeout=5) as client:
            assert (await ws.op(client, op="subscribe", room="user:gina", id=1))["op"] == "ack"
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(client.recv(), 10)
            return {}, client.close_code

    _, code = asyncio.run(run())
    assert code == 4001
