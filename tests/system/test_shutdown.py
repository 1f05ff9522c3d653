"""Graceful shutdown (docs/operations.md) and the multi-process supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.backends import Backend, make_backend
from tests.load import Hammer, hammer
from tests.server import Server, base_env, run_cli, serve
from tests.system.conftest import bearer


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


async def _sigterm_under_load(
    server: Server, delay: float, balancer_reacts: float | None = None, clients: int = 40
) -> None:
    """SIGTERM while `clients` keep requesting; every request sent must be answered.

    With `balancer_reacts`, clients open no new connection that long after the signal, as
    behind a load balancer that saw readiness fail; without, they keep reconnecting until
    refused, which also exercises the drain of connections accepted at the last moment.
    """
    host, port = _address(server)
    stop = asyncio.Event()
    tally = Hammer()
    targets = [(f"/orders/{i}", bearer(f"user{(i - 1) % 5 + 1}")) for i in range(1, 41)]
    targets.append(("/orders/999999", bearer("user1")))
    load = asyncio.ensure_future(hammer(host, port, targets, clients, stop, tally))
    await asyncio.sleep(0.7)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as probe:
        assert (await probe.get("/readyz")).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        if balancer_reacts is not None:
            asyncio.get_running_loop().call_later(balancer_reacts, tally.no_new_connections.set)
        # readiness turns 503 at once, while requests are still answered
        for _ in range(50):
            ready = await probe.get("/readyz", headers={"Connection": "close"})
            if ready.status_code == 503:
                break
            await asyncio.sleep(0.02)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert time.monotonic() - signalled < delay
        served = await probe.get("/orders/1", headers=bearer("user1"))
        assert served.status_code == 200 and served.headers["connection"] == "close"
    code = await asyncio.to_thread(server.process.wait, 30)
    stop.set()
    result = await asyncio.wait_for(load, 30)
    assert code == 0, server.output()
    assert result.failures == [], result.failures[:5]
    assert result.answered.statuses.get(200, 0) > 100
    assert set(result.answered.statuses) <= {200, 404}
    assert sum(result.answered.statuses.values()) == result.sent  # every request answered
    assert result.closes > 0  # the drain told keep-alive clients to go
    assert "Traceback" not in server.output()


def _seeded_env(backend: Backend, tmp_path: Path, delay: float) -> dict[str, str]:
    env = base_env(tmp_path, backend.env())
    env["SURGE_SHUTDOWN_DELAY"] = str(delay)
    env["SURGE_DEADLINE_MS"] = "2000"
    run_cli(env, "db", "migrate")
    run_cli(env, "db", "seed", "--orders", "40", "--users", "5")
    return env


def test_sigterm_under_load_finishes_every_request(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = _seeded_env(backend, tmp_path, delay=1.0)
        with serve(env, tmp_path) as server:
            asyncio.run(_sigterm_under_load(server, delay=1.0))


def test_sigterm_with_workers_under_load(tmp_path: Path) -> None:
    with make_backend("mariadb+redis", tmp_path) as backend:
        env = _seeded_env(backend, tmp_path, delay=1.0)
        with serve(env, tmp_path, "--workers", "2") as server:
            workers = _children(server.process.pid)
            assert len(workers) == 2
            # Clients that ignore readiness and reconnect in a tight loop can, with several
            # workers, hit the microseconds between the last accept() and the listener's
            # close (docs/operations.md); a load balancer would have stopped sending.
            asyncio.run(_sigterm_under_load(server, delay=1.0, balancer_reacts=0.5))
            for pid in workers:
                assert not _alive(pid)


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = _seeded_env(backend, tmp_path, delay=30.0)
        with serve(env, tmp_path) as server:
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=5) == 3
            assert time.monotonic() - started < 2


def test_sigint_skips_the_delay(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = _seeded_env(backend, tmp_path, delay=30.0)
        with serve(env, tmp_path) as server:
            started = time.monotonic()
            assert server.stop(signal.SIGINT) == 0
            assert time.monotonic() - started < 5


def test_workers_serve_together_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    with make_backend("mariadb+redis", tmp_path) as backend:
        env = _seeded_env(backend, tmp_path, delay=0.2)
        with serve(env, tmp_path, "--workers", "2") as server:
            workers = set(_children(server.process.pid))
            assert _pids_answering(server, len(workers)) == workers
            time.sleep(1.2)  # workers share metric snapshots once a second
            for _ in range(4):  # whichever worker answers, it reports both
                text = httpx.get(server.internal_url + "/metrics").text
                assert 'worker="0"' in text and 'worker="1"' in text
            victim = next(iter(workers))
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                now = set(_children(server.process.pid))
                if len(now) == 2 and victim not in now:
                    break
                time.sleep(0.1)
            assert len(now) == 2 and victim not in now
            _wait_healthy(server)
            assert _pids_answering(server, 2) == now
            assert server.stop() == 0


def test_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run_cli(env, "serve", "--workers", "2", check=False)
    assert result.returncode == 2
    assert "needs SURGE_REDIS_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _pids_answering(server: Server, expected: int) -> set[int]:
    pids: set[int] = set()
    for _ in range(200):  # fresh connections are spread over the workers by the kernel
        with httpx.Client(base_url=server.url, timeout=5) as client:
            pids.add(client.get("/healthz").json()["pid"])
        if len(pids) >= expected:
            break
    return pids


def _wait_healthy(server: Server) -> None:
    for _ in range(100):
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail("not healthy again")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
