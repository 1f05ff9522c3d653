"""The HTTP/1.1 engine: an asyncio Protocol on uvloop with httptools (llhttp) parsing.

Why not an ASGI server: a constant response reached about 130,000 req/s through this kind
of protocol against 31,000 through uvicorn's ASGI layer (docs/decisions.md): the
per-request scope dict, receive/send coroutines and Task. Here a handler may answer
synchronously (the order query's near-cache hit does): no Task, no coroutine.

What the engine guarantees (docs/security.md): keep-alive and pipelining (answers in
order), every per-connection buffer bounded in bytes (header block, body, queue of
pipelined requests, answers the client has not read), every request bounded in time
(header block from its first byte, then a minimum body rate), connections capped per
process and per client address, and a drain that serves every request the kernel had
accepted before the listener closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from random import random

import httptools

from surge.ground.admission import Verdict
from surge.ground.sockets import end, linger, reset
from surge.ground.web import Request, Response, Upgrade, problem_response
from surge.http import refusal
from surge.http import upgrade as switch
from surge.http.answers import CONTINUE, SHUTTING_DOWN, TOO_MANY_CONNECTIONS, closing
from surge.http.dispatch import after_verdict, complete, dispatch, drive
from surge.http.reader import Overflow, Refused, RequestReader
from surge.http.refusal import lone_get
from surge.http.router import Handler, HandlerResult
from surge.http.state import (
    FIRST_REQUEST_GRACE,
    LINGER,
    MAX_PIPELINE,
    MAX_QUEUED,
    PER_READ,
    TICK,
    ServerState,
)
from surge.logs import REQUEST_ID, log_access


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_budget",
        "_busy",
        "_counted",
        "_discard",
        "_feeding",
        "_idle_since",
        "_keep_alive",
        "_owe_continue",
        "_paused_reading",
        "_paused_writing",
        "_queue",
        "_reader",
        "_served",
        "_stall_since",
        "_stall_size",
        "_state",
        "_task",
        "_transport",
        "_upgrade",
        "client",
    )

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._reader = RequestReader(state, self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Request] = deque()
        self._busy = False  # a request is being handled (pipelined ones wait in _queue)
        self._task: asyncio.Task[None] | None = None  # the Task answering it, if any
        self._upgrade: tuple[Request, Upgrade] | None = None
        self._keep_alive = True  # False once a request ends the connection
        # the request being read asked for 100 Continue while earlier answers were still
        # owed: it is sent once they are written (unless its body came anyway)
        self._owe_continue = False
        self._paused_reading = False
        self._paused_writing = False
        self._feeding = False  # the reader is parsing this connection's bytes right now
        self._budget = PER_READ  # requests this read may still have answered at once
        self._discard = 0.0  # when the connection began to be dropped (input ignored)
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
        if not state.admit(self.client):  # over a cap: refused, and anything it sent ignored
            answer = closing(TOO_MANY_CONNECTIONS, state.date_line, state.new_request_id())
            self._transport.write(answer)  # type: ignore[union-attr]  # (set above)
            transport.close()
            self._transport = None
            self._discard = 1.0
            return
        self._counted = True
        state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._discard = self._discard or 1.0  # (nothing more arrives; nothing is parsed)
        self._reader.close()
        self._queue.clear()
        if self._counted:
            self._counted = False
            self._state.forget(self)

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
            and not self._reader.started
            and not self._queue
            and lone_get(data, state.never_shed)
        ):
            # a lone GET is answered 503 before the parser, the router or anything else
            # sees it: under overload the cost of a refusal decides how much is left to
            # serve (a parsed refusal cost about as much as a cached answer). Health,
            # readiness and metrics are never refused (`refusal.lone_get`).
            shedder.shed["read"] += 1
            self._idle_since = state.now
            if self._transport is not None:
                self._transport.write(refusal.refusal(state.date_line, state.new_request_id()))
            return
        self._feeding = True
        self._budget = PER_READ
        try:
            self._reader.feed(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgrade is not None:
                self._feeding = False
                self._switch(data[upgrade.args[0] :])
                return
            # answered already (refused, or not /ws: its answer closes the connection),
            # or queued behind another request (then refused: see _respond)
            self._keep_alive = False
            self._drop_input()
        except Overflow:
            self._keep_alive = False  # answer those queued, then close
            self._drop_input()
        except Refused as refused:
            self._reject(refused.status, refused.kind, refused.detail)
        self._feeding = False
        if self._budget < 0 and self._queue and not (self._busy or self._paused_writing):
            # over the read's budget: the rest is answered in the next loop turn, and
            # nothing more is read until it is
            self._pause_reading()
            asyncio.get_running_loop().call_soon(self._serve_queue)

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._serve_queue()

    # -- from the reader ----------------------------------------------------------------
    def received(self, request: Request) -> None:
        self._owe_continue = False  # its body came: a 100 Continue now would be a stray 1xx
        if not self._keep_alive:
            # an earlier request closed the connection: what follows it is not served
            # (RFC 9112 9.6)
            return
        if not request.keep_alive:
            self._keep_alive = False
        self._budget -= 1
        if self._busy or self._queue or self._paused_writing or self._budget < 0:
            # answered in order, once those before it are (and the client reads them)
            queue = self._queue
            queue.append(request)
            if len(queue) >= MAX_PIPELINE:
                self._pause_reading()
                if len(queue) >= MAX_QUEUED:
                    raise Overflow
            return
        self._respond(request, dispatch(self._state, request, self))

    def continue_body(self) -> None:
        if self._busy or self._queue:
            self._owe_continue = True  # after the answers before it (`_serve_queue`)
        elif self._transport is not None:
            self._transport.write(CONTINUE)  # its body is wanted: send it (else it waits)

    # -- from a parsed request to its answer ---------------------------------------------
    def admitted(
        self, request: Request, handler: Handler, route_class: str, done: asyncio.Future[Verdict]
    ) -> None:
        """The rate limiter's verdict on a request that waited for it (see `dispatch`)."""
        if done.cancelled() or self._transport is None:  # shutting down, or the client left
            self._finish(request, SHUTTING_DOWN)  # (no handler runs for nobody)
            return
        result = after_verdict(self._state, request, handler, route_class, done.result())
        if isinstance(result, tuple):
            self._finish(request, result)
        else:
            self._busy = False
            self._respond(request, result)

    def _respond(self, request: Request, result: HandlerResult | None) -> None:
        """The answer, whichever form it takes: a tuple made on the spot, an upgrade, a
        Future, a coroutine run as a Task; None: it waits for the rate limiter's verdict
        (`admitted`)."""
        if isinstance(result, tuple):
            self._send(request, result)
            return
        if result is None:
            self._busy = True
            return
        if isinstance(result, Upgrade):
            # only the request the parser has just read can switch (see surge.http.upgrade)
            alone = self._feeding and self._keep_alive
            refused = switch.refused(request, alone, self._state.closing)
            if refused is not None:
                self._send(request, refused)
            else:  # the parser reports the upgrade right after this request (data_received)
                self._upgrade = (request, result)
            return
        self._busy = True
        finish = self._finish
        if isinstance(result, asyncio.Future):
            # A Future (the order query's miss path returns one) needs no Task of its own.
            result.add_done_callback(lambda done: complete(finish, request, done))
        else:  # a coroutine: a Task that answers as its last step
            # the Task copies the context: what its handler logs names the request
            token = REQUEST_ID.set(request.request_id)
            self._task = asyncio.ensure_future(drive(request, result, finish))
            REQUEST_ID.reset(token)

    # -- writing answers ------------------------------------------------------------------
    def _finish(self, request: Request, response: Response) -> None:
        if response is SHUTTING_DOWN:
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
            request = queue.popleft()
            self._respond(request, dispatch(self._state, request, self))
        if self._owe_continue and not queue and not self._busy and self._keep_alive:
            self._owe_continue = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(CONTINUE)
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
                    # ended for cause (a refusal, too many requests): it lingers from this
                    # last answer on, and is reset if the client has not read it by then
                    self._discard = state.now
                    linger(transport)
                else:
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
            state.forget(self)
        state.observe(request.route, request.method, 101, time.perf_counter() - request.started)
        state.in_flight -= 1
        self._served += 1
        if transport is not None:
            self._transport = None
            self._reader.close()
            switch.hand_over(transport, upgrade, rest)

    def _reject(self, status: int, kind: str, detail: str) -> None:
        """Answers a request the parser or a limit refused, then ends the connection: the
        stream is unusable. The refusal goes after any answer under way (then alone,
        without a body of its own, the connection just closes)."""
        transport = self._transport
        self._keep_alive = False
        self._reader.stop()
        if transport is None or transport.is_closing():
            return  # an answer already ended the connection: whatever follows is garbage
        if self._busy or self._queue:
            # what came before it is answered, in order; the last answer closes (the
            # refusal itself cannot go out of turn, so it is not sent)
            self._drop_input()
            return
        state = self._state
        answer = problem_response(status, kind, detail)
        transport.write(closing(answer, state.date_line, state.new_request_id()))
        self._drop_input()
        linger(transport)  # (the client's bytes are read and dropped; `sweep` cuts it)

    def _drop_input(self) -> None:
        """From now on the client's bytes are read and dropped (not parsed)."""
        if not self._discard:
            self._discard = self._state.now or 1.0
        self._resume_reading()

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
                end(transport)  # the refusal is out: the client had its time to read it
            return
        if queued:
            if not self._stall_since or queued < self._stall_size:
                self._stall_since = now  # the client read some: it is reading
            self._stall_size = queued
            if now - self._stall_since > limits.send_timeout:
                # it reads nothing: what it asked for stays unsent (a reset: a plain abort
                # would leave the kernel sending it, behind a FIN the client never gets)
                reset(transport)
                return
        else:
            self._stall_since = 0.0
        if self._busy:
            return  # its handler runs under a deadline
        if self._reader.started:
            if self._reader.overdue(now, TICK):
                self._reject(408, "request-timeout", "the request took too long to arrive")
            return
        if self._queue:
            return  # waiting for the client to read (bounded by send_timeout above)
        if self._state.stopped:
            limit = 0.0 if self._served else FIRST_REQUEST_GRACE
        else:
            limit = limits.keepalive_timeout
        if now - self._idle_since > limit + (TICK if limit else 0.0):
            end(transport)

    def close_if_idle(self) -> None:
        """Closes a keep-alive connection between requests (not a fresh one)."""
        if (
            self._served
            and not (self._busy or self._reader.started or self._queue)
            and self._transport is not None
        ):
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
