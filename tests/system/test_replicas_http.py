"""A Surge process on a MariaDB primary and its replica (real replication): orders read
on the replica, a purchase readable at once, a killed replica costing no answer and
readiness saying `degraded` until it is back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.replication import replication
from tests.server import Server, base_env, run_cli, serve
from tests.system.conftest import bearer, owner
from tests.system.test_flash_sale import _create_sale


def _ready(server: Server) -> dict[str, object]:
    answer = httpx.get(server.url + "/readyz", timeout=5)
    assert answer.status_code == 200  # a replica is never required: degraded, in service
    body: dict[str, object] = answer.json()
    return body


def _until(check: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)


def test_orders_read_on_the_replica_and_a_purchase_at_once(tmp_path: Path) -> None:
    with replication("mariadb") as replicated:
        env = base_env(
            tmp_path,
            {
                "SURGE_DATABASE_URL": replicated.primary_url,
                "SURGE_DATABASE_REPLICA_URL": replicated.replica_url,
                "SURGE_DATABASE_REPLICA_MAX_LAG": "2",
            },
        )
        run_cli(env, "db", "migrate")
        run_cli(env, "db", "seed", "--orders", "100", "--users", "10")
        with serve(env, tmp_path) as server:
            _until(lambda: _ready(server)["status"] == "ready")
            assert _ready(server)["checks"] == {"database": "ok", "database_replicas": "ok"}
            with server.client() as client:
                for order_id in (1, 2, 3):
                    got = client.get(f"/orders/{order_id}", headers=bearer(owner(order_id)))
                    assert got.status_code == 200 and got.json()["id"] == order_id
            assert server.metric("db_replica_reads_total") >= 1

            replicated.pause()  # the replica falls silent: a purchase is still read at once
            sale = _create_sale(server, stock=5)
            with server.client() as client:
                bought = client.post(
                    f"/sales/{sale}/orders",
                    json={"quantity": 1},
                    headers={**bearer("buyer"), "Idempotency-Key": "k1"},
                )
                assert bought.status_code == 201, bought.text
                new = bought.json()["id"]
                got = client.get(f"/orders/{new}", headers=bearer("buyer"))
                assert got.status_code == 200 and got.json() == bought.json()
                mine = client.get("/users/me/orders", headers=bearer("buyer")).json()
                assert [o["id"] for o in mine["items"]] == [new]
            replicated.resume()

            replicated.kill_replica()
            with server.client() as client:  # no answer lost: the primary serves
                for order_id in (4, 5, 6):
                    got = client.get(f"/orders/{order_id}", headers=bearer(owner(order_id)))
                    assert got.status_code == 200, got.text
            _until(lambda: _ready(server)["status"] == "degraded")
            ready = _ready(server)
            assert ready["status"] == "degraded", ready
            assert str(ready["checks"]["database_replicas"]).startswith("error")  # type: ignore[index]
            assert server.metric("db_replica_lag_seconds") == -1

            replicated.start_replica()
            _until(lambda: _ready(server)["status"] == "ready", 40)
            assert _ready(server)["status"] == "ready"
