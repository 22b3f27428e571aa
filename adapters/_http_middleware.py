"""FastAPI's ``@app.middleware("http")`` form of the gate (see :func:`.fastapi.http_middleware`).

Starlette runs such a middleware on HTTP requests only: WebSockets go around it. So ``Paid``
refuses a WebSocket itself, and a route-table entry naming a WebSocket route fails the
start-up (docs/architecture.md, "FastAPI's http middleware").
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.routing import Host, Mount

from fourmica_x402.config import PaymentConfig
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import PASS, Gate, Granted, PassThrough, Response
from fourmica_x402.gate.guards import sells_socket
from fourmica_x402.gate.lifecycle import OWN_HEADERS, PAYMENT_KEY, Meter
from fourmica_x402.gate.types import PAID_CACHE_CONTROL, for_shared_caches, no_store

from ._dispatch import marked
from ._exchange import Delegated, app_below, replayed, warn_copying_layers
from ._mounted import mounted_routes
from ._refusals import answer_refusals, render
from .asgi import PaymentMiddleware
from .fastapi import _marker

__all__ = ["http_middleware"]


async def _close_1008(scope: Any, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 1008})


def _no_websocket(app: Any) -> Any:
    """``app`` (a priced mount's) with WebSockets refused."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            return await _close_1008(scope, receive, send)
        return await app(scope, receive, send)  # type: ignore[no-any-return]

    return guarded


def _refuse_beyond(found: Any, gate: Gate) -> None:
    """WebSockets that what a router serves beyond its routes would take (its ``default``, a
    layer around a mounted one), under a key that prices it: refused (1008) where the mount
    or the router hands them on, since no route of its would (docs/architecture.md,
    "FastAPI's http middleware")."""
    from starlette.routing import Match

    def walk(routes: Any, prefix: str, depth: int) -> None:
        for route in routes if depth < 8 else ():
            if isinstance(route, (Mount, Host)) and (below := mounted_routes(route)):
                path = prefix + getattr(route, "path", "")
                if (beyond := found._beyond(route, path)) and sells_socket(gate.routes, beyond):
                    route.handle = refused(route.handle, below)  # type: ignore[method-assign]
                walk(below, path, depth + 1)

    def refused(handle: Any, routes: Any) -> Any:
        async def checked(scope: Any, receive: Any, send: Any) -> None:
            full = any(r.matches(scope)[0] is Match.FULL for r in routes)
            if scope["type"] == "websocket" and not full:
                return await _close_1008(scope, receive, send)
            return await handle(scope, receive, send)  # type: ignore[no-any-return]

        return checked

    walk(found.router.routes, "", 0)
    beyond = found._beyond(None, "")
    if beyond is not None and sells_socket(gate.routes, beyond):
        found.router.default = refused(found.router.default, ())


def http_middleware(config: PaymentConfig) -> Any:
    """``async def (request, call_next)`` for ``app.middleware("http")``."""
    gate = Gate(config)
    pricer = PaymentMiddleware(None, gate=gate, marker=_marker)  # resolves; never an app

    def check() -> None:  # Starlette passes WebSockets around an http middleware
        pricer._check()
        priced = [e for e in gate.endpoints or () if sells_socket(gate.routes, e)]
        for endpoint in priced:  # refused from now on (1008), whatever else happens
            if endpoint.websocket:
                endpoint.key.app = _close_1008
            elif isinstance(endpoint.key, (Mount, Host)):  # a mounted app may take them too
                endpoint.key.app = _no_websocket(endpoint.key.app)
        if pricer._router is not None:
            _refuse_beyond(pricer._router, gate)
        sockets = sorted(e.template for e in priced if e.websocket and e.marker is None)
        if sockets:
            raise ConfigurationError(
                f'priced WebSocket route(s) {sockets}: app.middleware("http") never sees a '
                "WebSocket; use FourmicaX402(app)"
            )

    below: list[Any] = []  # the app below this middleware, found at the first request

    async def middleware(request: Request, call_next: Any) -> Any:
        if pricer._given_router is None:  # the app is known only once it serves a request
            pricer._given_router = request.scope["app"].router
            answer_refusals(request.scope["app"].middleware_stack)
            below.append(app_below(request.scope["app"], middleware))
            warn_copying_layers(below[0])
        if pricer.startup.run(check) is not None:
            return render(pricer.startup.refusal)
        view, outer = pricer._view(request.scope, request.receive), request.scope.get(PAYMENT_KEY)
        state: Any = await Gate.run_async(gate.before(view, outer))  # an outer gate's: ours
        state = marked(gate, request.scope, state, below[0])  # a Paid route's own answer
        if isinstance(state, Response):
            return render(state)
        if state is not PASS:
            request.state.payment = request.scope[PAYMENT_KEY] = state.payment
        body, stack = view.read_body, request.scope.get("app")  # (an outer gate meters it all)
        granted = isinstance(state, Granted)  # served free, but private (docs/operations.md)
        if delegated := Delegated.below(stack, middleware, gate, state, body, outer is not None):
            return delegated  # the app below runs here, as under the pure ASGI middleware
        await replayed(request, body)  # call_next hands on the body the gate read
        state = PASS if isinstance(state, PassThrough) else state
        if state is PASS:
            response = await call_next(request)
            for key in [k for k in response.headers if granted and for_shared_caches(k)]:
                del response.headers[key]
            if granted and not no_store(response.headers.get("cache-control")):
                response.headers["cache-control"] = PAID_CACHE_CONTROL
            return response
        meter = Meter(gate, state)  # call_next's copy of the response: the best it can see
        try:
            response = await call_next(request)
        except Exception as exc:
            await Gate.run_async(meter.finish(exc))
            raise
        started = await Gate.run_async(meter.start(response.status_code, response.headers.items()))
        if isinstance(started, Response):  # settle-after failed: answer 402 instead
            return render(started)
        for key, value in meter.extra or ():  # ours replace the app's (as Meter.start does)
            if key in OWN_HEADERS:
                response.headers[key] = value
            else:
                response.headers.append(key, value)
        for key in [k for k in response.headers if for_shared_caches(k)]:  # (a CDN's own)
            del response.headers[key]
        response.body_iterator = meter.stream(response.body_iterator)
        return response

    middleware.gate = gate  # type: ignore[attr-defined]
    return middleware
