"""The OpenAPI paths of an order's life after its purchase (surge.sales.payments)."""

from __future__ import annotations

from typing import Any


def order_paths(
    problem: Any, json: Any, bearer: list[dict[str, list[str]]], order_id: dict[str, Any]
) -> dict[str, Any]:
    """`problem(description)` and `json(description, schema)` make responses (openapi.py)."""
    moved = {
        "400": problem("bad id, missing or bad Idempotency-Key, not JSON"),
        "401": problem("missing or invalid token"),
        "404": problem("no such order, or someone else's"),
        "503": problem("the database is unavailable"),
        "504": problem("deadline exceeded"),
    }
    return {
        "/orders/{id}/pay": {
            "post": {
                "summary": "Pay a pending order (its buyer), before its pay_by",
                "description": "Idempotent by the Idempotency-Key: the same key and body "
                "answer the paid order again. 409 order-expired / order-cancelled / "
                "order-paid (paid with another key) name where the order is.",
                "security": bearer,
                "parameters": [
                    order_id,
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
                        "application/json": {"schema": {"$ref": "#/components/schemas/Payment"}}
                    },
                },
                "responses": {
                    "200": json("the order, paid", "OrderState"),
                    **moved,
                    "403": problem("an admin: only the buyer pays"),
                    "409": problem("the order is not pending: order-paid, -cancelled, -expired"),
                    "422": problem("bad payment_ref, or the key paid with another one"),
                },
            }
        },
        "/orders/{id}/cancel": {
            "post": {
                "summary": "Cancel an order: its buyer while it is pending, an admin any time; "
                "its units go back on sale",
                "description": "Idempotent: a cancelled order answers the same again.",
                "security": bearer,
                "parameters": [order_id],
                "responses": {
                    "200": json("the order, cancelled", "OrderState"),
                    **moved,
                    "409": problem("order-paid (its buyer: only an admin) or order-expired"),
                },
            }
        },
    }
