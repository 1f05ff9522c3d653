"""The OpenAPI document's parts that are data, not routes: the problem types every error
may carry, and the schemas of the bodies (surge.api.openapi assembles the document)."""

from __future__ import annotations

from typing import Any

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
    "order-paid": "the order is paid: it cannot be paid again with another key, nor "
    "cancelled by its buyer",
    "order-cancelled": "the order was cancelled",
    "order-expired": "the order was not paid by its pay_by and expired",
    "order-closed": "the order is in a state of its own (an imported or seeded order, "
    "shipped or delivered): it can be neither paid nor cancelled here",
    "invalid-payment": "payment_ref is missing, not a string, or longer than 128 characters",
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


# the fields an order has in every answer (Order, and OrderState with the payment's)
_ORDER_FIELDS: dict[str, Any] = {
    "id": {"type": "integer", "minimum": 1},
    "sale_id": {"type": "integer", "minimum": 1},
    "user_id": {"type": "string", "minLength": 1, "maxLength": 64},
    "quantity": {"type": "integer", "minimum": 1},
    "created_at": {"type": "string", "format": "date-time"},
}

SCHEMAS: dict[str, Any] = {
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
            **_ORDER_FIELDS,
            "status": {"type": "string"},
            "pay_by": {
                "type": "string",
                "format": "date-time",
                "description": "a pending order's payment deadline (SURGE_PAY_WINDOW)",
            },
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
    "OrderState": {
        "type": "object",
        "required": [
            "id",
            "sale_id",
            "user_id",
            "quantity",
            "status",
            "created_at",
            "pay_by",
            "closed_at",
            "payment_ref",
        ],
        "additionalProperties": False,
        "properties": {
            **_ORDER_FIELDS,
            "status": {"type": "string", "enum": ["pending", "paid", "cancelled", "expired"]},
            "pay_by": {"type": ["string", "null"], "format": "date-time"},
            "closed_at": {"type": ["string", "null"], "format": "date-time"},
            "payment_ref": {"type": ["string", "null"], "maxLength": 128},
        },
    },
    "Payment": {
        "type": "object",
        "required": ["payment_ref"],
        "additionalProperties": False,
        "properties": {"payment_ref": {"type": "string", "minLength": 1, "maxLength": 128}},
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
    "SaleList": {
        "type": "object",
        "required": ["items", "next"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Sale"}},
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
}
