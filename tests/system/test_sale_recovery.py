"""Issue 13: a purchase keeps its promises across worker kills, Redis restarts and lost
bookkeeping. Each test reproduces one of the bugs the fault run found."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from surge.backends.redis import connect
from surge.backends.redis_gate import RedisGate
from surge.backends.sql import create_engine
from surge.backends.sql_sales import SqlSales
from surge.ground.sales import fingerprint
from tests.backends import Backend, make_backend, own_redis
from tests.server import Server, _children, base_env, run_cli, serve
from tests.system.conftest import bearer
from tests.system.test_flash_sale import _create_sale, _db_orders, _sale_body

REAL = ("mariadb+redis", "postgresql+redis", "mariadb+redis-cluster")


def _buy(server: Server, sale_id: int, user: str, key: str, quantity: int = 1) -> httpx.Response:
    headers = {**bearer(user), "Idempotency-Key": key}
    with server.client() as client:
        return client.post(f"/sales/{sale_id}/orders", json={"quantity": quantity}, headers=headers)


def _buy_until_answered(
    server: Server, sale_id: int, user: str, key: str, seconds: float = 15
) -> httpx.Response:
    """Retries like a client that keeps its key: on 503, 504 and connection errors."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = _buy(server, sale_id, user, key)
            if answer.status_code not in (503, 504) or time.monotonic() > deadline:
                return answer
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.fixture(params=REAL)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with make_backend(request.param, tmp_path) as made:
        yield made


def _kill_a_worker(server: Server) -> None:
    workers = _children(server.process.pid)
    assert workers
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    for _ in range(200):  # the supervisor starts another one, which reconciles at start-up
        alive = _children(server.process.pid)
        if victim not in alive and len(alive) == len(workers):
            return
        time.sleep(0.05)
    raise AssertionError("the worker was not replaced")


def test_replays_survive_a_worker_kill(backend: Backend, tmp_path: Path) -> None:
    """Bug 1: buy, replay, SIGKILL a worker, replay: 409 limit-reached (live sale) or
    409 sold-out (sold-out sale), three times out of three. Now the very same 201."""
    env = base_env(tmp_path, backend.env())
    run_cli(env, "db", "migrate")
    with serve(env, tmp_path, "--workers", "2") as server:
        live = _create_sale(server, stock=10)
        sold = _create_sale(server, stock=1)
        first = {sale: _buy(server, sale, "alice", f"key-{sale}") for sale in (live, sold)}
        assert all(a.status_code == 201 for a in first.values())
        assert _buy(server, sold, "bob", "k").status_code == 409  # sold out now
        for _ in range(3):
            _kill_a_worker(server)
            for sale, answer in first.items():
                for _ in range(4):  # the connections land on either worker
                    again = _buy_until_answered(server, sale, "alice", f"key-{sale}")
                    assert again.status_code == 201, again.text
                    assert again.content == answer.content


def test_a_buyer_is_never_refused_by_the_sold_out_board(backend: Backend, tmp_path: Path) -> None:
    env = base_env(tmp_path, backend.env())
    run_cli(env, "db", "migrate")
    with serve(env, tmp_path, "--workers", "2") as server:
        sale = _create_sale(server, stock=2)
        bought = [_buy(server, sale, f"winner{i}", "k") for i in range(2)]
        assert [b.status_code for b in bought] == [201, 201]
        for i in range(50):  # late buyers: every process holds the sale sold out
            assert _buy(server, sale, f"late{i}", "k").status_code == 409
        time.sleep(1.2)
        assert server.metric("purchases_total", outcome="sold-out-local") > 0
        for i, answer in enumerate(bought):
            for _ in range(4):
                again = _buy(server, sale, f"winner{i}", "k")
                assert (again.status_code, again.content) == (201, answer.content)
            refused = _buy(server, sale, f"winner{i}", "another-key")
            assert refused.status_code == 409, refused.text


def test_replays_and_stock_survive_a_redis_restart(tmp_path: Path) -> None:
    with make_backend("mariadb+redis", tmp_path) as shared, own_redis(tmp_path) as redis:
        backend = Backend(shared.kind, shared.database_url, redis.url, shared.prefix)
        env = base_env(tmp_path, backend.env())
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path, "--workers", "2") as server:
            sale = _create_sale(server, stock=5, limit=1)
            first = {f"u{i}": _buy(server, sale, f"u{i}", "k") for i in range(3)}
            assert {a.status_code for a in first.values()} == {201}
            redis.stop()  # everything the gate knew is gone
            redis.start()
            for user, answer in first.items():
                again = _buy_until_answered(server, sale, user, "k")
                assert (again.status_code, again.content) == (201, answer.content), again.text
            # the rebuilt gate counts what was sold: 2 left, and u0 has its one
            assert _buy_until_answered(server, sale, "u0", "k2").status_code == 409
            assert _buy_until_answered(server, sale, "new", "k").status_code == 201
            assert _buy_until_answered(server, sale, "newer", "k").status_code == 201
            assert _buy_until_answered(server, sale, "newest", "k").status_code == 409
        assert len(_db_orders(backend, sale)) == 5


async def _commit_behind_the_gate(
    backend: Backend, sale_id: int, user: str, key: str, commit: bool
) -> None:
    """What a process does before it dies: reserve in the gate, and (with `commit`)
    commit the order; the bookkeeping that follows never happens."""
    client = connect(backend.redis_url or "", 4)
    engine = create_engine(backend.database_url, pool_size=1)
    try:
        gate = RedisGate(client, backend.prefix)
        wanted = fingerprint(sale_id, 1)
        assert (await gate.reserve(sale_id, user, key, 1, wanted)).outcome == "ok"
        if commit:
            sales = SqlSales(engine)
            sale = await sales.get_sale(sale_id)
            assert sale is not None
            done = await sales.purchase(sale, user, 1, key, wanted, datetime.now(UTC))
            assert done.outcome == "committed"
    finally:
        await client.aclose()
        await engine.dispose()


def test_a_committed_key_the_gate_still_holds_pending_replays(tmp_path: Path) -> None:
    """Bug 3: Redis unavailable right after a commit left the key pending, and retries got
    409 key-in-flight until the next start-up."""
    with make_backend("postgresql+redis", tmp_path) as backend:
        env = base_env(tmp_path, {**backend.env(), "SURGE_GATE_RECONCILE_INTERVAL": "0"})
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as server:
            sale = _create_sale(server, stock=3)
            asyncio.run(_commit_behind_the_gate(backend, sale, "carol", "k", commit=True))
            replay = _buy(server, sale, "carol", "k")
            assert replay.status_code == 201, replay.text
            assert replay.json()["user_id"] == "carol"
            assert _buy(server, sale, "carol", "k").content == replay.content


def test_a_dead_process_reservation_is_given_back(tmp_path: Path) -> None:
    """Stock a crashed process reserved was stranded until the next start-up."""
    with make_backend("mariadb+redis", tmp_path) as backend:
        env = base_env(tmp_path, backend.env())
        env["SURGE_GATE_RECONCILE_INTERVAL"] = "0.5"
        env["SURGE_WRITE_DEADLINE_MS"] = "500"  # stale after 2 x 0.5 + 2 = 3 s
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as server:
            sale = _create_sale(server, stock=1)
            asyncio.run(_commit_behind_the_gate(backend, sale, "ghost", "k", commit=False))
            assert _buy(server, sale, "dave", "k").status_code == 409  # reserved by the dead
            started = time.monotonic()
            while _buy(server, sale, "dave", "k").status_code != 201:
                assert time.monotonic() - started < 3 + 0.5 + 3, "stranded"
                time.sleep(0.2)
            time.sleep(1.2)
            assert server.metric("gate_stale_reservations_total") >= 1


def test_a_purchase_replays_after_its_sale_ended(backend: Backend, tmp_path: Path) -> None:
    env = base_env(tmp_path, backend.env())
    run_cli(env, "db", "migrate")
    with serve(env, tmp_path) as server:
        body = _sale_body(stock=5)
        body["ends_at"] = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        with server.client() as client:
            made = client.post("/sales", json=body, headers=bearer("root", admin=True))
        assert made.status_code == 201, made.text
        sale = int(made.json()["id"])
        bought = _buy(server, sale, "erin", "k")
        assert bought.status_code == 201
        time.sleep(max(0.0, datetime.fromisoformat(body["ends_at"]).timestamp() - time.time()))
        time.sleep(0.2)
        again = _buy(server, sale, "erin", "k")
        assert (again.status_code, again.content) == (201, bought.content)
        late = _buy(server, sale, "erin", "k2")
        assert late.status_code == 403 and json.loads(late.content)["type"].endswith("not-live")
        assert _buy(server, sale, "frank", "k").status_code == 403
