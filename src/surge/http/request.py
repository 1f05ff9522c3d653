"""What a handler gets (`Request`) and what it may answer besides a `Response`
(`Upgrade`: the connection goes to another protocol)."""

from __future__ import annotations

import asyncio
import time


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
