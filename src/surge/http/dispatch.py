"""From a parsed request to its answer: the route, the rate limit, the handler, load
shedding, and the answer whichever form the handler gives it. Plain functions of the
process's `ServerState` and the request; the connection (surge.http.server.HttpProtocol)
writes what they give, or what they pass to its `finish` once a Future or a coroutine
(run as a Task) is done, or waits for the rate limiter's verdict still to come.

A handler's result is a Response made on the spot, a Future, a coroutine or an `Upgrade`;
an exception it raises is an answer too (a `Problem` its own, anything else a logged 500).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from surge.ground.admission import LoadShedding, Verdict, overloaded
from surge.ground.web import Problem, Request, Response, Upgrade
from surge.http.answers import ENCODED_SLASH, INTERNAL, NOT_FOUND, SHUTTING_DOWN, not_allowed
from surge.http.router import Handler, HandlerResult

if TYPE_CHECKING:
    from surge.http.server import HttpProtocol
    from surge.http.state import ServerState

log = logging.getLogger("surge.http")

Finish = Callable[[Request, Response], None]  # the connection writes a request's answer


def dispatch(state: ServerState, request: Request, conn: HttpProtocol) -> HandlerResult | None:
    """What answers `request`: its handler's result, or the engine's own answer (no route,
    a wrong method, a 429, a 503 shed). None: the rate limiter decides later (Redis, in
    the next loop turn) and hands its verdict to `conn.admitted`."""
    state.in_flight += 1
    # Routes match the path as sent, not %-decoded: a path rule in a proxy in front sees
    # the same path we route (`/%6detrics` is no /metrics); an encoded slash would make
    # one segment look like two to whoever decodes it.
    path = request.path
    if "%" in path and "%2f" in path.lower():
        return ENCODED_SLASH
    if (match := state.router.match(path)) is None:
        return NOT_FOUND
    route, request.params = match
    request.route = route.template
    method = request.method
    handler = route.methods.get(method)
    if handler is None and method == "HEAD":  # HEAD is served wherever GET is
        method = "GET"
        handler = route.methods.get(method)
    if handler is None:
        return not_allowed(route.allowed())
    route_class = route.classes[method]
    if route_class is None:  # never limited, never shed
        return call(handler, request)
    limiter = state.limiter
    verdict = None if limiter is None else limiter.check(request, route_class)
    if verdict is None:
        result = call(handler, request)
        if isinstance(result, tuple):
            return result
        return shed(state.shedder, request, result, route_class)
    if isinstance(verdict, tuple):
        return verdict  # 429
    verdict.add_done_callback(lambda done: conn.admitted(request, handler, route_class, done))
    return None


def after_verdict(
    state: ServerState, request: Request, handler: Handler, route_class: str, verdict: Verdict
) -> HandlerResult:
    """What answers a request that waited for the rate limiter's `verdict` (`dispatch`)."""
    refused = state.limiter.answer(route_class, verdict)  # type: ignore[union-attr]
    if refused is not None:
        return refused
    result = call(handler, request)
    if isinstance(result, tuple):
        return result
    if isinstance(result, Upgrade):  # /ws is never limited; see Router.add
        log.error("an upgrade route must be exempt from rate limits: %s", request.route)
        return INTERNAL
    return shed(state.shedder, request, result, route_class)


def shed(
    shedder: LoadShedding | None, request: Request, result: HandlerResult, route_class: str
) -> HandlerResult:
    """A coroutine (work that will wait on I/O) needs a slot of the shedder; without one
    it is closed unstarted and the answer is a 503. Answers made on the spot pass: a 503
    would cost as much. A handler that answers with a future admits itself before starting
    its work (the order query: only a request that starts a lookup takes a slot; one that
    joins a lookup under way costs nothing)."""
    if shedder is None or request.slot or not asyncio.iscoroutine(result):
        return result
    if shedder.admit(route_class):
        request.slot = route_class  # given back when the connection answers it
        return result
    result.close()  # never started: nothing to undo
    return overloaded()


async def drive(request: Request, work: Awaitable[Response], finish: Finish) -> None:
    """A handler's coroutine, run as a Task that answers in its own last step: a
    done-callback would run one loop turn later, and under load a turn is several
    milliseconds."""
    try:
        response = await work
    except asyncio.CancelledError:
        finish(request, SHUTTING_DOWN)
        raise
    except Exception as exc:
        response = failed(request, exc)
    finish(request, response)


def complete(finish: Finish, request: Request, done: asyncio.Future[Response]) -> None:
    """A handler's Future is done: its answer (a cancelled one's: shutting down)."""
    if done.cancelled():
        finish(request, SHUTTING_DOWN)
        return
    exc = done.exception()
    finish(request, done.result() if exc is None else failed(request, exc))


def call(handler: Handler, request: Request) -> HandlerResult:
    """What `handler` answers `request` (an exception it raises made into its answer)."""
    try:
        return handler(request)
    except Exception as exc:
        return failed(request, exc)


def failed(request: Request, exc: BaseException) -> Response:
    """The answer to a handler that raised `exc`: a Problem's own, else a logged 500."""
    if isinstance(exc, Problem):
        return exc.response()
    log.error(
        "handler failed: %s %s",
        request.method,
        request.route,
        exc_info=exc,
        extra={"request_id": request.request_id.decode("latin-1")},
    )
    return INTERNAL
