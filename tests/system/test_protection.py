"""Rate limits through real server processes: 429s as documented, shared via Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.backends import Backend, make_backend
from tests.server import Server, base_env, run_cli, serve
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow


async def _burst(urls: list[str], path: str, count: int, headers: dict[str, str]) -> list[int]:
    """`count` requests at once, spread over the servers; their statuses."""
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.get(urls[i % len(urls)] + path, headers=headers) for i in range(count))
        )
    return [answer.status_code for answer in answers]


def _limited_env(tmp_path: Path, backend: Backend) -> dict[str, str]:
    return base_env(
        tmp_path,
        {
            **backend.env(),
            "SURGE_RATE_LIMIT_READ": "0.01/10",  # 10 at once, then one per 100 s
            "SURGE_RATE_LIMIT_WRITE": "0.01/2",
        },
    )


def test_429_answer_and_exempt_routes(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = _limited_env(tmp_path, backend)
        run_cli(env, "db", "seed", "--orders", "5", "--users", "1")
        with serve(env, tmp_path) as server:
            statuses = asyncio.run(_burst([server.url], "/orders/1", 15, bearer("user1")))
            assert sorted(statuses) == [200] * 10 + [429] * 5
            with server.client() as client:
                refused = client.get("/orders/1", headers=bearer("user1"))
                assert refused.status_code == 429
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["type"] == "/problems/rate-limited"
                assert 100 <= int(refused.headers["retry-after"]) <= 150  # + jitter
                assert refused.headers["ratelimit-policy"] == '"read";q=10;w=1000'
                assert refused.headers["ratelimit"] == '"read";r=0;t=100'
                # another user, and an anonymous caller (by address), have their own
                assert client.get("/orders/1", headers=bearer("user2")).status_code == 404
                assert client.get("/orders/1").status_code == 401
                # operations' routes are never limited
                for _ in range(20):
                    assert client.get("/healthz").status_code == 200
                    assert client.get("/readyz").status_code == 200
                assert client.get("/openapi.json").status_code == 200
            assert server.metric("rate_limited_total", **{"class": "read"}) == 6


async def _posts(urls: list[str], count: int, headers: dict[str, str]) -> list[int]:
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(
                client.post(urls[i % len(urls)] + "/sales", content=b"{}", headers=headers)
                for i in range(count)
            )
        )
    return [answer.status_code for answer in answers]


@pytest.mark.parametrize("store", ["redis", "auto"])
def test_two_processes_share_limits_through_redis(store: str, tmp_path: Path) -> None:
    with make_backend("mariadb+redis", tmp_path) as backend:
        env = {**_limited_env(tmp_path, backend), "SURGE_RATE_LIMIT_STORE": store}
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as first, serve(env, tmp_path) as second:
            servers: list[Server] = [first, second]
            urls = [s.url for s in servers]
            reads = asyncio.run(_burst(urls, "/orders/999", 40, bearer("user7")))
            # a 404 (no such order) got through the limiter; the burst is 10
            if store == "redis":  # one bucket for both processes
                assert reads.count(404) == 10 and reads.count(429) == 30
            else:  # auto: reads are decided by each process, a bucket each
                assert reads.count(404) == 20 and reads.count(429) == 20
            # writes are shared in both modes: the burst of 2, whichever process
            writes = asyncio.run(_posts(urls, 20, bearer("root", admin=True)))
            assert writes.count(422) == 2 and writes.count(429) == 18
            assert sum(s.metric("rate_limit_store_errors_total") for s in servers) == 0


def test_work_over_the_cap_is_shed_and_answers_on_the_spot_never_are(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = base_env(
            tmp_path,
            {
                **backend.env(),
                "SURGE_SHED": "cap",
                "SURGE_MAX_IN_FLIGHT": "1",  # one lookup at a time
                "SURGE_SHED_MIN_LIMIT": "1",
            },
        )
        run_cli(env, "db", "seed", "--orders", "60", "--users", "1")
        with serve(env, tmp_path) as server:
            # 40 different orders at once: each is a near-cache miss needing a lookup
            async def misses() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    return await asyncio.gather(
                        *(client.get(f"/orders/{i}", headers=bearer("user1")) for i in range(1, 41))
                    )

            answers = asyncio.run(misses())
            statuses = [a.status_code for a in answers]
            assert set(statuses) == {200, 503} and statuses.count(200) >= 1
            for shed in (a for a in answers if a.status_code == 503):
                assert shed.headers["content-type"] == "application/problem+json"
                assert shed.json()["type"] == "/problems/overloaded"
                assert shed.headers["retry-after"] in ("1", "2")
            assert server.metric("shed_total", **{"class": "read"}) == statuses.count(503)
            # the orders answered are cached now: hits are answered on the spot, never shed
            cached = [i + 1 for i, status in enumerate(statuses) if status == 200]
            repeat = asyncio.run(_burst([server.url], f"/orders/{cached[0]}", 40, bearer("user1")))
            assert repeat == [200] * 40
            assert server.metric("shed_working") == 0  # every slot given back
            with server.client() as client:
                assert client.get("/healthz").status_code == 200


def test_a_route_deadline_applies_and_an_unknown_route_is_refused(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = base_env(tmp_path, backend.env())
        run_cli(env, "db", "seed", "--orders", "40", "--users", "1")
        wrong = {**env, "SURGE_ROUTE_DEADLINES": "GET /orderz/{id}=5"}
        with pytest.raises(RuntimeError, match=r"no route 'GET /orderz/\{id\}'"):
            with serve(wrong, tmp_path):
                pass
        tight = {**env, "SURGE_ROUTE_DEADLINES": "GET /orders/{id}=1"}  # 1 ms
        with serve(tight, tmp_path) as server, server.client() as client:
            # a miss crosses to SQLite's thread several times: it rarely fits in 1 ms
            answers = [client.get(f"/orders/{i}", headers=bearer("user1")) for i in range(1, 41)]
            assert {a.status_code for a in answers} <= {200, 504}
            late = [a for a in answers if a.status_code == 504]
            assert late and late[0].json()["detail"] == "no answer within 1 ms"
