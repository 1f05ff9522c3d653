"""A gRPC call answered by the HTTP route's own handler, under the HTTP engine's rules.

A call becomes the `Request` its HTTP twin would be (the token from the `authorization`
metadata, the path parameters, a JSON body) and goes through the same steps as one read
off a socket (surge.http.dispatch): the caller's rate limit, the handler, a slot of the
load shedder for work that waits on I/O, the route's deadline inside the handler. So
auth, owner-or-admin, idempotency, limits and shedding cannot differ between the two
faces: there is one implementation of each. The client's gRPC deadline bounds the wait
as well (the route's own applies when it is longer or there is none).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import cast

from surge.ground.admission import LoadShedding, RateLimits, Verdict
from surge.ground.web import Problem, Request, Response, Upgrade
from surge.http.answers import INTERNAL
from surge.http.dispatch import call, failed, shed
from surge.http.router import Router

Observe = Callable[[str, int, float], None]  # rpc name, HTTP status, seconds
# grpc cancels a call whose client went away or whose deadline passed before the answer:
# counted as nginx counts a client that closed its request, not as a server error
CANCELLED = 499


class Bridge:
    def __init__(
        self,
        router: Router,
        limiter: RateLimits | None,
        shedder: LoadShedding | None,
        observe: Observe,
    ) -> None:
        self._router = router
        self._limiter = limiter
        self._shedder = shedder
        self._observe = observe
        self._calls = 0  # for request ids

    async def call(
        self,
        rpc: str,
        method: str,
        template: str,
        params: dict[str, str],
        headers: dict[bytes, bytes],
        client: str,
        time_left: float | None,
        body: bytes = b"",
        query: str = "",
    ) -> Response:
        """The answer of `method template` (a route of the router) to the call `rpc`."""
        self._calls += 1
        request = Request(method, template, query, headers, body, client, b"grpc-%d" % self._calls)
        request.params = params
        request.route = template
        answer: Response = INTERNAL
        try:
            answer = await self._answer(request, template, time_left)
            return answer
        except asyncio.CancelledError:
            answer = (CANCELLED, b"", b"")
            raise
        finally:
            elapsed = time.perf_counter() - request.started
            if request.slot and self._shedder is not None:  # its work is done
                self._shedder.release(elapsed, answer[0] == 504, request.slot)
                request.slot = ""
            self._observe(rpc, answer[0], elapsed)

    async def _answer(self, request: Request, template: str, time_left: float | None) -> Response:
        route = self._router.route(template)
        handler = route.methods[request.method]
        route_class = route.classes[request.method]
        if route_class is not None and self._limiter is not None:
            verdict = self._limiter.check(request, route_class)
            if isinstance(verdict, tuple):
                return verdict  # 429
            if verdict is not None:
                refused = self._limiter.answer(route_class, await cast(Awaitable[Verdict], verdict))
                if refused is not None:
                    return refused
        result = call(handler, request)
        if isinstance(result, tuple):
            return result
        if isinstance(result, Upgrade):  # no gRPC call maps to /ws
            return INTERNAL
        if route_class is not None:
            result = shed(self._shedder, request, result, route_class)
            if isinstance(result, tuple):
                return result  # shed: 503 overloaded
        work = asyncio.ensure_future(cast(Awaitable[Response], result))
        try:
            # a Future (the order query's) is answered by its own deadline timer: shielded,
            # it is left to it; a coroutine's Task is cancelled as `within` would
            async with asyncio.timeout(time_left):
                return await asyncio.shield(work) if asyncio.isfuture(result) else await work
        except TimeoutError:
            return Problem(504, "deadline-exceeded", "the call's deadline passed").response()
        except Exception as exc:
            return failed(request, exc)
