from __future__ import annotations

from surge.ground.web import json_response
from surge.http.router import Router


def _router() -> Router:
    router = Router()
    ok = json_response(200, {})
    router.add("GET", "/healthz", lambda _r: ok)
    router.add("GET", "/orders/{id}", lambda _r: ok)
    router.add("POST", "/sales/{id}/orders", lambda _r: ok)
    router.add("GET", "/sales/{id}", lambda _r: ok)
    return router


def test_static_and_templated_routes() -> None:
    router = _router()
    route, params = router.match("/healthz") or (None, None)
    assert route is not None and route.template == "/healthz" and params == {}
    route, params = router.match("/orders/42") or (None, None)
    assert route is not None and route.template == "/orders/{id}" and params == {"id": "42"}
    route, params = router.match("/sales/7/orders") or (None, None)
    assert route is not None and route.template == "/sales/{id}/orders"
    assert params == {"id": "7"}
    assert set(route.methods) == {"POST"}


def test_no_match() -> None:
    router = _router()
    for path in ("/", "/orders", "/orders/1/x", "/nope/1", "", "/sales/1/orders/2"):
        assert router.match(path) is None, path


def test_unlimited_gets_are_the_static_routes_added_without_a_class() -> None:
    router = Router()
    router.add("GET", "/healthz", lambda request: (200, b"", b""), None)
    router.add("GET", "/orders/{id}", lambda request: (200, b"", b""), None)  # templated
    router.add("GET", "/sales", lambda request: (200, b"", b""))  # read class
    router.add("POST", "/admin", lambda request: (200, b"", b""), None)  # not a GET
    assert router.unlimited_gets() == ["/healthz"]
