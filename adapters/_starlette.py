"""Starlette's router seen from the payment middleware, outside it: which route a scope will
reach, asked of the router's own routes (``route.matches``, mounts and hosts included, the
first full match wins, as in ``Router.app``), never read from the path (docs/architecture.md,
"Which route is priced"). Imported for a router only."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from fourmica_x402.errors import FourmicaError
from fourmica_x402.gate import Endpoint, Gate, RouterFailed
from fourmica_x402.gate.lifecycle import Endpoints, Marker

from ._fastapi_routes import effective, frontends, included, rooted, tree
from ._mounted import mounted_router, mounted_routes, wrapped
from ._served import served

__all__ = ["StarletteRouter"]

Scope = MutableMapping[str, Any]


class StarletteRouter:
    """A Starlette router seen from outside: resolves a scope the way it will route it."""

    def __init__(self, router: Any, marker: Callable[[Any], Marker | None]) -> None:
        from starlette.convertors import CONVERTOR_TYPES
        from starlette.exceptions import HTTPException
        from starlette.routing import Host, Match, Mount, Router, WebSocketRoute, get_route_path

        self.router, self._nested, self._http_error = router, (Mount, Host), HTTPException
        self._full, self._none, self._nf = Match.FULL, Match.NONE, Router.not_found
        self._route_path = get_route_path  # the path a router routes by, below its root_path
        self.endpoint = Endpoints(
            lambda route: (marker(route), served(route)),
            lambda route: isinstance(route, WebSocketRoute),
            CONVERTOR_TYPES.get,
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

    def walk(self, routes: Any = None, prefix: str = "") -> Iterator[tuple[Any, str, Any]]:
        """``(route, template, source)`` of every endpoint, mounts and included routers
        included (``source``: what describes the route, see :func:`_effective`)."""
        for route in self.router.routes if routes is None else routes:
            if included(route):
                for context in route.effective_route_contexts():
                    yield from self._below(*effective(context), prefix)
            else:
                yield from self._below(route, getattr(route, "path", ""), None, prefix)
        for front, template in frontends(self.router) if routes is None else ():
            yield front, template, None  # FastAPI's frontend(): a whole tree

    def _below(
        self, route: Any, path: str, source: Any, prefix: str
    ) -> Iterator[tuple[Any, str, Any]]:
        path = prefix + path
        if isinstance(route, self._nested):
            if routes := mounted_routes(route):
                yield from self.walk(routes, path)
                return
            path += "/{path:path}"  # a mounted app without routes: everything under it
        yield route, path, source

    def resolve(self, scope: Scope) -> Endpoint | None:  # scope: a copy, FastAPI writes in it
        routes, prefix, mount = self.router.routes, "", None
        while True:
            for route in routes:  # the first full match wins, as in Router.app
                match, child = route.matches(scope)
                if match is self._full:
                    break
            else:  # 404, 405 or a redirect: the router will not serve it; or a frontend
                if mount is None:
                    return self._low_priority(scope)
                router = mounted_router(mount)
                return None if self._elsewhere(router, scope) else self._beyond(mount, prefix)
            path, source = getattr(route, "path", ""), None
            while included(route):  # the route it stands for, as its _match picks it
                match, child, inner, context = route._match(scope)
                if match is not self._full:
                    return None
                route, path, source = (inner, "", None) if context is None else effective(context)
            prefix += path
            if isinstance(route, self._nested) and (below := mounted_routes(route)):
                scope, routes, mount = rooted({**scope, **child}, route.app), below, route
                continue
            if isinstance(route, self._nested):
                prefix += "/{path:path}"
            return self.endpoint(route, prefix, source)

    def _elsewhere(self, router: Any, scope: Scope) -> bool:
        """Whether ``router`` answers ``scope`` with a route's 405 or a slash redirect."""
        routes, path = getattr(router, "routes", None) or (), scope.get("path", "")
        if any(r.matches(scope)[0] is not self._none for r in routes):
            return True
        if not getattr(router, "redirect_slashes", False) or self._route_path(scope) == "/":
            return False
        other = {**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
        return any(r.matches(other)[0] is not self._none for r in routes)

    def _low_priority(self, scope: Scope) -> Endpoint | None:
        """A FastAPI ``frontend()`` route (an included router's too), tried as FastAPI does:
        after a 405 and a trailing-slash redirect; then the router's own ``default``."""
        find = getattr(self.router, "_match_low_priority", None)
        if self._elsewhere(self.router, scope):
            return None
        match, _, group, context = find(dict(scope)) if find else (self._none, 0, 0, 0)
        inner, prefix = getattr(group, "_match", None), getattr(context, "frontend_prefix", "")
        if match is not self._full or inner is None or not isinstance(prefix, str):
            return self._beyond(None, "")
        front = inner(dict(scope), prefix=prefix)[2]  # an included router's: under its prefix
        return None if front is None else self.endpoint(front, tree(front, prefix), None)

    def _beyond(self, mount: Any, prefix: str) -> Endpoint | None:
        """What a router serves beyond its routes (a mounted FastAPI app's frontends, its own
        ``default``, a layer around it): the mount's, or the app's, priced by a catch-all."""
        router = self.router if mount is None else mounted_router(mount)
        default = getattr(router, "default", None)
        own = default is not None and getattr(default, "__func__", None) is not self._nf
        if own or (mount is not None and (any(frontends(router)) or wrapped(mount))):
            return self.endpoint(mount or self.router, prefix + "/{path:path}")
        return None

    def resolver(self, scope: Scope) -> Callable[[], Endpoint | None]:
        return lambda: self._resolved(scope)

    def _resolved(self, scope: Scope) -> Endpoint | None:
        try:  # a HEAD no route serves is priced like the GET it mirrors (FastAPI's GET routes)
            found = self.resolve(dict(scope))
            if found is None and scope.get("method") == "HEAD":
                found = self.resolve({**scope, "method": "GET"})
            return found
        except self._http_error as exc:  # a convertor's own answer (the gate decides who gives it)
            headers = [(str(k), str(v)) for k, v in (exc.headers or {}).items()]
            raise RouterFailed(str(exc.detail), exc.status_code, headers, scope["path"]) from exc
        except FourmicaError:
            raise
        except Exception as exc:  # the router itself raised: it will again, before any handler
            raise RouterFailed(f"the router raised {type(exc).__name__}") from exc
