"""The OpenAPI 3.1 document for every route; tests validate real responses against it."""

from __future__ import annotations

from typing import Any

import orjson

PROBLEM_TYPES = {
    "bad-order-id": "the order id is not a positive integer",
    "unauthorized": "missing, malformed or invalid bearer token",
    "token-expired": "the bearer token has expired",
    "forbidden": "the token lacks the admin role",
    "order-not-found": "no such order, or it belongs to someone else",
    "not-found": "no such route",
    "method-not-allowed": "the route exists, the method does not",
    "deadline-exceeded": "no answer within the request deadline",
    "unavailable": "a dependency is unavailable; retry after Retry-After",
    "shutting-down": "the server is shutting down",
    "not-ready": "draining, or a dependency is unreachable",
    "bad-request": "malformed HTTP",
    "body-too-large": "request body too large",
    "headers-too-large": "request headers too large",
    "uri-too-long": "request line too long",
    "internal": "a bug: the request id in the logs tells what happened",
}


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
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
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
            "get": {
                "summary": "Live asyncio tasks by coroutine (admin)",
                "security": _BEARER,
                "responses": {
                    "200": _json("task counts", "Tasks"),
                    "401": _problem("missing or invalid token"),
                    "403": _problem("not an admin"),
                },
            }
        },
    },
}

ENCODED = orjson.dumps(DOCUMENT)
