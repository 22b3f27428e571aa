"""What lies down a middleware chain, seen from the payment middleware outside it: the
Starlette router that will route the request, a ``root_path`` an app there sets itself,
Werkzeug's ``ProxyFix`` rewriting the host Flask routes by (docs/architecture.md, "Which
route is priced"), a CORS layer and a layer that copies responses (in the apps it mounts too)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "answers_preflight",
    "applied_root_path",
    "copying_layer",
    "find_router",
    "forwarded",
    "gate_form",
]


def applied_root_path(app: Any) -> str:
    """The ``root_path`` a FastAPI app down a middleware chain sets on every request itself
    (``FastAPI(root_path=...)``), which a middleware outside it must apply to route as it will."""
    fastapi = sys.modules.get("fastapi")
    for _ in range(64):
        if app is None or fastapi is None:
            return ""
        if isinstance(app, fastapi.FastAPI) and app.root_path:
            return str(app.root_path)
        app = getattr(app, "app", None)
    return ""


def find_router(app: Any) -> Any:
    """The Starlette router at the end of a middleware chain, if there is one."""
    try:  # by type: FastAPI 0.165's routers also match like the routes they stand for
        from starlette.routing import Router
    except ImportError:  # no Starlette: no router
        return None
    for _ in range(64):
        if isinstance(app, Router) or isinstance(getattr(app, "router", None), Router):
            return app if isinstance(app, Router) else app.router
        app = getattr(app, "app", None)
    return None


def forwarded(app: Any) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The environ a WSGI app down the chain will see, when ``ProxyFix`` instances sit between
    (installed before the payment middleware): with subdomain or host matching, Flask routes
    by the forwarded host. None when there is none."""
    try:
        from werkzeug.middleware.proxy_fix import ProxyFix
    except ImportError:  # no Werkzeug: no ProxyFix
        return None
    clones = []
    for _ in range(64):
        if isinstance(app, ProxyFix):  # the same settings, handing the environ back
            clones.append(copy.copy(app))
            clones[-1].app = lambda environ, start_response: []
        app = getattr(app, "app", None)
    if not clones:
        return None

    def fixed(environ: dict[str, Any]) -> dict[str, Any]:
        environ = dict(environ)
        for clone in clones:  # outermost first, as the request meets them
            clone(environ, lambda *args: None)  # type: ignore[arg-type]
        return environ

    return fixed


def answers_preflight(app: Any, scope: Any) -> bool:
    """Whether ``scope`` is a CORS preflight that a Starlette ``CORSMiddleware`` down ``app``'s
    chain answers itself (it never passes one on to the route): the gate's app's, or that of
    the app a ``Mount`` or ``Host`` of its router serves the request with."""
    names = {k.lower() for k, _ in scope.get("headers") or ()}
    if (
        scope.get("method") != "OPTIONS"
        or not {b"origin", b"access-control-request-method"} <= names
    ):
        return False
    cors = getattr(sys.modules.get("starlette.middleware.cors"), "CORSMiddleware", None)
    routing = sys.modules.get("starlette.routing")
    for _ in range(100):  # bounded: a stack is a few layers deep
        if cors is None or app is None or isinstance(app, cors):
            return app is not None and cors is not None
        if getattr(app, "middleware_stack", 0) is None:  # an app its router mounts, unbuilt
            declared = (getattr(m, "cls", None) for m in getattr(app, "user_middleware", ()))
            if any(isinstance(c, type) and issubclass(c, cors) for c in declared):
                return True
            app = getattr(app, "router", None)
        elif routing is not None and isinstance(app, routing.Router):  # on to the app it
            app, scope = _mounted(app, scope, routing)  # mounts for this request, if any
        else:
            app = getattr(app, "app", None) or getattr(app, "middleware_stack", None)
    return False


def _mounted(router: Any, scope: Any, routing: Any) -> tuple[Any, Any]:
    """The app of the ``Mount`` or ``Host`` that ``router`` serves ``scope`` with (the first
    full match, as the router dispatches), and the scope it gets; None: no such app."""
    for route in router.routes:
        match, child = route.matches(scope)
        if match is routing.Match.FULL:
            nested = isinstance(route, (routing.Mount, routing.Host))
            return (route.app, {**scope, **child}) if nested else (None, scope)
    return None, scope


def copying_layer(app: Any, base: type, depth: int = 0) -> tuple[Any, Any] | None:
    """``(class, dispatch)`` of the first ``base`` layer (Starlette's ``BaseHTTPMiddleware``,
    which passes on ``call_next``'s copy of each response) down ``app``'s middleware chain, then
    down the apps its router mounts; None when there is none. A gate in the http middleware
    form, registered as such, runs the app below it itself: it is none."""
    routing = sys.modules.get("starlette.routing")
    node = app
    for _ in range(100):  # bounded: a stack is a few layers deep
        if node is None:
            return None
        stack = getattr(node, "middleware_stack", 0)
        if isinstance(node, base) and not gate_form(getattr(node, "dispatch_func", None)):
            return type(node), getattr(node, "dispatch_func", None)
        if stack is None:  # an app wrapped, its stack unbuilt: what it declares, its router
            declared = [
                (m.cls, m.kwargs.get("dispatch")) for m in getattr(node, "user_middleware", ())
            ]
            found = next((m for m in declared if _is(m[0], base) and not gate_form(m[1])), None)
            if found is not None:
                return found
            node = getattr(node, "router", None)
        elif routing is not None and isinstance(node, routing.Router):  # the apps it mounts
            nested = (routing.Mount, routing.Host)
            mounted = [r.app for r in node.routes if isinstance(r, nested)] if depth < 8 else []
            return next(filter(None, (copying_layer(a, base, depth + 1) for a in mounted)), None)
        else:
            node = getattr(node, "app", None) or stack or None
    return None


def gate_form(dispatch: Any) -> bool:  # the http middleware form of the gate (it has its gate),
    # not a wrapper of it that functools.wraps gave its attributes: that one runs call_next
    return getattr(dispatch, "gate", None) is not None and not hasattr(dispatch, "__wrapped__")


def _is(cls: Any, base: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)
