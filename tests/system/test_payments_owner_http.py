"""Someone else's order is 404 and untouched whatever the database's collation (found by
the outside attack on the order lifecycle): on MariaDB/MySQL the ownership check in SQL
(`WHERE user_id = :caller`) used to ignore case, accents and trailing spaces, so a caller
whose id differed only so paid or cancelled the buyer's order, or replayed its purchase;
migration 0006 makes those columns binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends import make_backend
from tests.server import base_env, run_cli, serve
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["mariadb+redis", "postgresql+redis", "embedded"])
def test_someone_elses_order_is_untouched_whatever_the_collation(kind: str, tmp_path: Path) -> None:
    with make_backend(kind, tmp_path) as backend:
        env = base_env(tmp_path, {**backend.env(), "SURGE_PAY_WINDOW": "600"})
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as server, server.client() as client:
            made = client.post(
                "/sales",
                headers=bearer("root", admin=True),
                json={
                    "name": "collation",
                    "stock": 2,
                    "starts_at": "2020-01-01T00:00:00Z",
                    "ends_at": "2100-01-01T00:00:00Z",
                },
            )
            sale = made.json()["id"]
            orders = {}
            for user in ("alice", "carol"):
                bought = client.post(
                    f"/sales/{sale}/orders",
                    headers={**bearer(user), "Idempotency-Key": "k"},
                    json={"quantity": 1},
                )
                assert bought.status_code == 201, bought.text
                orders[user] = bought.json()["id"]

            cancel = client.post(f"/orders/{orders['alice']}/cancel", headers=bearer("ALICE"))
            assert cancel.status_code == 404, cancel.text
            pay = client.post(
                f"/orders/{orders['carol']}/pay",
                headers={**bearer("Carol "), "Idempotency-Key": "x"},
                json={"payment_ref": "attacker-ref"},
            )
            assert pay.status_code == 404, pay.text

            for user in ("alice", "carol"):
                seen = client.get(f"/orders/{orders[user]}", headers=bearer(user))
                assert seen.json()["status"] == "pending", (user, seen.text)
            assert client.get(f"/sales/{sale}").json()["remaining"] == 0


@pytest.mark.parametrize("kind", ["mariadb+redis", "postgresql+redis", "embedded"])
def test_a_purchase_key_never_replays_someone_elses_order(kind: str, tmp_path: Path) -> None:
    """The same collation on `ux_orders_user_id_idempotency_key`: "DAVE" buying with
    dave's Idempotency-Key collides with dave's order, and is answered dave's order (201
    with user_id "dave"): another user's order disclosed, and "DAVE" shares dave's limit."""
    with make_backend(kind, tmp_path) as backend:
        env = base_env(tmp_path, {**backend.env(), "SURGE_PAY_WINDOW": "600"})
        run_cli(env, "db", "migrate")
        with serve(env, tmp_path) as server, server.client() as client:
            made = client.post(
                "/sales",
                headers=bearer("root", admin=True),
                json={
                    "name": "collation",
                    "stock": 5,
                    "starts_at": "2020-01-01T00:00:00Z",
                    "ends_at": "2100-01-01T00:00:00Z",
                },
            )
            sale = made.json()["id"]
            first = client.post(
                f"/sales/{sale}/orders",
                headers={**bearer("dave"), "Idempotency-Key": "same"},
                json={"quantity": 1},
            )
            assert first.status_code == 201, first.text
            other = client.post(
                f"/sales/{sale}/orders",
                headers={**bearer("DAVE"), "Idempotency-Key": "same"},
                json={"quantity": 1},
            )
            assert other.status_code == 201, other.text
            assert other.json()["user_id"] == "DAVE", other.text
            assert other.json()["id"] != first.json()["id"]
