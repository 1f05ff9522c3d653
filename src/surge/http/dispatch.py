"""From a parsed request to its answer: the rate limit, the handler, load shedding, and
the answer whichever form it takes (a tuple made on the spot, a Future, a coroutine run
as a Task, an upgrade). A mixin of `HttpProtocol` (surge.http.server), which owns the
connection: parsing, writing, keep-alive, pipelining and timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable

from surge.ground.admission import Verdict, overloaded
from surge.ground.web import Problem, Request, Response, Upgrade, problem_response
from surge.http.router import Handler, HandlerResult
from surge.http.state import ServerState
from surge.logs import REQUEST_ID

log = logging.getLogger("surge.http")

_SHUTTING_DOWN = problem_response(503, "shutting-down", "server is shutting down")
_NOT_AN_UPGRADE = problem_response(
    426,
    "upgrade-required",
    "send Connection: Upgrade and Upgrade: websocket",
    (("upgrade", "websocket"),),
)
_NO_UPGRADE_NOW = problem_response(
    503, "shutting-down", "server is shutting down", (("retry-after", "1"),)
)
_PIPELINED_UPGRADE = problem_response(
    400, "bad-request", "an upgrade must be the only request in flight on its connection"
)
_ENCODED_SLASH = problem_response(
    400, "bad-path", "a path segment may not contain an encoded slash (%2F)"
)
_NOT_FOUND = problem_response(404, "not-found", "no such route")


class Dispatch:
    """The dispatching half of HttpProtocol (its state is declared here, kept there)."""

    # what dispatching changes lives here; the rest is HttpProtocol's
    __slots__ = ("_busy", "_task", "_upgrade")
    _busy: bool  # a request is being handled (pipelined ones wait in _queue)
    _task: asyncio.Task[None] | None  # the Task answering it, if any
    _upgrade: tuple[Request, Upgrade] | None
    _state: ServerState
    _transport: asyncio.Transport | None
    _keep_alive: bool
    _feeding: bool  # the parser is reading this connection's bytes right now
    _queue: deque[Request]

    def _send(self, request: Request, response: Response) -> None:
        raise NotImplementedError  # HttpProtocol's

    def _finish(self, request: Request, response: Response) -> None:
        raise NotImplementedError  # HttpProtocol's

    def _handle(self, request: Request) -> None:
        state = self._state
        state.in_flight += 1
        # Routes match the path as sent, not %-decoded: a path rule in a proxy in front
        # sees the same path we route (`/%6detrics` is no /metrics); an encoded slash
        # would make one segment look like two to whoever decodes it.
        path = request.path
        result: Response | Awaitable[Response] | Upgrade
        if "%" in path and "%2f" in path.lower():
            result = _ENCODED_SLASH
        elif (match := state.router.match(path)) is None:
            result = _NOT_FOUND
        else:
            route, request.params = match
            request.route = route.template
            method = request.method
            handler = route.methods.get(method)
            if handler is None and method == "HEAD":  # HEAD is served wherever GET is
                method = "GET"
                handler = route.methods.get(method)
            if handler is None:
                allowed = ", ".join(route.allowed())
                result = problem_response(
                    405, "method-not-allowed", f"allowed: {allowed}", (("allow", allowed),)
                )
            else:
                route_class = route.classes[method]
                limiter = state.limiter
                verdict = None
                if route_class is not None and limiter is not None:
                    verdict = limiter.check(request, route_class)
                if verdict is None:
                    result = _call(handler, request)
                    if route_class is not None and not isinstance(result, tuple):
                        result = self._shed(request, result, route_class)
                elif isinstance(verdict, tuple):
                    result = verdict  # 429
                else:  # Redis decides, in the next loop turn
                    self._busy = True
                    limited: str = route_class  # type: ignore[assignment]  # a verdict: a class
                    verdict.add_done_callback(
                        lambda done: self._admitted(request, handler, limited, done)
                    )
                    return
        self._respond(request, result)

    def _shed(self, request: Request, result: HandlerResult, route_class: str) -> HandlerResult:
        """A coroutine (work that will wait on I/O) needs a slot of the shedder; without
        one it is closed unstarted and the answer is a 503. Answers made on the spot pass:
        a 503 would cost as much. A handler that answers with a future admits itself
        before starting its work (the order query: only a request that starts a lookup
        takes a slot; one that joins a lookup under way costs nothing): `Shedder.take`."""
        shedder = self._state.shedder  # (answers on the spot never get here: see _handle)
        if shedder is None or request.slot or not asyncio.iscoroutine(result):
            return result
        if shedder.admit(route_class):
            request.slot = route_class
            return result
        result.close()  # never started: nothing to undo
        return overloaded()

    def _admitted(
        self, request: Request, handler: Handler, route_class: str, done: asyncio.Future[Verdict]
    ) -> None:
        """Redis's verdict on a request that waited for it (see `_handle`)."""
        if done.cancelled() or self._transport is None:  # shutting down, or the client left
            self._finish(request, _SHUTTING_DOWN)  # (no handler runs for nobody)
            return
        refusal = self._state.limiter.answer(route_class, done.result())  # type: ignore[union-attr]
        if refusal is not None:
            self._finish(request, refusal)
            return
        result = _call(handler, request)
        if isinstance(result, tuple):
            self._finish(request, result)
        elif isinstance(result, Upgrade):  # /ws is never limited; see Router.add
            log.error("an upgrade route must be exempt from rate limits: %s", request.route)
            self._finish(request, problem_response(500, "internal", "internal error"))
        else:
            self._busy = False
            self._respond(request, self._shed(request, result, route_class))

    def _respond(self, request: Request, result: HandlerResult) -> None:
        if isinstance(result, tuple):
            self._send(request, result)
            return
        if isinstance(result, Upgrade):
            if not request.upgrade or request.method != "GET":  # llhttp's reading decides
                self._send(request, _NOT_AN_UPGRADE)
            elif not self._feeding or not self._keep_alive:
                # queued behind another request: the parser is past it (and the bytes
                # that followed it were not kept), so it cannot switch now
                self._send(request, _PIPELINED_UPGRADE)
            elif self._state.closing:
                self._send(request, _NO_UPGRADE_NOW)
            else:
                # the parser reports the upgrade right after this request (data_received)
                self._upgrade = (request, result)
            return
        self._busy = True
        if isinstance(result, asyncio.Future):
            # A Future (the order query's miss path returns one) needs no Task of its own.
            result.add_done_callback(lambda done: self._complete(request, done))
        else:  # a coroutine: a Task that answers as its last step
            # the Task copies the context: what its handler logs names the request
            token = REQUEST_ID.set(request.request_id)
            self._task = asyncio.ensure_future(self._drive(request, result))
            REQUEST_ID.reset(token)

    async def _drive(self, request: Request, work: Awaitable[Response]) -> None:
        # The answer is written in the Task's own last step: a done-callback would run one
        # loop turn later, and under load a turn is several milliseconds.
        try:
            response = await work
        except Problem as problem:
            response = problem.response()
        except asyncio.CancelledError:
            self._finish(request, _SHUTTING_DOWN)
            raise
        except Exception:
            log.exception("handler failed: %s %s", request.method, request.route)
            response = problem_response(500, "internal", "internal error")
        self._finish(request, response)

    def _complete(self, request: Request, done: asyncio.Future[Response]) -> None:
        if done.cancelled():
            self._finish(request, _SHUTTING_DOWN)
            return
        exc = done.exception()
        if exc is None:
            response = done.result()
        elif isinstance(exc, Problem):
            response = exc.response()
        else:
            log.error(
                "handler failed: %s %s",
                request.method,
                request.route,
                exc_info=exc,
                extra={"request_id": request.request_id.decode("latin-1")},
            )
            response = problem_response(500, "internal", "internal error")
        self._finish(request, response)


def _call(handler: Handler, request: Request) -> HandlerResult:
    try:
        return handler(request)
    except Problem as problem:
        return problem.response()
    except Exception:
        log.exception(
            "handler failed: %s %s",
            request.method,
            request.route,
            extra={"request_id": request.request_id.decode("latin-1")},
        )
        return problem_response(500, "internal", "internal error")
