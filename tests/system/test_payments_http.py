"""POST /orders/{id}/pay and /cancel over HTTP (issue 19): every refusal is the problem
the docs name, and the idempotent repeats answer the same."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server import Server, base_env, run_cli, serve
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("payments")
    db = f"sqlite:///{tmp / 'surge.db'}"
    env = base_env(tmp, {"SURGE_DATABASE_URL": db, "SURGE_PAY_WINDOW": "1"})
    run_cli(env, "db", "migrate")
    with serve(env, tmp) as running:
        yield running


def _sale(client: httpx.Client, stock: int) -> int:
    made = client.post(
        "/sales",
        headers=bearer("root", admin=True),
        json={
            "name": "pay",
            "stock": stock,
            "starts_at": "2020-01-01T00:00:00Z",
            "ends_at": "2100-01-01T00:00:00Z",
        },
    )
    return int(made.json()["id"])


def _buy(client: httpx.Client, sale_id: int, user: str) -> dict[str, Any]:
    bought = client.post(
        f"/sales/{sale_id}/orders",
        headers={**bearer(user), "Idempotency-Key": "k"},
        json={"quantity": 1},
    )
    assert bought.status_code == 201, bought.text
    return dict(bought.json())


def _problem(answer: httpx.Response, status: int, kind: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == f"/problems/{kind}", answer.text


def _pay(client: httpx.Client, order: int, user: str, key: str, body: Any) -> httpx.Response:
    headers = {**bearer(user, admin=user == "root")}
    if key:
        headers["Idempotency-Key"] = key
    return client.post(f"/orders/{order}/pay", headers=headers, json=body)


def test_refusals_and_repeats(server: Server) -> None:
    with server.client() as client:
        sale_id = _sale(client, 2)
        order = _buy(client, sale_id, "u")["id"]
        ref = {"payment_ref": "psp-1"}
        _problem(client.post(f"/orders/{order}/pay", json=ref), 401, "unauthorized")
        _problem(_pay(client, order, "stranger", "p", ref), 404, "order-not-found")
        _problem(
            client.post(f"/orders/{order}/cancel", headers=bearer("x")), 404, "order-not-found"
        )
        _problem(_pay(client, order, "root", "p", ref), 403, "forbidden")
        _problem(_pay(client, 0, "u", "p", ref), 400, "bad-order-id")
        _problem(_pay(client, order, "u", "", ref), 400, "missing-idempotency-key")
        for body in (
            {},
            {"payment_ref": ""},
            {"payment_ref": 7},
            {"payment_ref": "x" * 129},
            {"payment_ref": "r", "other": 1},
        ):
            _problem(_pay(client, order, "u", "p", body), 422, "invalid-payment")
        bad_json = client.post(
            f"/orders/{order}/pay",
            headers={**bearer("u"), "Idempotency-Key": "p"},
            content=b"{nope",
        )
        _problem(bad_json, 400, "bad-json")

        paid = _pay(client, order, "u", "p", ref)
        assert paid.status_code == 200 and paid.json()["status"] == "paid"
        again = _pay(client, order, "u", "p", ref)
        assert (again.status_code, again.json()) == (200, paid.json())
        _problem(_pay(client, order, "u", "p", {"payment_ref": "psp-2"}), 422, "key-reused")
        _problem(_pay(client, order, "u", "other", ref), 409, "order-paid")
        _problem(client.post(f"/orders/{order}/cancel", headers=bearer("u")), 409, "order-paid")

        admin = bearer("root", admin=True)
        cancelled = client.post(f"/orders/{order}/cancel", headers=admin)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        repeat = client.post(f"/orders/{order}/cancel", headers=admin)
        assert (repeat.status_code, repeat.json()) == (200, cancelled.json())
        _problem(_pay(client, order, "u", "p2", ref), 409, "order-cancelled")

        late = _buy(client, sale_id, "v")["id"]
        time.sleep(1.2)  # past its pay_by (a 1 s window)
        _problem(_pay(client, late, "v", "p", ref), 409, "order-expired")
        _problem(client.post(f"/orders/{late}/cancel", headers=bearer("v")), 409, "order-expired")
        assert client.get(f"/orders/{late}", headers=bearer("v")).json()["status"] == "expired"
        time.sleep(0.6)  # the sale view's cache
        assert client.get(f"/sales/{sale_id}").json()["remaining"] == 2  # both came back
