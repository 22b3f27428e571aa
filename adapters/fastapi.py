"""FastAPI: price routes with a per-route dependency.

    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
    from fourmica_x402.gate import Payment

    app = FastAPI()
    FourmicaX402(app, pay_to="0xYourAddress")

    @app.get("/premium")
    def premium(payment: Payment = Paid("$0.01")):
        return {"payer": payment.payer}

``Paid`` prices the route it is declared on (its signature or ``dependencies=``: the route's,
its router's or its inclusion's), for every method the route serves unless ``methods=`` names
some, and refuses to run the handler without a payment settled for this route (405, or 503
``payment_not_enforced``). ``FourmicaX402`` installs the pure ASGI middleware; ``routes=``
prices routes by their templates (docs/architecture.md, "Which route is priced").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.routing import APIRoute, APIWebSocketRoute
    from starlette.exceptions import WebSocketException
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.fastapi needs FastAPI: pip install "fourmica-x402[fastapi]"'
    ) from exc

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import Gate, Payment
from fourmica_x402.gate.guards import one_marker
from fourmica_x402.gate.lifecycle import PAYMENT_KEY, Marker

from ._chain import find_router
from ._mounted import sold_elsewhere
from ._refusals import PaymentRefused, answer_refusals, refused
from .asgi import PaymentMiddleware

__all__ = [
    "FourmicaX402",
    "Paid",
    "PaymentRefused",
    "http_middleware",
    "markers",
]


def Paid(price: Any = None, *, methods: Any = None, **route: Any) -> Any:
    """A dependency that prices its route and hands the handler the :class:`Payment`; a bad
    static price or payTo fails here, when the module is imported."""
    marker = Marker(price, methods, route).validate("Paid(...)")

    async def payment(request: HTTPConnection) -> Payment:
        if request.scope["type"] == "websocket":  # no paid-WebSocket mode: refused, 1008
            raise WebSocketException(1008, "payment_required")
        assert isinstance(request, Request)
        found = request.scope.get(PAYMENT_KEY)
        route = request.scope.get("route")
        served = sorted(getattr(route, "methods", None) or ())
        refused = marker.refusal(found, route, request.method, served)
        if refused is not None:
            raise PaymentRefused(refused)
        assert isinstance(found, Payment)
        return found

    return Depends(marker.attach(payment))


def _marker(route: Any) -> Marker | None:
    """The ``Paid`` of a route's dependencies (nested, its routers'…): one (see one_marker)."""

    def find(dependant: Any) -> Iterator[Marker | None]:
        for dep in dependant.dependencies:
            yield Marker.of(dep.call)
            yield from find(dep)

    kinds = (APIRoute, APIWebSocketRoute)  # a paid WebSocket: refused (1008), see asgi.py
    if not isinstance(route, kinds) and not isinstance(getattr(route, "original_route", 0), kinds):
        return None
    return one_marker(find(route.dependant), f"route {route.path!r}")


def markers(
    app: Any,
    given: Callable[[Any], Marker | None] | None,
    gate: Gate | None = None,
    router: Any = None,
) -> Callable[[Any], Any]:
    """``given``, or what finds every route's ``Paid``; its refusals answered in the gate's
    shape by the exception layers down ``app``'s chain (see ``_refusals.answer_refusals``).
    The ``Paid`` routes of a mounted app whose own gate receives at another payTo than
    ``gate`` are that gate's: they price nothing here (docs/architecture.md, "What an adapter
    does")."""
    answer_refusals(app)
    find = given or _marker
    theirs = set() if gate is None else sold_elsewhere(router or find_router(app), gate)
    if not theirs:
        return find
    return lambda route: (
        None if id(getattr(route, "original_route", route)) in theirs else find(route)
    )


class FourmicaX402:
    """Install payments on a FastAPI app; ``config`` or the keyword options of PaymentConfig.

    A bad price, payTo, network or database URL fails here; a route-table entry that
    names no route fails the app's start-up (lifespan).
    """

    def __init__(self, app: FastAPI, config: PaymentConfig | None = None, **options: Any) -> None:
        self.gate = Gate(config or PaymentConfig(**options))
        app.add_middleware(PaymentMiddleware, gate=self.gate, router=app.router, marker=_marker)  # type: ignore[arg-type]
        app.add_exception_handler(PaymentRefused, refused)


def http_middleware(config: PaymentConfig) -> Any:
    """``async def (request, call_next)`` for ``app.middleware("http")`` (the official style)."""
    from ._http_middleware import http_middleware as build

    return build(config)
