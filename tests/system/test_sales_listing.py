"""GET /sales served by a real process on every backend kind: the open sales, paged, with
the gate's live counts, cached a second."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.backends import Backend
from tests.server import base_env, run_cli, serve
from tests.system.conftest import bearer


def _create(client: httpx.Client, name: str, starts_in: float, ends_in: float) -> int:
    now = datetime.now(UTC)
    answer = client.post(
        "/sales",
        headers=bearer("root", admin=True),
        json={
            "name": name,
            "stock": 3,
            "per_user_limit": 2,
            "starts_at": (now + timedelta(seconds=starts_in)).isoformat(),
            "ends_at": (now + timedelta(seconds=ends_in)).isoformat(),
        },
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _listed(client: httpx.Client, query: str = "") -> dict[str, Any]:
    answer = client.get("/sales" + query)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    page: dict[str, Any] = answer.json()
    return page


def test_the_open_sales_are_listed_live(backend: Backend, tmp_path: Path) -> None:
    env = base_env(tmp_path, backend.env())
    run_cli(env, "db", "migrate")
    with serve(env, tmp_path) as server, server.client() as client:
        assert _listed(client) == {"items": [], "next": None}
        live = _create(client, "live", -60, 3600)
        _create(client, "over", -7200, -3600)
        upcoming = _create(client, "soon", 3600, 7200)
        time.sleep(1.1)  # the empty page above is cached for a second
        page = _listed(client)
        assert [(s["id"], s["name"], s["state"]) for s in page["items"]] == [
            (upcoming, "soon", "upcoming"),
            (live, "live", "live"),
        ]
        assert page["next"] is None
        assert page["items"][1]["stock"] == 3 and page["items"][1]["per_user_limit"] == 2
        bought = client.post(
            f"/sales/{live}/orders",
            json={"quantity": 2},
            headers={**bearer("lister"), "Idempotency-Key": "list-1"},
        )
        assert bought.status_code == 201, bought.text
        time.sleep(1.1)  # past the cached page's second
        assert _listed(client)["items"][1]["remaining"] == 1  # the gate's count
        assert client.get(f"/sales/{live}").json()["remaining"] == 1  # as GET /sales/{id}
        first = _listed(client, "?limit=1")
        assert [s["id"] for s in first["items"]] == [upcoming]
        assert first["next"] == str(upcoming)
        rest = _listed(client, f"?limit=1&cursor={first['next']}")
        assert [s["id"] for s in rest["items"]] == [live] and rest["next"] is None
        assert client.head("/sales").status_code == 200
        for query, kind in (
            ("?limit=0", "bad-limit"),
            ("?limit=101", "bad-limit"),
            ("?limit=ten", "bad-limit"),
            ("?cursor=-3", "bad-cursor-id"),
        ):
            refused = client.get("/sales" + query)
            assert refused.status_code == 400
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"] == f"/problems/{kind}"
        assert server.stop() == 0
