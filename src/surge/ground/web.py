"""The web vocabulary every layer shares: what a handler gets (`Request`), what it answers
(a `Response`, an `Upgrade` that hands the connection to another protocol, or a `Problem`).

Responses and RFC 9457 problems are encoded once.

A `Response` is a plain tuple `(status, head, body)`: the status line and fixed headers
already encoded, so a cached response (the order query's near cache holds them) costs the
server a few byte joins. Tuples of ints and bytes, unlike instances of a class, are
untracked by Python's cyclic GC: a near cache of 100,000 responses would otherwise make
every full collection walk them all (measured: 60-225 ms pauses, p99 x10).
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import Any

import orjson


class Upgrade:
    """A handler's answer that hands the connection to another protocol (WebSocket):
    `head` (the 101 status line and headers, CRLF-terminated) is written, then the
    transport and any bytes that followed the request go to `protocol`."""

    __slots__ = ("head", "protocol")

    def __init__(self, head: bytes, protocol: asyncio.Protocol) -> None:
        self.head = head
        self.protocol = protocol


class Request:
    __slots__ = (
        "body",
        "client",
        "headers",
        "keep_alive",
        "method",
        "params",
        "path",
        "query",
        "request_id",
        "route",
        "slot",
        "started",
        "upgrade",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        client: str,
        request_id: bytes,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client
        self.request_id = request_id
        self.params: dict[str, str] = {}
        self.route = "unmatched"
        # the class ("read", "write") of the load-shedder slot it holds; "" = none
        self.slot = ""
        self.started = time.perf_counter()
        # it asks to switch protocols (llhttp's reading: Upgrade + Connection: upgrade);
        # the parser reads nothing after it, so its answer ends the connection unless the
        # switch happens
        self.upgrade = False
        self.keep_alive = True  # False: the client ends the connection with it


JSON = b"application/json"
PROBLEM_JSON = b"application/problem+json"
TEXT = b"text/plain; charset=utf-8"

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


Response = tuple[int, bytes, bytes]  # status, head (all but per-request lines), body


def response(
    status: int, body: bytes, content_type: bytes = JSON, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    extra = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
    head = (
        _STATUS_LINES[status]
        + b"content-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
    )
    return (status, head, body)


def dumps(value: Any) -> bytes:
    """`orjson.dumps`, copied into a bytes object of its own length. orjson writes into a
    buffer of at least 4 KB (3.13; 1 KB in 3.11) and hands that allocation back as the
    bytes object, never shrunk: a 115-byte order kept in the near cache cost 4.1 KB of
    memory (measured by RSS over 300,000 of them; orjson issue 483). The copy costs about
    40 ns; anything that may be kept (a cache, a history, a queue) is encoded with this."""
    return b"".join((orjson.dumps(value), b""))


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return response(status, dumps(payload), JSON, headers)


class Problem(Exception):
    """Raised by a handler to answer with application/problem+json (RFC 9457).

    `kind` becomes the problem type `/problems/<kind>`: stable, documented in the OpenAPI
    document, and distinct per cause so clients can branch on it.
    """

    def __init__(
        self, status: int, kind: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return problem_response(self.status, self.kind, self.detail, self.headers)


def problem_response(
    status: int, kind: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    body = dumps(
        {
            "type": f"/problems/{kind}",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        }
    )
    return response(status, body, PROBLEM_JSON, headers)
