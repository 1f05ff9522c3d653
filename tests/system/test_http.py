"""The HTTP surface of a real embedded server: answers, errors and protocol edges."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from tests.server import Server
from tests.system.conftest import bearer, owner

PROBLEM = "application/problem+json"


def _problem(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"] == f"/problems/{kind}"
    assert body["title"] and body["detail"]


def test_owner_reads_an_order(embedded_server: Server) -> None:
    with embedded_server.client() as client:
        response = client.get("/orders/5", headers=bearer(owner(5)))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    order = response.json()
    assert order["id"] == 5 and order["user_id"] == owner(5)
    assert set(order) == {"id", "sale_id", "user_id", "quantity", "status", "created_at"}
    assert order["created_at"].endswith("Z")


def test_admin_reads_any_order_and_strangers_get_404(embedded_server: Server) -> None:
    with embedded_server.client() as client:
        assert client.get("/orders/5", headers=bearer("boss", admin=True)).status_code == 200
        stranger = client.get("/orders/5", headers=bearer("someone-else"))
        missing = client.get("/orders/999999", headers=bearer(owner(5)))
    _problem(stranger, 404, "order-not-found")
    _problem(missing, 404, "order-not-found")
    assert stranger.content == missing.content


@pytest.mark.parametrize(
    "raw_id",
    [
        "abc",
        "-1",
        "0",
        "1.5",
        "9" * 30,
        "%E2%91%A0",
        "%D9%A1",
        "1%00",
        "%20",
        "1e5",
        "9223372036854775808",
    ],
)
def test_bad_ids_are_400_problems(embedded_server: Server, raw_id: str) -> None:
    with embedded_server.client() as client:
        response = client.get(f"/orders/{raw_id}", headers=bearer("user1"))
    _problem(response, 400, "bad-order-id")


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Bearer nonsense"}, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unauthorized"),
    ],
)
def test_missing_or_bad_tokens_are_401(
    embedded_server: Server, headers: dict[str, str], kind: str
) -> None:
    with embedded_server.client() as client:
        response = client.get("/orders/5", headers=headers)
    _problem(response, 401, kind)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_unknown_route_and_method(embedded_server: Server) -> None:
    with embedded_server.client() as client:
        _problem(client.get("/nope"), 404, "not-found")
        wrong = client.post("/orders/5", headers=bearer("user5"))
    _problem(wrong, 405, "method-not-allowed")
    assert wrong.headers["allow"] == "GET, HEAD"


def test_head_is_answered_wherever_get_is(embedded_server: Server) -> None:
    """RFC 9110 9.3.2: the same head as GET, no body (issue 12 #11: it was 405)."""
    with embedded_server.client() as client:
        for path, headers in (("/orders/5", bearer(owner(5))), ("/healthz", {})):
            get = client.get(path, headers=headers)
            head = client.head(path, headers=headers)
            assert head.status_code == get.status_code == 200
            assert head.content == b""
            assert head.headers["content-length"] == str(len(get.content))
            assert head.headers["content-type"] == get.headers["content-type"]


def test_request_ids_are_made_or_kept(embedded_server: Server) -> None:
    with embedded_server.client() as client:
        made = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
        kept = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        junk = client.get("/healthz", headers={"X-Request-ID": "a b<script>"})
    assert len(made) == 3
    assert kept.headers["x-request-id"] == "abc-123"
    assert junk.headers["x-request-id"] != "a b<script>"


def _raw(server: Server, payload: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if payload.count(b"\r\n\r\n") <= b"".join(chunks).count(b"HTTP/1.1"):
                break
    return b"".join(chunks)


def test_malformed_http_gets_400_and_the_server_lives(embedded_server: Server) -> None:
    answer = _raw(embedded_server, b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"application/problem+json" in answer
    assert httpx.get(embedded_server.url + "/healthz").status_code == 200


def test_oversized_headers_are_431(embedded_server: Server) -> None:
    answer = _raw(
        embedded_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_oversized_body_is_413(embedded_server: Server) -> None:
    with embedded_server.client() as client:
        response = client.post("/orders/1", content=b"x" * 70_000)
    _problem(response, 413, "body-too-large")


def test_pipelined_requests_are_answered_in_order(embedded_server: Server) -> None:
    token = bearer(owner(3))["Authorization"]
    requests = b"".join(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n".encode()
        for path in ("/orders/3", "/healthz", "/orders/77777", "/orders/3")
    )
    answer = _raw(embedded_server, requests)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"200", b"404", b"200"]


def test_health_readiness_and_tasks(embedded_server: Server) -> None:
    with httpx.Client(base_url=embedded_server.internal_url, timeout=10) as client:
        health = client.get("/healthz")
        ready = client.get("/readyz")
        anonymous = client.get("/debug/tasks")
        user = client.get("/debug/tasks", headers=bearer("user1"))
        admin = client.get("/debug/tasks", headers=bearer("root", admin=True))
    with embedded_server.client() as client:
        public_health = client.get("/healthz")
        public_ready = client.get("/readyz")
        public_tasks = client.get("/debug/tasks", headers=bearer("root", admin=True))
        public_metrics = client.get("/metrics")
    for answer in (health, public_health):
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
    for answer in (ready, public_ready):
        assert answer.status_code == 200 and answer.json()["checks"] == {"database": "ok"}
    # what tells about the process is for its operators: the internal listener only
    _problem(public_tasks, 404, "not-found")
    _problem(public_metrics, 404, "not-found")
    _problem(anonymous, 401, "unauthorized")
    _problem(user, 403, "forbidden")
    tasks = admin.json()
    assert tasks["total"] >= 1 and sum(tasks["by_coroutine"].values()) == tasks["total"]


def test_metrics_use_route_templates(embedded_server: Server) -> None:
    with embedded_server.client() as client:
        client.get("/orders/6", headers=bearer(owner(6)))
        client.get("/orders/abc", headers=bearer(owner(6)))
    text = httpx.get(embedded_server.internal_url + "/metrics").text
    assert 'http_requests_total{method="GET",route="/orders/{id}",status="200",worker="0"}' in text
    assert 'route="/orders/6"' not in text and "/orders/abc" not in text
    for name in (
        "http_request_duration_seconds_bucket",
        "cache_hits_total",
        "cache_misses_total",
        "db_pool_in_use",
        "event_loop_lag_seconds",
        "asyncio_tasks",
        "http_in_flight",
    ):
        assert name in text, name


def test_my_orders_are_paginated_newest_first(embedded_server: Server) -> None:
    seen: list[int] = []
    cursor = None
    with embedded_server.client() as client:
        for _ in range(10):
            query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
            page = client.get("/users/me/orders" + query, headers=bearer("user4"))
            assert page.status_code == 200
            body = page.json()
            assert len(body["items"]) <= 3
            assert all(item["user_id"] == "user4" for item in body["items"])
            seen += [item["id"] for item in body["items"]]
            cursor = body["next"]
            if cursor is None:
                break
        bad = client.get("/users/me/orders?cursor=abc", headers=bearer("user4"))
    expected = [k for k in range(200, 0, -1) if owner(k) == "user4"]
    assert seen == expected
    _problem(bad, 400, "bad-cursor-id")
