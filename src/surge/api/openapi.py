"""The OpenAPI 3.1 document for every route; tests validate real responses against it."""

from __future__ import annotations

from typing import Any

import orjson

from surge.api.openapi_orders import order_paths
from surge.api.openapi_schemas import PROBLEM_TYPES, SCHEMAS

# Served on the internal listener only (SURGE_INTERNAL_PORT; docs/security.md).
INTERNAL = [
    {
        "url": "http://{host}:{port}",
        "description": "the internal listener: never exposed publicly",
        "variables": {"host": {"default": "127.0.0.1"}, "port": {"default": "9181"}},
    }
]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Surge",
        "version": "0.1.0",
        "description": "Flash sales and real-time feeds. Errors are RFC 9457 problems; "
        "problem types: " + "; ".join(f"/problems/{k}: {v}" for k, v in PROBLEM_TYPES.items()),
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": SCHEMAS,
    },
    "paths": {
        "/sales": {
            "get": {
                "summary": "The sales not ended yet, newest first; pass `next` as `cursor`",
                "description": "Anyone. Upcoming, live and sold-out sales, each with its live "
                "`remaining` and `state` as GET /sales/{id} gives them; each page is cached "
                "for 1 s per process.",
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                ],
                "responses": {
                    "200": _json("a page", "SaleList"),
                    "400": _problem("bad cursor or limit"),
                    "504": _problem("deadline exceeded"),
                },
            },
            "post": {
                "summary": "Create a sale (admin); it may be created already live",
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewSale"}}
                    },
                },
                "responses": {
                    "201": _json("the sale", "Sale"),
                    "400": _problem("not JSON"),
                    "401": _problem("missing or invalid token"),
                    "403": _problem("not an admin (checked before the body)"),
                    "422": _problem("invalid field"),
                },
            },
        },
        "/sales/{id}": {
            "get": {
                "summary": "A sale with its remaining stock and state (cached 0.5 s)",
                "parameters": [_ID],
                "responses": {
                    "200": _json("the sale", "Sale"),
                    "400": _problem("bad id"),
                    "404": _problem("no such sale"),
                },
            }
        },
        "/sales/{id}/orders": {
            "post": {
                "summary": "Buy: 201 only once the order is committed",
                "security": _BEARER,
                "parameters": [
                    _ID,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PurchaseRequest"}
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        "the order; a retry with the same key gets these very bytes, "
                        "whatever was restarted meanwhile, and even after the sale ended",
                        "Order",
                    ),
                    "400": _problem("bad id, missing or bad key, not JSON"),
                    "401": _problem("missing or invalid token"),
                    "403": _problem("the sale is not live (a key that bought still replays)"),
                    "404": _problem("no such sale"),
                    "409": _problem("sold out, limit reached, or the same key in flight"),
                    "422": _problem("invalid quantity, or the key reused with another body"),
                    "503": _problem(
                        "the gate or the database is unavailable, or the order may or may "
                        "not be stored: retry with the same Idempotency-Key"
                    ),
                },
            }
        },
        "/users/me/orders": {
            "get": {
                "summary": "The caller's orders, newest first; pass `next` as `cursor`",
                "security": _BEARER,
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                ],
                "responses": {
                    "200": _json("a page", "OrderList"),
                    "400": _problem("bad cursor or limit"),
                    "401": _problem("missing or invalid token"),
                },
            }
        },
        "/rooms/{room}": {
            "get": {
                "summary": "How many subscribers a room has, across processes",
                "description": "This process's count now, the others' as of their last "
                "report (every 5 s). A `user:ID` room: that user, an admin or a service only.",
                "parameters": [
                    {
                        "name": "room",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json("the count", "Presence"),
                    "400": _problem("bad room"),
                    "401": _problem("a user's room asked without a token"),
                    "403": _problem("someone else's user room"),
                },
            }
        },
        "/rooms/{room}/messages": {
            "post": {
                "summary": "Publish into a room from a backend: the message's sequence number",
                "description": "Role `service` or `admin`. The body is the message's data "
                "(any JSON value, at most SURGE_WS_MAX_MESSAGE bytes); every subscriber gets "
                '`{"op":"message","room":R,"seq":N,"data":BODY}` (docs/realtime.md). Rooms '
                "`chat:NAME` and `user:ID`; `sale:ID` is the server's (403).",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "room",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^(chat|user):[A-Za-z0-9_.@-]+$"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {}}},
                },
                "responses": {
                    "201": _json("published", "Published"),
                    "400": _problem("bad room, or the body is not JSON"),
                    "401": _problem("missing or invalid token"),
                    "403": _problem("not a service or admin token, or a sale room"),
                    "413": _problem("larger than SURGE_WS_MAX_MESSAGE"),
                },
            }
        },
        "/orders/{id}": {
            "get": {
                "summary": "One order, to its owner or an admin",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807},
                    }
                ],
                "responses": {
                    "200": _json("the order", "Order"),
                    "400": _problem("bad id"),
                    "401": _problem("missing or invalid token"),
                    "404": _problem("no such order, or someone else's"),
                    "503": _problem("the database is unavailable"),
                    "504": _problem("deadline exceeded"),
                },
            }
        },
        "/ws": {
            "get": {
                "summary": "WebSocket: rooms, chat, live sale stock (docs/realtime.md)",
                "description": "Upgrade with `Connection: Upgrade`, `Upgrade: websocket`. "
                "Token optional (`?token=JWT` or `Authorization: Bearer`): anonymous clients "
                "may subscribe only.",
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "a JWT, for clients that cannot set headers (empty: 401)",
                    }
                ],
                "responses": {
                    "101": {"description": "switched to the WebSocket protocol"},
                    "400": _problem("bad Sec-WebSocket-Key"),
                    "401": _problem("invalid token"),
                    "403": _problem("Origin not allowed (SURGE_WS_ORIGINS)"),
                    "426": _problem("not a WebSocket upgrade, or not version 13"),
                    "429": _problem("the user holds SURGE_WS_MAX_PER_USER connections already"),
                    "503": _problem("at the connection limit, or shutting down"),
                },
            }
        },
        "/demo": {
            "get": {
                "summary": "The showcase page: the open sales with live stock, buying, "
                "the buyer's order events, chat",
                "description": "Built on GET /sales, POST /sales/{id}/orders and /ws; no "
                "build step, nothing fetched from elsewhere. Presets from the URL: "
                "`?token=JWT&room=chat:NAME&say=TEXT&sale=ID` (a sale not on the list).",
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "responses": {"200": _json("alive", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: not draining and every dependency reachable",
                "responses": {"200": _json("ready", "Health"), "503": _json("not ready", "Health")},
            }
        },
        "/metrics": {
            "servers": INTERNAL,
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/debug/tasks": {
            "servers": INTERNAL,
            "get": {
                "summary": "Live asyncio tasks by coroutine (admin)",
                "security": _BEARER,
                "responses": {
                    "200": _json("task counts", "Tasks"),
                    "401": _problem("missing or invalid token"),
                    "403": _problem("not an admin"),
                },
            },
        },
    },
}

DOCUMENT["paths"].update(order_paths(_problem, _json, _BEARER, _ID))

# Routes never rate-limited (surge.api.ops, surge.app: route_class None).
UNLIMITED = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/ws", "/debug/tasks")
_RATE_LIMITED = {
    **_problem("over the caller's rate limit (docs/protection.md)"),
    "headers": {
        name: {"schema": {"type": kind}, "description": text}
        for name, kind, text in (
            ("Retry-After", "integer", "seconds until a retry may pass, with jitter"),
            ("RateLimit-Policy", "string", 'IETF draft: `"read";q=BURST;w=SECONDS`'),
            ("RateLimit", "string", 'IETF draft: `"read";r=0;t=SECONDS`'),
        )
    },
}
for _path, _methods in DOCUMENT["paths"].items():
    if _path not in UNLIMITED:
        for _key, _operation in _methods.items():
            if _key == "servers":
                continue
            _operation["responses"]["429"] = _RATE_LIMITED
            # load shedding (docs/protection.md) may refuse any of them with `overloaded`
            _operation["responses"].setdefault(
                "503", _problem("overloaded (load shedding), or a dependency is down; retry")
            )

ENCODED = orjson.dumps(DOCUMENT)
