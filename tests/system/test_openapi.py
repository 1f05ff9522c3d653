"""/openapi.json is a valid OpenAPI 3.1 document, and real responses match it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from surge import db
from surge.app import App
from surge.config import Settings
from tests.server import Server
from tests.system.conftest import bearer, owner


@pytest.fixture(scope="module")
def document(embedded_server: Server) -> dict[str, Any]:
    served: dict[str, Any] = httpx.get(embedded_server.url + "/openapi.json").json()
    return served


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


@pytest.mark.anyio
async def test_every_route_is_documented(document: dict[str, Any], tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'routes.db'}"
    await asyncio.to_thread(db.migrate, database)
    app = App(Settings(database_url=database, jwt_secret="x" * 32, data_dir=tmp_path))
    await app.start()
    try:
        routes = set(app.router.templates) | set(app.internal_router.templates)
        assert routes == set(document["paths"])
        internal = {t for t, item in document["paths"].items() if "servers" in item}
        assert internal == {"/metrics", "/debug/tasks"}  # the internal listener's own
        assert not internal & set(app.router.templates)
    finally:
        await app.close()


def _check(
    document: dict[str, Any], template: str, response: httpx.Response, method: str = "get"
) -> None:
    operation = document["paths"][template][method]
    spec = operation["responses"][str(response.status_code)]
    media = response.headers["content-type"].split(";")[0]
    schema = spec["content"][media]["schema"]
    body = response.json() if "json" in media else response.text
    OAS31Validator({**schema, "components": document["components"]}).validate(body)


@pytest.mark.parametrize(
    ("path", "template", "headers"),
    [
        ("/orders/4", "/orders/{id}", bearer(owner(4))),
        ("/orders/4", "/orders/{id}", bearer("stranger")),
        ("/orders/x", "/orders/{id}", bearer(owner(4))),
        ("/orders/4", "/orders/{id}", {}),
        ("/healthz", "/healthz", {}),
        ("/readyz", "/readyz", {}),
        ("/metrics", "/metrics", {}),
        ("/openapi.json", "/openapi.json", {}),
        ("/debug/tasks", "/debug/tasks", bearer("root", admin=True)),
        ("/debug/tasks", "/debug/tasks", bearer("user1")),
    ],
)
def test_responses_match_the_document(
    embedded_server: Server,
    document: dict[str, Any],
    path: str,
    template: str,
    headers: dict[str, str],
) -> None:
    internal = "servers" in document["paths"][template]
    base = embedded_server.internal_url if internal else embedded_server.url
    response = httpx.get(base + path, headers=headers)
    _check(document, template, response)


def test_sale_routes_match_the_document(embedded_server: Server, document: dict[str, Any]) -> None:
    live_sale = "/sales/11"  # the seed's live demo sale
    with embedded_server.client() as client:
        _check(document, "/sales/{id}", client.get(live_sale))
        _check(document, "/sales/{id}", client.get("/sales/999"))
        listed = client.get("/sales?limit=1")
        assert [s["id"] for s in listed.json()["items"]] == [11]  # the seed's open one
        _check(document, "/sales", listed)
        _check(document, "/sales", client.get("/sales?limit=101"))
        _check(document, "/sales", client.get("/sales?cursor=x"))
        _check(
            document,
            "/users/me/orders",
            client.get("/users/me/orders?limit=2", headers=bearer(owner(1))),
        )
        buy = {**bearer("openapi-buyer"), "Idempotency-Key": "spec-1"}
        first = client.post(live_sale + "/orders", json={"quantity": 1}, headers=buy)
        assert first.status_code == 201
        _check(document, "/sales/{id}/orders", first, "post")
        _check(
            document,
            "/sales/{id}/orders",
            client.post(live_sale + "/orders", json={"quantity": 2}, headers=buy),
            "post",
        )
        _check(
            document,
            "/sales/{id}/orders",
            client.post(
                live_sale + "/orders",
                json={"quantity": 1},
                headers={**buy, "Idempotency-Key": "spec-2"},
            ),
            "post",
        )
        created = client.post(
            "/sales",
            headers=bearer("root", admin=True),
            json={
                "name": "spec",
                "stock": 5,
                "starts_at": "2026-01-01T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
            },
        )
        _check(document, "/sales", created, "post")
        _check(document, "/sales", client.post("/sales", headers=bearer("x"), json={}), "post")
