"""Starlette's router seen from the payment middleware: which route a scope will reach.

The middleware sits outside the router, so it asks the router's own routes
(``route.matches(scope)``, mounts and hosts included, the first full match wins, as in
``Router.app``) instead of reading the path itself (docs/architecture.md, "Which route is
priced"). Starlette is imported only when an app with a router is found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from fourmica_x402.gate import Endpoint, Gate
from fourmica_x402.gate.lifecycle import Endpoints, Marker

__all__ = ["StarletteRouter", "find_router"]

Scope = MutableMapping[str, Any]


class StarletteRouter:
    """A Starlette router seen from outside: resolves a scope the way it will route it."""

    def __init__(self, router: Any, marker: Callable[[Any], Marker | None]) -> None:
        from starlette.routing import Host, Match, Mount, WebSocketRoute

        self.router = router
        self._full, self._nested = Match.FULL, (Mount, Host)
        self.endpoint = Endpoints(
            lambda route: (marker(route), getattr(route, "methods", None)),
            lambda route: isinstance(route, WebSocketRoute),
        )

    @classmethod
    def start(
        cls, gate: Gate, router: Any, marker: Callable[[Any], Marker | None]
    ) -> StarletteRouter | None:
        """``router`` (None: none) seen from outside, once every route-table entry was found
        to name one of its routes, and its markers' prices checked."""
        if router is None:
            return None
        found = cls(router, marker)
        found.endpoint.check(gate, found.walk())
        return found

    def walk(self, routes: Any = None, prefix: str = "") -> Iterator[tuple[Any, str]]:
        """``(route, template)`` of every endpoint, mounts included."""
        for route in self.router.routes if routes is None else routes:
            path = prefix + getattr(route, "path", "")
            if isinstance(route, self._nested):
                if route.routes:
                    yield from self.walk(route.routes, path)
                    continue
                path += "/{path:path}"  # a mounted app without routes: everything under it
            yield route, path

    def resolve(self, scope: Scope) -> Endpoint | None:
        if scope.get("method") == "HEAD":  # priced like the GET (never served paid, see Gate)
            scope = {**scope, "method": "GET"}
        routes, prefix = self.router.routes, ""
        while True:
            for route in routes:  # the first full match wins, as in Router.app
                match, child = route.matches(scope)
                if match is self._full:
                    break
            else:
                return None  # 404, 405 or a redirect: the router will not serve it
            prefix += getattr(route, "path", "")
            if isinstance(route, self._nested) and route.routes:
                scope, routes = {**scope, **child}, route.routes
                continue
            if isinstance(route, self._nested):
                prefix += "/{path:path}"
            return self.endpoint(route, prefix)

    def resolver(self, scope: Scope) -> Callable[[], Endpoint | None]:
        return lambda: self.resolve(scope)


def find_router(app: Any) -> Any:
    """The Starlette router at the end of a middleware chain, if there is one."""
    for _ in range(64):
        if app is None:
            return None
        router = getattr(app, "router", None)
        if router is not None and isinstance(getattr(router, "routes", None), list):
            return router
        if isinstance(getattr(app, "routes", None), list) and not hasattr(app, "matches"):
            return app  # a Router itself (a Mount has routes too, but is a route)
        app = getattr(app, "app", None)
    return None
