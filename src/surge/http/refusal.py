"""The refusal made before the parser: when every slot of the load shedder is taken, a
lone GET is answered 503 straight from the bytes read (docs/protection.md explains why
a refusal must cost as little as possible; the 503 is surge.ground.admission's).

Only a request that cannot be misread qualifies: one complete HTTP/1.1 GET in one read,
with no header that could announce a body (Content-Length, Transfer-Encoding, Expect:
a body arriving in a later read would be taken for a request of its own, and answers
would fall out of step with requests) or change the connection (Connection, Upgrade).
Anything else goes through the parser, and is shed there if it needs a slot."""

from __future__ import annotations

import random

from surge.ground.admission import OVERLOADED

# the two refusals (Retry-After 1 or 2 s); the date and request id go between head and tail
_PARTS = tuple((head, b"\r\n\r\n" + body) for _, head, body in OVERLOADED)
_UNSAFE_HEADERS = (
    b"\r\ncontent-length:",
    b"\r\ntransfer-encoding:",
    b"\r\nexpect:",
    b"\r\nconnection:",
    b"\r\nupgrade:",
)


def never_shed(paths: list[str]) -> tuple[bytes, ...]:
    """The request-line starts of the routes exempt from shedding (the router's, with
    `route_class=None`: probes and scrapes must see the server as it is)."""
    return tuple(b"GET " + path.encode() + b" " for path in paths)


def lone_get(data: bytes, never: tuple[bytes, ...]) -> bool:
    """`data` is exactly one complete HTTP/1.1 GET that answering leaves the connection
    as it was, for a path that may be shed (`never`: see `never_shed`)."""
    if not data.startswith(b"GET ") or not data.endswith(b"\r\n\r\n"):
        return False
    line_end = data.find(b"\r\n")
    if data[line_end - 9 : line_end] != b" HTTP/1.1" or data.find(b"\r\n\r\n") != len(data) - 4:
        return False
    if data.startswith(never) or b"%" in data[:line_end]:  # %-encoded: parse it
        return False
    lowered = data.lower()
    return not any(header in lowered for header in _UNSAFE_HEADERS)


def refusal(date_line: bytes, request_id: bytes) -> bytes:
    """The bytes of one refusal, its Retry-After drawn at random (1 or 2 s); like every
    answer it carries an x-request-id (made here: the request's own is not parsed)."""
    head, tail = _PARTS[random.getrandbits(1)]
    return head + date_line + b"x-request-id: " + request_id + tail
