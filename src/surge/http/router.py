"""Routing by path template (`/orders/{id}`), with the template kept as the metrics label.

Static paths are one dict lookup; templated paths are grouped by segment count and first
segment, so a match costs a split and a couple of dict lookups.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union
from urllib.parse import unquote

if TYPE_CHECKING:
    from surge.ground.web import Request, Response, Upgrade

HandlerResult = Union["Response", Awaitable["Response"], "Upgrade"]
Handler = Callable[["Request"], HandlerResult]


@dataclass(slots=True)
class Route:
    template: str
    methods: dict[str, Handler] = field(default_factory=dict)
    # method -> rate-limit class (see surge/ground/admission.py); None: never limited
    classes: dict[str, str | None] = field(default_factory=dict)
    params: tuple[tuple[int, str], ...] = ()  # (segment index, parameter name)

    def allowed(self) -> list[str]:
        """The methods answered (HEAD wherever GET is)."""
        methods = list(self.methods)
        if "GET" in methods and "HEAD" not in methods:
            methods.insert(methods.index("GET") + 1, "HEAD")
        return methods


class Router:
    def __init__(self) -> None:
        self._static: dict[str, Route] = {}
        # (segment count, first segment) -> [(literal segments still to check, route)]
        self._templated: dict[tuple[int, str], list[tuple[tuple[tuple[int, str], ...], Route]]] = {}
        self._routes: dict[str, Route] = {}

    def add(
        self, method: str, template: str, handler: Handler, route_class: str | None = "auto"
    ) -> None:
        """`route_class` "auto": `read` for GET and HEAD, `write` otherwise; None: exempt
        from rate limits and load shedding (health, readiness, metrics)."""
        route = self._routes.get(template)
        if route is None:
            segments = template.split("/")
            params = tuple((i, s[1:-1]) for i, s in enumerate(segments) if s.startswith("{"))
            route = self._routes[template] = Route(template, params=params)
            if not params:
                self._static[template] = route
            else:
                # segments 0 ("") and 1 are implied by the lookup key; check only the rest
                literals = tuple(
                    (i, s) for i, s in enumerate(segments) if i > 1 and not s.startswith("{")
                )
                key = (len(segments), segments[1])
                self._templated.setdefault(key, []).append((literals, route))
        route.methods[method] = handler
        if route_class == "auto":
            route_class = "read" if method in ("GET", "HEAD") else "write"
        route.classes[method] = route_class

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route of a raw (undecoded) path, and its parameters %-decoded."""
        route = self._static.get(path)
        if route is not None:
            return route, {}
        segments = path.split("/")
        if len(segments) < 2:
            return None
        for literals, candidate in self._templated.get((len(segments), segments[1]), ()):
            for i, literal in literals:
                if segments[i] != literal:
                    break
            else:
                params = {name: segments[i] for i, name in candidate.params}
                if "%" in path:
                    for name, value in params.items():
                        params[name] = unquote(value, errors="replace")
                return candidate, params
        return None

    def route(self, template: str) -> Route:
        """The route of `template` (another face calls its handlers: surge.rpc)."""
        return self._routes[template]

    def methods_of(self, template: str) -> list[str]:
        route = self._routes.get(template)
        return list(route.methods) if route is not None else []

    def unlimited_gets(self) -> list[str]:
        """Static paths whose GET is exempt from rate limits and shedding."""
        return [t for t, route in self._static.items() if route.classes.get("GET", "") is None]

    def describe(self) -> list[str]:
        """Every route as "METHOD /template"."""
        return [f"{m} {t}" for t, route in self._routes.items() for m in route.methods]

    @property
    def templates(self) -> list[str]:
        return list(self._routes)
