"""The answers the engine makes itself, not a handler: to no route, a wrong method, a
connection over the caps, a request during shutdown; and the bytes of an answer that ends
its connection. Each is encoded once (surge.ground.web); an upgrade's are in upgrade.py."""

from __future__ import annotations

from surge.ground.web import Response, problem_response

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NOT_FOUND = problem_response(404, "not-found", "no such route")
ENCODED_SLASH = problem_response(
    400, "bad-path", "a path segment may not contain an encoded slash (%2F)"
)
INTERNAL = problem_response(500, "internal", "internal error")
# a request that waited and will not be served (its Task or Future was cancelled)
SHUTTING_DOWN = problem_response(503, "shutting-down", "server is shutting down")
TOO_MANY_CONNECTIONS = problem_response(
    503,
    "too-many-connections",
    "this server or this client address holds as many connections as it may",
    (("retry-after", "1"),),
)


def not_allowed(allowed: list[str]) -> Response:
    """405, with the methods the route answers."""
    methods = ", ".join(allowed)
    return problem_response(405, "method-not-allowed", f"allowed: {methods}", (("allow", methods),))


def closing(response: Response, date_line: bytes, request_id: bytes) -> bytes:
    """The bytes of an answer to no parsed request (a refusal): a request id of its own,
    and the connection ends with it."""
    _, head, body = response
    rid = b"x-request-id: " + request_id
    return head + date_line + rid + b"\r\nconnection: close\r\n\r\n" + body
