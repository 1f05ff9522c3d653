"""A real Prometheus (Debian's) scraping a running Surge server and worker while they
serve traffic, with deploy/prometheus/alerts.yml loaded: every rule evaluates without
error, every series an alert uses exists, and every query of the Grafana dashboard
returns data (issue 14, item 5)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.sync.client import connect

from tests.backends import Backend, free_port, make_backend, unavailable, wait_listening
from tests.deploy.dashboard_picture import render
from tests.deploy.test_grafana import expressions, substitute
from tests.deploy.test_prometheus import ALERTS, metric_names, rules
from tests.server import Server, base_env, run_cli, serve, work
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow
USERS = 5


def _address(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus is not installed (scripts/install-system-deps.sh)")
    directory = tmp_path_factory.mktemp("prometheus")
    with make_backend("mariadb+redis", directory) as backend:
        env = base_env(directory, backend.env())
        # so that the refusals the dashboard shows happen too: 429 (a buyer past the write
        # limit) and 504 (a route whose deadline no database answer can meet)
        env["SURGE_RATE_LIMIT_WRITE"] = "2/2"
        env["SURGE_ROUTE_DEADLINES"] = "GET /users/me/orders=1"
        run_cli(env, "db", "migrate")
        run_cli(env, "db", "seed", "--orders", "50", "--users", str(USERS))
        with serve(env, directory) as server, work(env, directory) as worker:
            port = free_port()
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "surge",
                        "static_configs": [{"targets": [_address(server.internal_url)]}],
                    },
                    {
                        "job_name": "surge-worker",
                        "static_configs": [{"targets": [_address(worker.url)]}],
                    },
                ],
            }
            (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_listening(port, 30, "prometheus")
                _traffic(server, backend, seconds=12)
                yield f"http://127.0.0.1:{port}"
            finally:
                process.terminate()
                process.wait(timeout=20)


def _traffic(server: Server, backend: Backend, seconds: float) -> None:
    """Order queries (hits, misses, not found, no token), a sale and purchases, chat
    messages through the hub, while Prometheus scrapes every second."""
    token = bearer("talker")["Authorization"].removeprefix("Bearer ")
    url = f"{server.url.replace('http', 'ws')}/ws?token={token}"
    with server.client() as client, connect(url, open_timeout=5) as hub:
        made = client.post(
            "/sales",
            json={
                "name": "live",
                "stock": 3,
                "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2100-01-01T00:00:00Z",
            },
            headers=bearer("root", admin=True),
        )
        assert made.status_code == 201, made.text
        sale = made.json()["id"]
        hub.send(json.dumps({"op": "subscribe", "room": "chat:live", "id": 0}))
        started, n = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            n += 1
            order = n % 60 + 1  # 51-60 do not exist
            client.get(f"/orders/{order}", headers=bearer(f"user{(order - 1) % USERS + 1}"))
            if n % 10 == 0:
                # a chat message fanned out to its room (the hub's panels)
                hub.send(json.dumps({"op": "publish", "room": "chat:live", "data": n, "id": n}))
                client.get("/orders/1")  # 401
                client.get("/users/me/orders", headers=bearer("user1"))  # 504
                for _ in range(3):  # the third is over the write limit: 429
                    client.post(
                        f"/sales/{sale}/orders",
                        json={"quantity": 1},
                        headers={**bearer("eager"), "Idempotency-Key": f"e{n}"},
                    )
                client.post(
                    f"/sales/{sale}/orders",
                    json={"quantity": 1},
                    headers={**bearer(f"buyer{n}"), "Idempotency-Key": f"k{n}"},
                )


def _query(base: str, expr: str) -> list[Any]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[Any] = answer["data"]["result"]
    return result


def test_every_rule_evaluates(prometheus: str) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(evaluated) >= {r.get("alert") or r["record"] for r in rules()}
    broken = {name: r.get("lastError") for name, r in evaluated.items() if r["health"] != "ok"}
    assert broken == {}, broken


def test_every_series_an_alert_uses_exists(prometheus: str) -> None:
    names = {name for rule in rules() for name in metric_names(rule["expr"])}
    missing = sorted(n for n in names if not _query(prometheus, f'count({{__name__="{n}"}})'))
    assert missing == [], missing


def test_the_dashboard_draws_from_prometheus(prometheus: str, tmp_path: Path) -> None:
    """Every panel, drawn from Prometheus's answers over the traffic, has lines in it.
    SURGE_DASHBOARD_PICTURE=path writes the picture there (docs/dashboard.svg)."""
    end = time.time()
    svg, drawn = render(prometheus, end - 15, end)
    assert [title for title, count in drawn.items() if count == 0] == []
    target = Path(os.environ.get("SURGE_DASHBOARD_PICTURE", tmp_path / "dashboard.svg"))
    target.write_text(svg)


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    empty = [(ref, expr) for ref, expr in expressions() if not _query(prometheus, substitute(expr))]
    assert empty == [], empty
