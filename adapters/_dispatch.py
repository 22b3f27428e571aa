"""What Starlette's router dispatches, checked against what the gate decided on.

A layer between the payment middleware and the router (a method override, a path alias, a
``Mount(..., middleware=[...])``) may change the request after the gate resolved it: the router
then runs a route the gate never priced. So every route of the app is guarded where the router
calls it, ``route.handle`` (each kind of route goes through it, FastAPI's included routers too):
a route a table entry prices for the request's method is refused, 503 ``payment_not_enforced``
(a WebSocket: closed, 1008), unless the gate resolved this very route and method or the request
paid for it (docs/architecture.md, "Which route is priced"). Prices are read at dispatch: a
reprice counts. A marker's handler checks its own payment (``Paid``)."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fourmica_x402.gate import PASS, Endpoint, Gate, Response
from fourmica_x402.gate.guards import RESOLVED_KEY, rerouted, sells_socket
from fourmica_x402.gate.lifecycle import PAYMENT_KEY
from fourmica_x402.gate.types import error_response
from fourmica_x402.templates import check_raw_paths

from ._chain import answers_preflight
from ._exchange import send_response
from ._fastapi_routes import check_files
from ._running import recorded, running
from ._starlette import StarletteRouter

__all__ = ["Guarded", "guard", "marked", "recorded"]

Scope = MutableMapping[str, Any]


def marked(gate: Gate, scope: Scope, outcome: Any, below: Any = None) -> Any:
    """``outcome``, or, for a request the gate passed on to a route whose marker answers it
    (OPTIONS, a method it does not price), that answer: FastAPI would first resolve the
    route's other dependencies, which would run unpaid (docs/architecture.md, "Which route
    is priced"). A CORS preflight a ``CORSMiddleware`` in ``below`` answers is left to it."""
    endpoint, method = (scope.get(RESOLVED_KEY) or {}).get(gate) or (None, "")
    served = getattr(endpoint, "methods", None)
    if outcome is not PASS or endpoint is None or not served or method not in served:
        return outcome  # decided; or not a marker's route (below); or the router's own 405
    if not endpoint.marker_decides(method) or endpoint.marker_prices(method):
        return outcome
    allow = [m for m in sorted(served) if m == "OPTIONS" or endpoint.marker_prices(m)]
    if method == "OPTIONS" and answers_preflight(below, scope):
        return outcome  # its answer carries the CORS headers a browser needs; ours would not
    if method != "OPTIONS":
        return error_response(405, "method_not_allowed", "method not allowed", [_allow(allow)])
    return Response(200, [_allow([*allow, "OPTIONS"]), ("content-length", "0")])


def _allow(methods: list[str]) -> tuple[str, str]:
    return "allow", ", ".join(dict.fromkeys(methods))


class Guarded:
    """A route's ``handle``, checked before it runs (see the module docstring)."""

    __slots__ = ("checks", "handle", "route", "routers")

    def __init__(self, route: Any, handle: Callable[..., Awaitable[None]]) -> None:
        self.route, self.handle = route, handle
        #: Per gate pricing this route (weakly held): its endpoints for it, its router.
        self.checks: weakref.WeakKeyDictionary[Gate, list[Endpoint]] = weakref.WeakKeyDictionary()
        self.routers: weakref.WeakKeyDictionary[Gate, StarletteRouter] = weakref.WeakKeyDictionary()

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Awaitable[None]:
        if self.passes(scope):
            return self.handle(scope, receive, send)
        return self._checked(scope, receive, send)

    def passes(self, scope: Scope) -> bool:
        """Whether the route runs unchecked: each gate the request passed decided on it."""
        notes, method = scope.get(RESOLVED_KEY), scope.get("method", "GET")
        served = getattr(self.route, "methods", None)
        if served and method != method.upper() and method not in served:  # "get": the route
            return True  # answers 405 itself, as for PUT
        if not notes:  # no gate's note (a layer rebuilt the scope): every gate judges it
            return False
        return all(  # the gates this request passed, each on its own decision
            gate not in self.checks or self._decided(gate, seen, method, scope)
            for gate, seen in notes.items()
        )

    def _decided(self, gate: Gate, seen: Any, method: str, scope: Scope) -> bool:
        """Whether ``gate`` decided on this route (the object) and method; a route under
        several prefixes: under the one it runs under."""
        if seen is None or getattr(seen[0], "key", None) is not self.route or seen[1] != method:
            return False
        return len(self.checks.get(gate, ())) < 2 or self._running(gate, scope) == [seen[0]]

    def _running(self, gate: Gate, scope: Scope) -> list[Endpoint]:
        return running(gate, self.routers.get(gate), self.checks.get(gate, []), scope)

    async def _checked(self, scope: Scope, receive: Any, send: Any) -> None:
        refused = self.refusal(scope)
        if refused is None:
            return await self.handle(scope, receive, send)
        if scope["type"] == "websocket":  # as the gate answers a WebSocket on a priced route
            await receive()
            return await send({"type": "websocket.close", "code": 1008})
        return await send_response(send, refused)

    def refusal(self, scope: Scope) -> Response | None:
        """What answers instead of the route (None: it runs), by the table now of each gate
        the request passed (none noted: of every gate pricing the route, failing closed)."""
        if scope["type"] not in ("http", "websocket"):
            return None
        method, notes = scope.get("method", "GET"), scope.get(RESOLVED_KEY)
        payment = scope.get(PAYMENT_KEY)
        judges = notes.items() if notes else ((g, None) for g in list(self.checks.keys()))
        for gate, seen in judges:
            for endpoint in self._running(gate, scope):
                if scope["type"] == "websocket" and sells_socket(gate.routes, endpoint):
                    return error_response(503, "payment_not_enforced", "not served")  # 1008
                refused = rerouted(gate.routes, endpoint, method, payment, seen)
                if refused is not None:
                    return refused
        return None


def guard(gate: Gate, router: StarletteRouter | None) -> StarletteRouter | None:
    """``router``, each of its routes guarded for ``gate``; once per gate. None: the app has
    no router, its raw paths are priced (a key's ``?`` is a query there: refused)."""
    if router is None:
        check_raw_paths(gate.routes.routes)
        return None
    found: dict[int, tuple[Any, list[Endpoint]]] = {}
    for each in router.walk():
        endpoint = router.endpoint(*each)
        found.setdefault(id(endpoint.key), (endpoint.key, []))[1].append(endpoint)
    for route, endpoints in found.values():
        handle = route.handle
        if not isinstance(handle, Guarded) or handle.route is not route:  # (a copied route's)
            own = type(route).handle.__get__(route) if isinstance(handle, Guarded) else handle
            route.handle = handle = Guarded(route, own)
        handle.checks[gate], handle.routers[gate] = endpoints, router
        check_files(route)  # a FastAPI frontend's files: served without its handle too
    return router
