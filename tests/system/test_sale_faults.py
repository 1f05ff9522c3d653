"""Faults during a sale: a SIGKILLed server loses no acknowledged order; a Redis restart
mid-sale neither oversells nor strands stock."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path

from tests.backends import Backend, make_backend, own_redis
from tests.load import Attempt, read_response
from tests.server import Server, base_env, run_cli, serve
from tests.system.test_flash_sale import _address, _buy, _create_sale, _db_orders


async def _buy_until_killed(
    server: Server, attempts: list[Attempt], kill_after: int
) -> list[dict[str, object]]:
    """Buys on 20 connections; SIGKILLs the server right after `kill_after` 201s arrived.
    Returns every order acknowledged with a 201."""
    host, port = _address(server)
    acknowledged: list[dict[str, object]] = []
    queue = iter(attempts)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for attempt in queue:
                writer.write(attempt.encode())
                try:
                    status, _, body = await read_response(reader)
                except Exception:
                    return  # the server is gone
                if status == 201:
                    acknowledged.append(json.loads(body))
                    if len(acknowledged) == kill_after:
                        server.process.send_signal(signal.SIGKILL)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(20)), return_exceptions=True)
    return acknowledged


def test_sigkill_loses_no_acknowledged_order(backend: Backend, tmp_path: Path) -> None:
    env = base_env(tmp_path, backend.env())
    env["SURGE_GATE_RECONCILE_INTERVAL"] = "1"
    run_cli(env, "db", "migrate")
    with serve(env, tmp_path) as server:
        sale_id = _create_sale(server, stock=200)
        attempts = [_buy(sale_id, f"user{i}", f"key{i}") for i in range(400)]
        acknowledged = asyncio.run(_buy_until_killed(server, attempts, kill_after=30))
        server.process.wait(timeout=10)
    assert len(acknowledged) >= 30
    stored = {o.id: o for o in _db_orders(backend, sale_id)}
    for order in acknowledged:
        assert order["id"] in stored, order  # a 201 means committed
        assert stored[int(order["id"])].user_id == order["user_id"]  # type: ignore[call-overload]
    # Restarted: the rest of the stock sells. What the killed process had reserved in a
    # Redis-backed gate (its requests died with it) is given back once stale: the
    # purchase deadline twice and 2 s (6 s here), at the next reconciliation (1 s).
    killed_at = time.monotonic()
    results: list[tuple[int, bytes]] = []
    with serve(env, tmp_path) as server:
        for wave in range(40):
            more = [_buy(sale_id, f"late{wave}-{i}", "k") for i in range(100 if wave else 400)]
            results += asyncio.run(_storm(server, more))
            if len(_db_orders(backend, sale_id)) == 200:
                break
            time.sleep(0.25)
    healed_after = time.monotonic() - killed_at
    sold = len(_db_orders(backend, sale_id))
    assert sold == 200, Counter(status for status, _ in results)
    assert healed_after < 6 + 1 + 5, healed_after  # stale, period, and this slow machine


async def _storm(server: Server, attempts: list[Attempt]) -> list[tuple[int, bytes]]:
    from tests.load import storm

    return await storm(*_address(server), attempts, connections=20)


def test_redis_restart_mid_sale(tmp_path: Path) -> None:
    with make_backend("mariadb+redis", tmp_path) as shared, own_redis(tmp_path) as redis:
        backend = Backend(shared.kind, shared.database_url, redis.url, shared.prefix)
        env = base_env(tmp_path, backend.env())
        env["SURGE_DEADLINE_MS"] = "2000"
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path, "--workers", "2") as server:
            sale_id = _create_sale(server, stock=120)
            first = asyncio.run(
                _storm(server, [_buy(sale_id, f"a{i}", f"k{i}") for i in range(60)])
            )
            assert Counter(s for s, _ in first) == {201: 60}
            redis.stop()  # everything the gate knew is gone
            redis.start()
            later = [_buy(sale_id, f"b{i}", f"k{i}") for i in range(300)]
            second: list[tuple[int, bytes]] = []
            for _ in range(50):  # until the processes have their Redis connections back
                second = asyncio.run(_storm(server, later))
                if any(status == 201 for status, _ in second):
                    break
            # A process whose calls failed while Redis was down has its breaker open for
            # its cool-down (1 s) and answers 503 meanwhile: the rest sells in waves, for
            # less time than a reservation takes to become stale (6 s), so stock stranded
            # by the lost gate would not be healed by the periodic reconciliation here
            third: list[tuple[int, bytes]] = []
            until = time.monotonic() + 4
            wave = 0
            while len(_db_orders(backend, sale_id)) < 120 and time.monotonic() < until:
                buyers = [_buy(sale_id, f"c{wave}-{i}", f"k{i}") for i in range(40)]
                third += asyncio.run(_storm(server, buyers))
                wave += 1
                time.sleep(0.1)
        stored = _db_orders(backend, sale_id)
        assert len(stored) == 120  # no oversell, and no stock stranded by the lost gate
        assert len({o.user_id for o in stored}) == 120
        answered = Counter(s for s, _ in second + third)
        assert set(answered) <= {201, 409, 503}, answered
