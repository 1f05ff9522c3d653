"""The HTTP/1.1 engine: an asyncio Protocol on uvloop with httptools (llhttp) parsing.

Why not an ASGI server: measured on the 2-core machine, a constant response reached about
130,000 req/s through this kind of protocol against 31,000 through uvicorn's ASGI layer
(docs/decisions.md). The difference is the per-request scope dict, the receive/send
coroutines and one Task per request. Here a handler may answer synchronously (the order
query's near-cache hit does), so the common request creates no Task and no coroutine.

What the engine guarantees (docs/security.md): keep-alive and pipelining (answers in
order), every per-connection buffer bounded in bytes (header block, body, queue of
pipelined requests, answers the client has not read), every request bounded in time
(header block from its first byte, then a minimum body rate), connections capped per
process and per client address, and a drain that serves every request the kernel had
accepted before the listener closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from random import random

import httptools

from surge.http import refusal
from surge.http.dispatch import _SHUTTING_DOWN, Dispatch
from surge.http.refusal import lone_get
from surge.http.request import Request, Upgrade
from surge.http.response import Response, problem_response
from surge.http.state import ServerState
from surge.logs import log_access

log = logging.getLogger("surge.http")

# Pipelined requests waiting behind one being answered: at MAX_PIPELINE reading pauses;
# one read can still hold more, up to MAX_QUEUED, past which the rest of the read is
# dropped and the connection ends after answering those queued (a client that pipelines
# more without reading its answers is not a browser or a proxy).
MAX_PIPELINE = 16
MAX_QUEUED = 64
# During shutdown, how long an accepted connection may take to send its first request.
FIRST_REQUEST_GRACE = 1.0
# After refusing a request, how long the client's further bytes are read and dropped so
# that the refusal reaches it (closing with unread input would make the kernel reset the
# connection and lose the answer).
LINGER = 2.0
# Chunked framing around a body (sizes, CRLFs, extensions) may add this many times the
# body's own bytes before a message counts as oversized.
FRAMING_ALLOWANCE = 8

# An incoming X-Request-ID is kept if it is short and plain; otherwise we make one.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Fields a request may carry once: two values would leave "which one counts" to whoever
# reads them, and a proxy in front may have checked or set the other one. Any other field
# sent twice is combined into one value (RFC 9110 5.3).
_SINGLE = frozenset(
    (
        b"host",
        b"authorization",
        b"content-type",
        b"content-length",
        b"idempotency-key",
        b"x-request-id",
        b"origin",
        b"upgrade",
        b"expect",
        b"sec-websocket-key",
        b"sec-websocket-version",
    )
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpProtocol(Dispatch, asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_counted",
        "_discard",
        "_feeding",
        "_fresh",
        "_head_done",
        "_header_bytes",
        "_headers",
        "_idle_since",
        "_in_head",
        "_keep_alive",
        "_parser",
        "_paused_reading",
        "_paused_writing",
        "_queue",
        "_raw",
        "_served",
        "_stall_since",
        "_stall_size",
        "_started",
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
        self._header_bytes = 0  # request line + fields (+ trailers) of the current request
        self._body: list[bytes] | None = None
        self._body_size = 0
        self._queue: deque[Request] = deque()
        self._busy = False  # a request is being handled (pipelined ones wait in _queue)
        self._task: asyncio.Task[None] | None = None  # the Task answering it, if any
        self._upgrade: tuple[Request, Upgrade] | None = None
        self._keep_alive = True  # False once a request ends the connection
        self._paused_reading = False
        self._paused_writing = False
        self._feeding = False  # the parser is reading this connection's bytes right now
        self._discard = 0.0  # when the connection began to be dropped (input ignored)
        self._started = 0.0  # first byte of the request being received; 0: between requests
        self._in_head = False  # receiving its request line and header fields
        self._head_done = 0.0  # when its header block ended
        self._raw = 0  # bytes read for it after the read it began in (see _bound)
        self._fresh = False  # it began in the read being parsed
        self._idle_since = state.now  # its last answer (or its connection) went out
        self._stall_since = 0.0  # answers queued for the client, none read since then
        self._stall_size = 0
        self._counted = False  # counted in the process's and the address's connections
        self._served = 0
        self.client = ""

    # -- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # exact, not the coarse per-second clock: during shutdown a fresh connection gets
        # FIRST_REQUEST_GRACE from now, not from the last tick
        self._idle_since = time.monotonic()
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        state = self._state
        if not state.admit(self.client):
            self._refuse_connection()
            return
        self._counted = True
        state.connections.add(self)

    def _refuse_connection(self) -> None:
        transport = self._transport
        assert transport is not None
        _, head, body = _TOO_MANY_CONNECTIONS
        state = self._state
        rid = b"x-request-id: " + state.new_request_id()
        transport.write(head + state.date_line + rid + b"\r\nconnection: close\r\n\r\n" + body)
        transport.close()
        self._transport = None
        self._discard = 1.0  # anything it sent is ignored

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        self._transport = None
        if not self._counted:
            return
        self._counted = False
        state.connections.discard(self)
        state.release(self.client)
        if state.stopped and not state.connections:
            state.drained.set()

    def eof_received(self) -> bool:
        """The client has sent all it will: answer what it asked (keeping our half open
        until then), then close."""
        self._keep_alive = False
        return self._busy or bool(self._queue)

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return  # a refusal is on its way out: whatever follows is not read
        state = self._state
        shedder = state.shedder
        if (
            shedder is not None
            and shedder.working >= shedder.read_limit  # every slot taken (no call: per read)
            and not state.closing  # draining: answers must say Connection: close
            and not self._busy
            and not self._started
            and not self._queue
            and lone_get(data, state.never_shed)
        ):
            self._shed_unparsed()
            return
        self._fresh = False
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._feeding = False
            if self._upgrade is not None:
                self._switch(data[upgrade.args[0] :])
                return
            # answered already (refused, or not /ws: its answer closes the connection),
            # or queued behind another request (then refused: see Dispatch._respond)
            self._keep_alive = False
            self._drop_input()
            return
        except httptools.HttpParserError as exc:
            self._feeding = False
            # httptools wraps exceptions raised in our callbacks (_Refused) in its own.
            cause = exc.__context__
            if isinstance(cause, _Overflow):
                self._keep_alive = False  # answer those queued, then close
                self._drop_input()
            elif isinstance(cause, _Refused):
                self._reject(cause.status, cause.kind, cause.detail)
            else:
                self._reject(400, "bad-request", "malformed HTTP request")
            return
        self._feeding = False
        if self._started:
            self._bound(len(data))

    def _bound(self, size: int) -> None:
        """Bounds what the parser buffers for an unfinished request. httptools keeps a
        header field until its line ends and reports it only then, so a field of endless
        length would grow unseen: every read after the one the request began in counts
        in full (that first read is bounded by the transport's read size)."""
        if self._fresh:
            return
        self._raw += size
        limits = self._state.limits
        if self._in_head:
            if self._raw > limits.max_header:
                self._reject(431, "headers-too-large", "request headers too large")
        elif self._raw > limits.max_header + FRAMING_ALLOWANCE * limits.max_body:
            self._reject(413, "body-too-large", f"body exceeds {limits.max_body} bytes")

    def _shed_unparsed(self) -> None:
        """Every slot of the shedder is taken: a lone GET is answered 503 before the
        parser, the router or anything else sees it. Under overload the cost of a refusal
        decides how much is left to serve (a parsed refusal cost about as much as a
        cached answer). Health, readiness and metrics are never refused (`refusal.lone_get`)."""
        state = self._state
        state.shedder.shed["read"] += 1  # type: ignore[union-attr]
        self._idle_since = state.now
        if self._transport is not None:
            self._transport.write(refusal.refusal(state.date_line, state.new_request_id()))

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._serve_queue()

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = None
        self._body_size = 0
        self._started = self._state.now
        self._in_head = True
        self._fresh = True
        self._raw = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._state.limits.max_header:
            raise _Refused(414, "uri-too-long", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._state.limits.max_header:
            raise _Refused(431, "headers-too-large", "request headers too large")
        if not self._in_head:
            return  # a trailer field: never merged into the request's header fields
        name = name.lower()
        headers = self._headers
        known = headers.get(name)
        if known is None:
            headers[name] = value
        elif name in _SINGLE:
            raise _Refused(400, "duplicate-header", f"{name.decode()} may be sent once")
        else:
            headers[name] = known + b", " + value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done = self._state.now
        headers = self._headers
        if b"host" not in headers and self._parser.get_http_version() != "1.0":
            raise _Refused(400, "bad-request", "an HTTP/1.1 request needs a Host field")
        length = headers.get(b"content-length")
        if length is not None and int(length) > self._state.limits.max_body:
            limit = self._state.limits.max_body
            raise _Refused(413, "body-too-large", f"body exceeds {limit} bytes")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise _Refused(417, "expectation-failed", "only Expect: 100-continue is known")
            if not (self._busy or self._queue) and self._transport is not None:
                self._transport.write(_CONTINUE)  # its body is wanted: send it

    def on_body(self, body: bytes) -> None:
        size = self._body_size + len(body)
        if size > self._state.limits.max_body:
            limit = self._state.limits.max_body
            raise _Refused(413, "body-too-large", f"body exceeds {limit} bytes")
        self._body_size = size
        if self._body is None:
            self._body = [body]
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        self._url = b""
        self._started = 0.0
        if not self._keep_alive:
            # an earlier request closed the connection: what follows it is not served
            # (RFC 9112 9.6)
            return
        path_bytes, _, query = url.partition(b"?")
        headers = self._headers
        rid = headers.get(b"x-request-id")
        if rid is None or not _REQUEST_ID.fullmatch(rid):
            rid = self._state.new_request_id()
        request = Request(
            parser.get_method().decode("latin-1"),
            path_bytes.decode("latin-1"),  # raw: routes match it undecoded (Router.match)
            query.decode("latin-1"),
            headers,
            b"".join(self._body) if self._body else b"",
            self.client,
            rid,
        )
        if b"upgrade" in headers:
            request.upgrade = parser.should_upgrade()
        if not parser.should_keep_alive():
            self._keep_alive = False
        if self._busy or self._queue or self._paused_writing:
            # answered in order, once those before it are (and the client reads them)
            queue = self._queue
            queue.append(request)
            if len(queue) >= MAX_PIPELINE:
                self._pause_reading()
                if len(queue) >= MAX_QUEUED:
                    raise _Overflow
            return
        self._handle(request)

    def _finish(self, request: Request, response: Response) -> None:
        if response is _SHUTTING_DOWN:
            self._keep_alive = False
        self._busy = False
        self._task = None
        self._send(request, response)
        self._serve_queue()

    def _serve_queue(self) -> None:
        """Answers the pipelined requests that waited, while the client reads."""
        queue = self._queue
        while queue and not (self._busy or self._paused_writing):
            transport = self._transport
            if transport is None or transport.is_closing():
                queue.clear()
                return
            self._handle(queue.popleft())
        if not queue and not self._paused_writing and not self._discard:
            self._resume_reading()

    def _send(self, request: Request, response: Response) -> None:
        state = self._state
        status, head, body = response
        # The connection ends with this answer when the client asked (and nothing it sent
        # before is still waiting), when it asked to switch protocols (llhttp reads no
        # further), or when the server is shutting down.
        keep_alive = (
            (self._keep_alive or bool(self._queue)) and not state.closing and not request.upgrade
        )
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
                self._keep_alive = False
                self._queue.clear()
                if self._discard:
                    self._discard = state.now  # it lingers from this last answer on
                transport.close()
        self._served += 1
        self._idle_since = state.now
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
        connection (shutdown's HTTP drain does not wait for it, it no longer counts
        against the HTTP connection caps; its owner closes it)."""
        assert self._upgrade is not None
        request, upgrade = self._upgrade
        self._upgrade = None
        transport, state = self._transport, self._state
        if self._counted:
            self._counted = False
            state.connections.discard(self)
            state.release(self.client)
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
        """Answers a request the parser or a limit refused, then ends the connection: the
        stream is unusable. The refusal goes after any answer under way (then alone,
        without a body of its own, the connection just closes)."""
        transport = self._transport
        self._keep_alive = False
        self._started = 0.0
        if transport is None:
            return
        if self._busy or self._queue:
            self._queue.clear()  # whatever answer is under way closes the connection
            self._drop_input()
            return
        _, head, body = problem_response(status, kind, detail)
        state = self._state
        rid = b"x-request-id: " + state.new_request_id()
        transport.write(head + state.date_line + rid + b"\r\nconnection: close\r\n\r\n" + body)
        self._drop_input()
        self._linger()

    def _drop_input(self) -> None:
        """From now on the client's bytes are read and dropped (not parsed)."""
        if not self._discard:
            self._discard = self._state.now or 1.0
        self._resume_reading()

    def _linger(self) -> None:
        """Ends our half of the connection once the answer is out (FIN) and goes on
        reading, so the client's unread request does not make the kernel reset the
        connection before the answer arrives; `sweep` cuts it after LINGER."""
        transport = self._transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        else:
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
        """Once a second: cuts a connection whose client leaves its answers unread, stalls
        mid-request, lingers after a refusal, or idles past the keep-alive timeout.

        Once intake has stopped, a connection that has not sent its first request yet gets
        FIRST_REQUEST_GRACE: it was accepted, so its request must still be served.
        """
        transport = self._transport
        if transport is None:
            return
        limits = self._state.limits
        queued = transport.get_write_buffer_size()
        if self._discard and not queued and not (self._busy or self._queue):
            if now - self._discard > LINGER:
                transport.abort()  # the refusal is out; the client had its time to read it
            return
        if queued:
            if not self._stall_since or queued < self._stall_size:
                self._stall_since = now  # the client read some: it is reading
            self._stall_size = queued
            if now - self._stall_since > limits.send_timeout:
                transport.abort()  # it reads nothing: what it asked for stays unsent
                return
        else:
            self._stall_since = 0.0
        if self._busy:
            return  # its handler runs under a deadline
        if self._started:
            if self._in_head:
                deadline = self._started + limits.header_timeout
            else:
                deadline = (
                    self._head_done + limits.header_timeout + self._body_size / limits.body_min_rate
                )
            if now > deadline:
                self._reject(408, "request-timeout", "the request took too long to arrive")
            return
        if self._queue:
            return  # waiting for the client to read (bounded by send_timeout above)
        if self._state.stopped:
            limit = 0.0 if self._served else FIRST_REQUEST_GRACE
        else:
            limit = limits.keepalive_timeout
        if now - self._idle_since > limit:
            transport.close()

    def close_if_idle(self) -> None:
        """Closes a keep-alive connection between requests (not a fresh one)."""
        if (
            self._served
            and not (self._busy or self._started or self._queue)
            and self._transport is not None
        ):
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _Refused(Exception):
    """Raised in a parser callback: the request is answered with this and the connection
    ends (httptools stops parsing at the exception)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        self.status, self.kind, self.detail = status, kind, detail


class _Overflow(Exception):
    """Raised in a parser callback: more pipelined requests than MAX_QUEUED."""


_TOO_MANY_CONNECTIONS = problem_response(
    503,
    "too-many-connections",
    "this server or this client address holds as many connections as it may",
    (("retry-after", "1"),),
)
