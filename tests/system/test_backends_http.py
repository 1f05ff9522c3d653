"""The order query served by a real process on every backend kind."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.backends import Backend
from tests.load import burst
from tests.server import base_env, run_cli, serve
from tests.system.conftest import bearer


def test_order_query_and_stampede(backend: Backend, tmp_path: Path) -> None:
    env = base_env(tmp_path, backend.env())
    env["SURGE_DEADLINE_MS"] = "5000"  # this test is about single-flight, not deadlines
    run_cli(env, "db", "migrate")
    run_cli(env, "db", "seed", "--orders", "50", "--users", "5")
    with serve(env, tmp_path) as server:
        with server.client() as client:
            first = client.get("/orders/7", headers=bearer("user2"))
            assert first.status_code == 200 and first.json()["user_id"] == "user2"
            assert client.get("/orders/7", headers=bearer("user3")).status_code == 404
            ready = client.get("/readyz").json()
            expected = {"database": "ok", **({"redis": "ok"} if backend.redis_url else {})}
            assert ready == {"status": "ready", "checks": expected}
        queries = server.metric("db_queries_total")
        host, port = server.url.removeprefix("http://").split(":")
        tally = asyncio.run(burst(host, int(port), "/orders/13", bearer("user3"), 1000))
        assert tally.errors == []
        assert tally.statuses == {200: 1000}
        assert server.metric("db_queries_total") == queries + 1  # one query for 1,000
        missing = asyncio.run(burst(host, int(port), "/orders/424242", bearer("user3"), 300))
        assert missing.statuses == {404: 300}
        assert server.metric("db_queries_total") == queries + 2  # and one for a bad id
        # ids 7, 13 and 424242 each reached the shared cache exactly once
        assert server.metric("cache_misses_total", layer="shared") == 3
        if backend.redis_url:
            assert server.metric("redis_pool_size") > 0
        assert server.stop() == 0
