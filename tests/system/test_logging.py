"""A server's output is JSON lines; the access log is off by default, sampled or full
when asked, and names each request by the id its answer carried."""

from __future__ import annotations

import json
from pathlib import Path

from tests.backends import make_backend
from tests.server import base_env, serve


def test_json_lines_and_the_access_log(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = base_env(tmp_path, backend.env())
        env["SURGE_ACCESS_LOG"] = "all"
        env.pop("SURGE_LOG_FORMAT", None)  # the default: json
        with serve(env, tmp_path) as server:
            with server.client() as client:
                answer = client.get("/orders/abc", headers={"x-request-id": "trace-77"})
                assert answer.status_code == 401  # no token
                assert answer.headers["x-request-id"] == "trace-77"
                client.get("/healthz")
            server.stop()
            records = [json.loads(line) for line in server.output().splitlines()]
    assert {"time", "level", "logger", "message", "pid"} <= set(records[0])
    access = [r for r in records if r["logger"] == "surge.access"]
    (traced,) = [r for r in access if r["request_id"] == "trace-77"]
    assert (traced["route"], traced["status"], traced["client"]) == (
        "/orders/{id}",
        401,
        "127.0.0.1",
    )
    assert traced["message"] == "GET /orders/abc 401"
    assert isinstance(traced["duration_ms"], float)
    assert any(r["message"] == "GET /healthz 200" for r in access)
    assert any("listening on http://" in str(r["message"]) for r in records)


def test_no_access_log_by_default(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        env = base_env(tmp_path, backend.env())
        with serve(env, tmp_path) as server:
            with server.client() as client:
                for _ in range(20):
                    client.get("/healthz")
            server.stop()
            records = [json.loads(line) for line in server.output().splitlines()]
    assert records and not [r for r in records if r["logger"] == "surge.access"]
