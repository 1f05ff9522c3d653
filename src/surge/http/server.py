"""The HTTP/1.1 engine: an asyncio Protocol on uvloop with httptools (llhttp) parsing.

Why not an ASGI server: measured on the 2-core machine, a constant response reached about
130,000 req/s through this kind of protocol against 31,000 through uvicorn's ASGI layer
(docs/decisions.md). The difference is the per-request scope dict, the receive/send
coroutines and one Task per request. Here a handler may answer synchronously (the order
query's near-cache hit does), so the common request creates no Task and no coroutine.

What the engine guarantees: keep-alive and pipelining (answers in order), bounded header
and body sizes, idle and slow-client timeouts, back-pressure (reading pauses while the
peer is not reading our answers), and a drain that serves every request the kernel had
accepted before the listener closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from random import random
from urllib.parse import unquote

import httptools

from surge.http import refusal
from surge.http.dispatch import _SHUTTING_DOWN, Dispatch
from surge.http.refusal import lone_get
from surge.http.request import Request, Upgrade
from surge.http.response import Response, problem_response
from surge.http.state import ServerState
from surge.logs import log_access

log = logging.getLogger("surge.http")

MAX_HEADER_BYTES = 16_384
MAX_PIPELINE = 16
# Slowloris guard: a connection in the middle of a request may stay silent this long.
REQUEST_TIMEOUT = 10.0
# During shutdown, how long an accepted connection may take to send its first request.
FIRST_REQUEST_GRACE = 1.0

# An incoming X-Request-ID is kept if it is short and plain; otherwise we make one.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class HttpProtocol(Dispatch, asyncio.Protocol):
    __slots__ = (
        "_body",
        "_header_bytes",
        "_headers",
        "_keep_alive",
        "_last",
        "_parser",
        "_paused_reading",
        "_paused_writing",
        "_queue",
        "_served",
        "_state",
        "_transport",
        "_url",
        "client",
    )

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] | None = None
        self._queue: deque[Request] = deque()
        self._busy = False  # a request is being handled (pipelined ones wait in _queue)
        self._task: asyncio.Task[None] | None = None  # the Task answering it, if any
        self._upgrade: tuple[Request, Upgrade] | None = None
        self._keep_alive = True
        self._paused_reading = False
        self._paused_writing = False
        self._last = state.now
        self._served = 0
        self.client = ""

    # -- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # exact, not the coarse per-second clock: during shutdown a fresh connection gets
        # FIRST_REQUEST_GRACE from now, not from the last tick
        self._last = time.monotonic()
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        self._state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        state.connections.discard(self)
        self._transport = None
        if state.stopped and not state.connections:
            state.drained.set()

    def data_received(self, data: bytes) -> None:
        state = self._state
        self._last = state.now
        shedder = state.shedder
        if (
            shedder is not None
            and shedder.working >= shedder.read_limit  # every slot taken (no call: per read)
            and not state.closing  # draining: answers must say Connection: close
            and not self._busy
            and not self._url
            and lone_get(data, state.never_shed)
        ):
            self._shed_unparsed()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgrade is not None:
                self._switch(data[upgrade.args[0] :])
            elif self._busy:  # its answer is under way: the connection ends with it
                self._keep_alive = False
            elif self._transport is not None:  # answered already (refused, or not /ws)
                self._transport.close()
        except httptools.HttpParserError as exc:
            # httptools wraps exceptions raised in our callbacks (_TooLarge) in its own.
            cause = exc.__context__
            if isinstance(cause, _TooLarge):
                self._reject(cause.status, cause.kind, cause.detail)
            else:
                self._reject(400, "bad-request", "malformed HTTP request")

    def _shed_unparsed(self) -> None:
        """Every slot of the shedder is taken: a lone GET is answered 503 before the
        parser, the router or anything else sees it. Under overload the cost of a refusal
        decides how much is left to serve (a parsed refusal cost about as much as a
        cached answer). Health, readiness and metrics are never refused (`refusal.lone_get`)."""
        state = self._state
        state.shedder.shed["read"] += 1  # type: ignore[union-attr]
        if self._transport is not None:
            self._transport.write(refusal.refusal(state.date_line, state.new_request_id()))

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        if not self._queue:
            self._resume_reading()

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(414, "uri-too-long", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, "headers-too-large", "request headers too large")
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            self._body = [body]
            size = len(body)
        else:
            self._body.append(body)
            size = sum(len(b) for b in self._body)
        if size > self._state.max_body:
            raise _TooLarge(413, "body-too-large", f"body exceeds {self._state.max_body} bytes")

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        self._url = b""
        path_bytes, _, query = url.partition(b"?")
        path = path_bytes.decode("latin-1")
        if "%" in path:
            path = unquote(path, errors="replace")
        rid = self._headers.get(b"x-request-id")
        if rid is None or not _REQUEST_ID.fullmatch(rid):
            rid = self._state.new_request_id()
        request = Request(
            parser.get_method().decode("latin-1"),
            path,
            query.decode("latin-1"),
            self._headers,
            b"".join(self._body) if self._body else b"",
            self.client,
            rid,
        )
        if not parser.should_keep_alive():
            self._keep_alive = False
        if self._busy:
            self._queue.append(request)
            if len(self._queue) >= MAX_PIPELINE:
                self._pause_reading()
            return
        self._handle(request)

    def _finish(self, request: Request, response: Response) -> None:
        if response is _SHUTTING_DOWN:
            self._keep_alive = False
        self._busy = False
        self._task = None
        self._send(request, response)
        while self._queue and not self._busy and self._transport is not None:
            self._handle(self._queue.popleft())
        if not self._queue and not self._paused_writing:
            self._resume_reading()

    def _send(self, request: Request, response: Response) -> None:
        state = self._state
        status, head, body = response
        keep_alive = self._keep_alive and not state.closing
        head = head + state.date_line + b"x-request-id: " + request.request_id
        if keep_alive:
            data = head + b"\r\n\r\n" + body
        else:
            data = head + b"\r\nconnection: close\r\n\r\n" + body
        transport = self._transport
        if transport is not None:
            if request.method == "HEAD":
                data = data[: len(data) - len(body)]
            transport.write(data)
            if not keep_alive:
                transport.close()
        self._served += 1
        elapsed = time.perf_counter() - request.started
        state.observe(request.route, request.method, status, elapsed)
        if state.access_log and (state.access_log >= 1.0 or random() < state.access_log):
            log_access(request, status, elapsed)
        state.in_flight -= 1
        if request.slot:  # its work is done: the shedder learns how long it took
            state.shedder.release(elapsed, status == 504, request.slot)  # type: ignore[union-attr]
            request.slot = ""

    def _switch(self, rest: bytes) -> None:
        """Hands the connection to the upgrade's protocol: from here on it is no HTTP
        connection (shutdown's HTTP drain does not wait for it; its owner closes it)."""
        assert self._upgrade is not None
        request, upgrade = self._upgrade
        self._upgrade = None
        transport, state = self._transport, self._state
        state.connections.discard(self)
        if state.stopped and not state.connections:
            state.drained.set()  # it was the last HTTP connection the drain waited for
        state.observe(request.route, request.method, 101, time.perf_counter() - request.started)
        state.in_flight -= 1
        self._served += 1
        if transport is None:
            return
        transport.write(upgrade.head + b"\r\n")
        transport.set_protocol(upgrade.protocol)
        self._transport = None
        upgrade.protocol.connection_made(transport)
        if rest:
            upgrade.protocol.data_received(rest)

    def _reject(self, status: int, kind: str, detail: str) -> None:
        """Answers a request the parser refused, then closes: the stream is unusable."""
        transport = self._transport
        if transport is None or self._busy:
            if transport is not None:
                transport.close()
            return
        _, head, body = problem_response(status, kind, detail)
        transport.write(head + self._state.date_line + b"connection: close\r\n\r\n" + body)
        transport.close()

    def _pause_reading(self) -> None:
        if not self._paused_reading and self._transport is not None:
            self._paused_reading = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and self._transport is not None:
            self._paused_reading = False
            self._transport.resume_reading()

    # -- housekeeping -------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Closes an idle keep-alive connection, or one stalled mid-request.

        Once intake has stopped, a connection that has not sent its first request yet gets
        FIRST_REQUEST_GRACE: it was accepted, so its request must still be served.
        """
        if self._busy or self._transport is None:
            return
        if self._url or self._queue:
            limit = REQUEST_TIMEOUT
        elif self._state.stopped:
            limit = 0.0 if self._served else FIRST_REQUEST_GRACE
        else:
            limit = self._state.keepalive_timeout
        if now - self._last > limit:
            self._transport.close()

    def close_if_idle(self) -> None:
        """Closes a keep-alive connection between requests (not a fresh one)."""
        if self._served and not (self._busy or self._url or self._queue) and self._transport:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _TooLarge(Exception):
    def __init__(self, status: int, kind: str, detail: str) -> None:
        self.status, self.kind, self.detail = status, kind, detail
