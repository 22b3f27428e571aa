"""What a Starlette ``Mount`` or ``Host`` holds, seen from the gate outside it: the router
that routes below it, down its app's own middleware chain (docs/architecture.md, "Which route
is priced"); and the apps that have a payment gate of their own: a ``Paid`` route of an app
whose gate receives at another payTo is that gate's to sell, never the outer one's
(docs/architecture.md, "What an adapter does")."""

from __future__ import annotations

from typing import Any

from fourmica_x402.gate import Gate

from ._chain import find_router, gate_form
from ._fastapi_routes import included

__all__ = ["mounted_router", "mounted_routes", "sold_elsewhere", "wrapped"]


def sold_elsewhere(router: Any, gate: Gate) -> set[int]:
    """The ids of the routes below ``router`` that a mounted app's own gate sells to another
    payTo than ``gate``'s (a fixed one on both sides: a payTo callable is anyone's); a route
    object this router also serves outside such an app (a shared ``APIRouter``) stays ours."""
    found: tuple[set[int], set[int]] = (set(), set())  # ours, theirs
    _walk(router, gate, False, 0, found)
    return found[1] - found[0]


def _walk(router: Any, gate: Gate, elsewhere: bool, depth: int, found: Any) -> None:
    from starlette.routing import Host, Mount

    for route in getattr(router, "routes", ()) if depth < 8 else ():
        if isinstance(route, (Mount, Host)):
            below = elsewhere or _payees(route.app) - {_fixed(gate.config.pay_to)} - {None}
            _walk(find_router(route.app), gate, bool(below), depth + 1, found)
        elif included(route):
            found[elsewhere].update(id(c.original_route) for c in route.effective_route_contexts())
        else:
            found[elsewhere].add(id(route))


def _payees(app: Any) -> set[str | None]:
    """The payTo of each gate down ``app``'s middleware chain (None: not a fixed one)."""
    from .asgi import PaymentMiddleware

    found: set[str | None] = set()
    for _ in range(64):
        if app is None:
            break
        if isinstance(app, PaymentMiddleware) and app.gate is not None:
            found.add(_fixed(app.gate.config.pay_to))
        for declared in getattr(app, "user_middleware", ()):
            cls, options = getattr(declared, "cls", None), getattr(declared, "kwargs", {})
            gate = getattr(options.get("dispatch"), "gate", None)  # the http middleware form
            if isinstance(cls, type) and issubclass(cls, PaymentMiddleware):
                gate = options.get("gate")
                config = options.get("config") if gate is None else gate.config
                found.add(_fixed(options.get("pay_to") if config is None else config.pay_to))
            elif isinstance(gate, Gate):
                found.add(_fixed(gate.config.pay_to))
        app = getattr(app, "app", None)
    return found


def _fixed(pay_to: Any) -> str | None:
    return pay_to.lower() if isinstance(pay_to, str) else None


def mounted_router(route: Any) -> Any:
    """The router that serves what a ``Mount`` or ``Host`` holds: down the middleware chain of
    its app (a ``CORSMiddleware`` around a ``Router``), so that its routes are priced as it
    routes them, not as one route (docs/architecture.md, "Which route is priced"). A gate of
    its own on the way keeps the app whole (its routes are that gate's): the app itself."""
    found = getattr(route, _MOUNTED, None)  # kept on the route: asked on every request
    if found is None or found[0] is not route.app:
        found = (route.app, _router_below(route))
        setattr(route, _MOUNTED, found)
    return found[1]


def _router_below(route: Any) -> Any:
    from starlette.routing import Router

    from .asgi import PaymentMiddleware

    app = route.app
    for _ in range(64):
        if isinstance(app, Router) or isinstance(getattr(app, "router", None), Router):
            router = app if isinstance(app, Router) else app.router
            # an ``.app`` naming the app this mount is part of (a widget's reference back to
            # it) is no router of the mount's own: following it would walk that app again
            return route.app if _holds(router, route, set()) else router
        if isinstance(app, PaymentMiddleware) or gate_form(getattr(app, "dispatch_func", None)):
            break
        app = getattr(app, "app", None)
    return route.app


def _holds(router: Any, route: Any, seen: set[int]) -> bool:
    """Whether ``route`` is one of ``router``'s routes, or of the routers its mounts hold."""
    if id(router) in seen:
        return False
    seen.add(id(router))
    for each in getattr(router, "routes", None) or ():
        if each is route or (hasattr(each, "routes") and _holds(_below(each), route, seen)):
            return True
    return False


def _below(route: Any) -> Any:  # the router a mount holds, its own routes' or down its chain
    if route.routes:
        return route
    app = route.app
    for _ in range(64):
        if app is None or hasattr(app, "routes"):
            return app
        app = getattr(app, "app", None)
    return None


#: Set on a ``Mount`` or ``Host``: its app when looked at, and the router found below it.
_MOUNTED = "_fourmica_x402_mounted"


def mounted_routes(route: Any) -> Any:
    """The routes a ``Mount`` or ``Host`` serves: its own, else its router's (see above)."""
    return route.routes or getattr(mounted_router(route), "routes", None) or []


def wrapped(route: Any) -> bool:
    """Whether the router a ``Mount`` or ``Host`` serves with sits behind a layer of its own
    (a ``CORSMiddleware``, a ``Mount(middleware=...)``), which may answer a path the router
    does not serve itself: what the mount serves, priced by a key naming everything under it
    (docs/architecture.md, "Which route is priced")."""
    router = mounted_router(route)
    return router is not route.app and router is not getattr(route.app, "router", None)
