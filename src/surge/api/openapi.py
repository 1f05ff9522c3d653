"""The OpenAPI 3.1 document for every route; tests validate real responses against it."""

from __future__ import annotations

from typing import Any

import orjson

PROBLEM_TYPES = {
    "bad-order-id": "the order id is not a positive integer",
    "bad-sale-id": "the sale id is not a positive integer",
    "bad-cursor-id": "the page cursor is not a positive integer",
    "bad-limit": "the page size is out of range",
    "bad-json": "the body is not a JSON object",
    "invalid-sale": "a field of the new sale is missing or out of range",
    "invalid-purchase": "quantity is missing, not an integer or out of range",
    "missing-idempotency-key": "a purchase needs an Idempotency-Key header",
    "bad-idempotency-key": "the Idempotency-Key is longer than 64 characters or not printable",
    "sale-not-found": "no such sale",
    "sale-not-live": "the sale has not started or has ended",
    "sold-out": "no stock left",
    "limit-reached": "the user bought as many as the sale allows",
    "key-in-flight": "the first request with this Idempotency-Key is still being processed, "
    "or its commit failed unheard and may still land: retry",
    "key-reused": "the Idempotency-Key was used with another request",
    "unauthorized": "missing, malformed or invalid bearer token",
    "token-expired": "the bearer token has expired",
    "forbidden": "the token lacks the role the route needs (admin; service to publish)",
    "bad-room": "the room is not chat:NAME, sale:ID or user:ID",
    "order-not-found": "no such order, or it belongs to someone else",
    "not-found": "no such route",
    "method-not-allowed": "the route exists, the method does not",
    "deadline-exceeded": "no answer within the request deadline",
    "unavailable": "a dependency is unavailable; retry after Retry-After",
    "shutting-down": "the server is shutting down",
    "not-ready": "draining, or a dependency is unreachable",
    "upgrade-required": "GET /ws needs a WebSocket upgrade",
    "websocket-version": "only WebSocket version 13 is spoken",
    "bad-websocket-key": "Sec-WebSocket-Key is not 16 base64-encoded bytes",
    "origin-not-allowed": "the Origin is not in SURGE_WS_ORIGINS",
    "too-many-connections": "the process (or this client address) holds as many "
    "connections as it may (HTTP: SURGE_MAX_CONNECTIONS[_PER_CLIENT]; WebSocket: "
    "SURGE_WS_MAX_CONNECTIONS)",
    "user-connection-limit": "the user holds SURGE_WS_MAX_PER_USER WebSocket connections "
    "in this process already",
    "rate-limited": "the caller is over its rate limit; see Retry-After and RateLimit",
    "overloaded": "the process is at its limit of concurrent work (load shedding); retry",
    "bad-request": "malformed HTTP",
    "body-too-large": "request body too large",
    "headers-too-large": "request headers too large",
    "uri-too-long": "request line too long",
    "duplicate-header": "a field that may appear once was sent twice (Host, Authorization, "
    "Content-Type, Content-Length, Idempotency-Key, X-Request-ID, Origin, Upgrade, Expect, "
    "Sec-WebSocket-Key, Sec-WebSocket-Version)",
    "bad-path": "the path has an encoded slash (%2F) in a segment",
    "request-timeout": "the request did not arrive in time (SURGE_HEADER_TIMEOUT, "
    "SURGE_BODY_MIN_RATE); the connection is closed",
    "expectation-failed": "an Expect field other than 100-continue",
    "internal": "a bug: the request id in the logs tells what happened",
}


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
        "schemas": {
            "Presence": {
                "type": "object",
                "required": ["room", "subscribers"],
                "additionalProperties": False,
                "properties": {
                    "room": {"type": "string"},
                    "subscribers": {"type": "integer", "minimum": 0},
                },
            },
            "Published": {
                "type": "object",
                "required": ["room", "seq"],
                "additionalProperties": False,
                "properties": {
                    "room": {"type": "string"},
                    "seq": {"type": "integer", "minimum": 1},
                },
            },
            "Order": {
                "type": "object",
                "required": ["id", "sale_id", "user_id", "quantity", "status", "created_at"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "sale_id": {"type": "integer", "minimum": 1},
                    "user_id": {"type": "string", "minLength": 1, "maxLength": 64},
                    "quantity": {"type": "integer", "minimum": 1},
                    "status": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string", "enum": [f"/problems/{k}" for k in PROBLEM_TYPES]},
                    "title": {"type": "string"},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string"},
                    "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "Sale": {
                "type": "object",
                "required": [
                    "id",
                    "name",
                    "stock",
                    "remaining",
                    "state",
                    "per_user_limit",
                    "starts_at",
                    "ends_at",
                ],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "name": {"type": "string"},
                    "stock": {"type": "integer", "minimum": 0},
                    "remaining": {"type": "integer", "minimum": 0},
                    "state": {"type": "string", "enum": ["upcoming", "live", "sold_out", "ended"]},
                    "per_user_limit": {"type": "integer", "minimum": 1},
                    "starts_at": {"type": "string", "format": "date-time"},
                    "ends_at": {"type": "string", "format": "date-time"},
                },
            },
            "NewSale": {
                "type": "object",
                "required": ["name", "stock", "starts_at", "ends_at"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "stock": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
                    "per_user_limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 1000,
                        "default": 1,
                    },
                    "starts_at": {"type": "string", "format": "date-time"},
                    "ends_at": {"type": "string", "format": "date-time"},
                },
            },
            "PurchaseRequest": {
                "type": "object",
                "required": ["quantity"],
                "additionalProperties": False,
                "properties": {"quantity": {"type": "integer", "minimum": 1, "maximum": 1000}},
            },
            "OrderList": {
                "type": "object",
                "required": ["items", "next"],
                "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}},
                    "next": {"type": ["string", "null"]},
                },
            },
            "Tasks": {
                "type": "object",
                "required": ["total", "by_coroutine"],
                "properties": {
                    "total": {"type": "integer"},
                    "by_coroutine": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
        },
    },
    "paths": {
        "/sales": {
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
            }
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
                "summary": "A page to watch a sale's live stock and chat, in a browser",
                "description": "Controls can be preset from the URL: "
                "`?sale=ID&room=chat:NAME&token=JWT&say=TEXT`.",
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
