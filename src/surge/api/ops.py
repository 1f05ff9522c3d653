"""Operational routes: liveness, readiness, metrics, the OpenAPI document, task counts."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping

from surge.api import openapi
from surge.auth import Authenticator
from surge.ground.errors import Unavailable
from surge.ground.interfaces import Probe
from surge.ground.web import Problem, Request, Response, json_response, response
from surge.http.router import Router
from surge.metrics import CONTENT_TYPE, Metrics

PROBE_TIMEOUT = 1.0
PROBE_CACHE = 0.5  # seconds a readiness verdict is reused: probes must not load Redis/DB

_OPENAPI = response(200, openapi.ENCODED)


class Readiness:
    """200 `ready`; 200 `degraded` when a dependency is down but the process still serves
    what it can (cached reads without the database, reads from the database without
    Redis); 503 while draining, or when a dependency named in `required` is down.

    Shared dependencies are not required by default: every pod shares the same Redis and
    database, so failing readiness on them would take every pod out of the Service at
    once and turn a partial outage into a total one."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        draining: Callable[[], bool],
        required: frozenset[str] = frozenset(),
    ) -> None:
        self._probes = probes
        self._draining = draining
        self._required = required
        self._verdict: tuple[float, Response] | None = None
        self._lock = asyncio.Lock()

    async def check(self, _request: Request) -> Response:
        if self._draining():
            return json_response(503, {"status": "draining"}, (("retry-after", "5"),))
        async with self._lock:  # one probe round at a time; the others reuse its verdict
            verdict = self._verdict
            if verdict is not None and time.monotonic() - verdict[0] < PROBE_CACHE:
                return verdict[1]
            checks = dict(
                zip(
                    self._probes,
                    await asyncio.gather(*(self._run(p) for p in self._probes.values())),
                    strict=True,
                )
            )
            failing = {name for name, verdict in checks.items() if verdict != "ok"}
            if not failing:
                status, code = "ready", 200
            elif failing & self._required:
                status, code = "unavailable", 503
            else:
                status, code = "degraded", 200
            response = json_response(code, {"status": status, "checks": checks})
            self._verdict = (time.monotonic(), response)
            return response

    @staticmethod
    async def _run(probe: Probe) -> str:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await probe()
            return "ok"
        except TimeoutError:
            return "timeout"
        except Unavailable:
            return "unavailable: circuit open"
        except Exception as exc:
            return f"error: {type(exc).__name__}"


def task_counts() -> dict[str, object]:
    """Live tasks by coroutine name: a growing count names the leak."""
    names: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        names[getattr(coro, "__qualname__", type(coro).__name__)] += 1
    return {"total": sum(names.values()), "by_coroutine": dict(names.most_common())}


def add_probe_routes(router: Router, metrics: Metrics, readiness: Readiness) -> None:
    """/healthz, /readyz and /metrics: what every Surge process answers, `surge worker`'s
    too."""
    alive = json_response(200, {"status": "ok", "pid": os.getpid()})  # built after the fork
    # operations' routes are never rate-limited or shed (route_class None): probes and
    # scrapes must see the server as it is, overloaded or not
    router.add("GET", "/healthz", lambda _request: alive, None)
    router.add("GET", "/readyz", readiness.check, None)
    router.add(
        "GET",
        "/metrics",
        lambda _request: response(200, metrics.render(), CONTENT_TYPE.encode()),
        None,
    )


def add_routes(
    public: Router, internal: Router, metrics: Metrics, readiness: Readiness, auth: Authenticator
) -> None:
    """The public port answers the probes and the API document; metrics and debugging
    live on the internal listener only (with the probes again, for an orchestrator that
    checks there): what they tell about the process is for its operators."""

    def tasks(request: Request) -> Response:
        user = auth.user(request.headers.get(b"authorization"))
        if not user.admin:
            raise Problem(403, "forbidden", "admin role required")
        return json_response(200, task_counts())

    alive = json_response(200, {"status": "ok", "pid": os.getpid()})  # built after the fork
    public.add("GET", "/healthz", lambda _request: alive, None)
    public.add("GET", "/readyz", readiness.check, None)
    public.add("GET", "/openapi.json", lambda _request: _OPENAPI, None)
    add_probe_routes(internal, metrics, readiness)
    internal.add("GET", "/debug/tasks", tasks, None)
