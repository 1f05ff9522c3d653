"""Surge as a fleet on one machine (issue 17): three nodes, each `surge serve --workers 2`
on its own loopback address (127.0.0.2, .3, .4), behind nginx with the shipped
configuration, on a Redis Cluster (3 masters, 3 replicas) and a MariaDB primary with a
replica, `surge worker` sending the order mails to an SMTP server.

Used by the system test (tests/system/test_three_nodes.py) and by `make bench-cluster`
(bench/cluster.py), which differ only in sizes. Also: the buyers and the WebSocket
broadcast both drive it with, and what they check.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from surge.auth import mint
from tests.backends import free_port
from tests.load import Attempt, read_response
from tests.nginx import running_nginx
from tests.redis_cluster import OwnRedisCluster, own_cluster
from tests.replication import Replication, replication
from tests.server import SECRET, Server, _children, base_env, run_cli, serve, work
from tests.smtp import SmtpSink, smtp_sink

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
FINAL = (201, 409)
_SUBJECT = re.compile(r"Order (\d+) confirmed")


def bearer(user: str, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, user, admin=admin)}"}


@dataclass
class Fleet:
    base: str  # nginx
    nodes: list[Server]
    cluster: OwnRedisCluster
    database: Replication
    sink: SmtpSink
    worker: Server
    killed: list[int] = field(default_factory=list)

    def kill_node(self, index: int) -> None:
        """SIGKILL a whole node: its supervisor and every worker process, at once."""
        node = self.nodes[index]
        pids = [node.process.pid, *_children(node.process.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.process.wait(timeout=10)
        self.killed.append(index)

    def create_sale(self, stock: int) -> int:
        now = time.time()
        body = {
            "name": "Fleet sale",
            "stock": stock,
            "per_user_limit": 1,
            "starts_at": _iso(now - 60),
            "ends_at": _iso(now + 7200),
        }
        answer = httpx.post(
            f"{self.base}/sales", json=body, headers=bearer("root", admin=True), timeout=10
        )
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def mailed(self) -> Counter[int]:
        """Order id -> mails the SMTP server received for it."""
        found = (_SUBJECT.fullmatch(s) for s in self.sink.subjects())
        return Counter(int(m.group(1)) for m in found if m)

    def sold(self, sale: int) -> list[dict[str, Any]]:
        """The sale's orders, as the primary has them."""
        rows = self.database.sql(
            "primary", f"SELECT id, user_id FROM surge.orders WHERE sale_id = {int(sale)}"
        )
        return [
            {"id": int(line.split("\t")[0]), "user_id": line.split("\t")[1]}
            for line in rows.splitlines()
        ]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@contextmanager
def fleet(directory: Path, workers: int = 2, orders: int = 1000) -> Iterator[Fleet]:
    with ExitStack() as stack:
        cluster = stack.enter_context(own_cluster())
        database = stack.enter_context(replication("mariadb"))
        sink = stack.enter_context(smtp_sink())
        env = base_env(
            directory,
            {
                "SURGE_DATABASE_URL": database.primary_url,
                "SURGE_DATABASE_REPLICA_URL": database.replica_url,
                "SURGE_REDIS_URL": cluster.url,
                "SURGE_SMTP_URL": sink.url,
                "SURGE_OUTBOX_POLL": "0.05",
                "SURGE_TRUSTED_PROXIES": "127.0.0.1/32",
                "SURGE_WS_PUBLISH_RATE": "1000",
                "SURGE_GATE_RECONCILE_INTERVAL": "1",
            },
        )
        run_cli(env, "db", "migrate")
        run_cli(env, "db", "seed", "--orders", str(orders), "--users", "100")
        addresses = [f"{host}:{free_port()}" for host in HOSTS]
        nodes = []
        for address in addresses:
            host, port = address.split(":")
            args = ("--host", host, "--port", port, "--workers", str(workers))
            nodes.append(stack.enter_context(serve(env, directory, *args, timeout=60)))
        worker = stack.enter_context(work(env, directory))
        base = stack.enter_context(running_nginx(directory, free_port(), addresses))
        yield Fleet(base, nodes, cluster, database, sink, worker)


# -- the buyers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Bought:
    answers: list[Answer]  # each buyer's final answer (201 or 409; else what it got last)
    latencies: list[float]  # each buyer's time to its final answer, retries included
    retried: Counter[str]  # answers that were not final (status, or the error)


async def buy(
    base: str, sale: int, users: Sequence[str], seconds: float, connections: int = 64
) -> Bought:
    """Every user buys once over `connections` keep-alive connections, each buyer keeping
    its Idempotency-Key and retrying what is not final (a 5xx from nginx or Surge, a
    dropped connection) until `seconds` have passed, as a real client would.

    Raw HTTP/1.1 on asyncio streams (tests.load): httpx's pool served 86 requests a second
    at 64 concurrent requests here, and was what the first run measured."""
    host, _, port = base.removeprefix("http://").partition(":")
    until = time.monotonic() + seconds
    answers: list[Answer] = [Answer(0, b"not sent")] * len(users)
    latencies: list[float] = []
    retried: Counter[str] = Counter()
    cursor = iter(range(len(users)))
    body = b'{"quantity": 1}'

    async def worker() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for index in cursor:
            headers = {**bearer(users[index]), "Idempotency-Key": f"key-{users[index]}"}
            headers["Content-Type"] = "application/json"
            request = Attempt("POST", f"/sales/{sale}/orders", headers, body).encode()
            started = time.monotonic()
            while True:
                try:
                    if connection is None:
                        connection = await asyncio.open_connection(host, int(port))
                    reader, writer = connection
                    writer.write(request)
                    status, head, reply = await read_response(reader)
                    if b"connection: close" in head.lower():
                        writer.close()
                        connection = None
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if connection is not None:
                        connection[1].close()
                        connection = None
                    status, reply = 0, repr(exc).encode()
                    retried[type(exc).__name__] += 1
                else:
                    if status in FINAL:
                        break
                    retried[str(status)] += 1
                if time.monotonic() > until:
                    break
                await asyncio.sleep(0.05)
            answers[index] = Answer(status, reply)
            latencies.append(time.monotonic() - started)
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return Bought(answers, latencies, retried)


# -- the broadcast --------------------------------------------------------------------------


async def broadcast(
    nodes: Sequence[str], room: str, clients: int, messages: int
) -> tuple[dict[int, list[int]], list[float]]:
    """`clients` WebSocket subscribers spread over `nodes` (ws://HOST:PORT) in turn, and a
    publisher on the first node sending `messages`: each client's received sequence
    numbers, and every delivery's latency (publish to receipt)."""
    received: dict[int, list[int]] = {i: [] for i in range(clients)}
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    total = clients * messages
    count = 0

    async def subscriber(index: int, ready: asyncio.Event) -> None:
        nonlocal count
        url = f"{nodes[index % len(nodes)]}/ws"
        async with connect(url, open_timeout=10, max_queue=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "room": room, "id": 1}))
            assert json.loads(await ws.recv())["op"] == "ack"
            ready.set()
            while len(received[index]) < messages:
                message = json.loads(await ws.recv())
                if message.get("op") != "message":
                    continue
                received[index].append(message["seq"])
                sent = sent_at.get(message["data"]["n"])
                if sent is not None:
                    latencies.append(time.monotonic() - sent)
                count += 1
                if count == total:
                    done.set()

    readies = [asyncio.Event() for _ in range(clients)]
    tasks = [asyncio.create_task(subscriber(i, readies[i])) for i in range(clients)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    token = mint(SECRET, "publisher")
    async with connect(f"{nodes[0]}/ws?token={token}", open_timeout=10) as publisher:
        for n in range(messages):
            sent_at[n] = time.monotonic()
            await publisher.send(
                json.dumps({"op": "publish", "room": room, "data": {"n": n}, "id": n + 10})
            )
            await asyncio.sleep(0.02)
        await asyncio.wait_for(done.wait(), 60)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received, latencies
