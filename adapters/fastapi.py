"""FastAPI: price routes with a per-route dependency.

    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
    from fourmica_x402.gate import Payment

    app = FastAPI()
    FourmicaX402(app, pay_to="0xYourAddress")

    @app.get("/premium")
    def premium(payment: Payment = Paid("$0.01")):
        return {"payer": payment.payer}

``Paid`` prices the route it is declared on, whatever its path looks like
(``/items/{id:int}``, ``/files/{p:path}``, custom convertors), for every method
the route serves unless ``methods=`` names some; ``FourmicaX402`` installs the
pure ASGI middleware, which prices the route FastAPI's router resolves. ``Paid``
itself refuses to run its handler without a payment settled for this route
(a method it does not price is 405; no payment is a 503 ``payment_not_enforced``).
Routes can also be priced in ``routes=`` by their templates, as with any adapter.
See docs/architecture.md ("Which route is priced").
"""

from __future__ import annotations

from typing import Any

try:
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.fastapi needs FastAPI: pip install "fourmica-x402[fastapi]"'
    ) from exc

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import PASS, Gate, Payment, Response
from fourmica_x402.routes import RouteConfig, validate_marker

from .asgi import PaymentMiddleware

__all__ = ["FourmicaX402", "Paid", "PaymentRefused", "http_middleware"]

PAYMENT_KEY = "fourmica_x402.payment"


class PaymentRefused(HTTPException):
    """``Paid`` will not run its handler; rendered in the gate's JSON error shape."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(status, {"error": reason, "message": message}, headers)
        self.reason, self.message = reason, message


def Paid(price: Any = None, *, methods: Any = None, **route: Any) -> Any:
    """A dependency that prices its route and hands the handler the :class:`Payment`.

    A bad static price or payTo fails here, when the module is imported.
    """
    config = validate_marker(RouteConfig(price=price, **route), "Paid(...)")
    priced = None if methods is None else frozenset(m.upper() for m in methods)

    async def payment(request: Request) -> Payment:
        found = request.scope.get(PAYMENT_KEY)
        refusal = Gate.marker_refusal(found, request.scope.get("route"), request.method, priced)
        if refusal is not None:
            status, reason, message = refusal
            headers = {"cache-control": "no-store"}
            if status == 405 and priced:
                headers["allow"] = ", ".join(
                    sorted(priced | ({"HEAD"} if "GET" in priced else set()))
                )
            raise PaymentRefused(status, reason, message, headers)
        assert isinstance(found, Payment)
        return found

    payment.__fourmica_route__ = (config, priced)  # type: ignore[attr-defined]
    return Depends(payment)


class _FastAPIMiddleware(PaymentMiddleware):
    """The ASGI middleware on FastAPI's router, reading ``Paid`` markers off its routes."""

    def _marker(self, route: Any) -> tuple[RouteConfig, frozenset[str] | None] | None:
        return _marker(route.dependant) if isinstance(route, APIRoute) else None


def _marker(dependant: Any) -> tuple[RouteConfig, frozenset[str] | None] | None:
    for dep in dependant.dependencies:
        found = getattr(dep.call, "__fourmica_route__", None) or _marker(dep)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PaymentRefused)
    return JSONResponse(exc.detail, exc.status_code, headers=exc.headers)


class FourmicaX402:
    """Install payments on a FastAPI app; ``config`` or the keyword options of PaymentConfig.

    A bad price, payTo, network or database URL fails here; a route-table entry that
    names no route fails the app's start-up (lifespan).
    """

    def __init__(self, app: FastAPI, config: PaymentConfig | None = None, **options: Any) -> None:
        self.gate = Gate(config or PaymentConfig(**options))
        app.add_middleware(_FastAPIMiddleware, gate=self.gate, router=app.router)  # type: ignore[arg-type]
        app.add_exception_handler(PaymentRefused, _refused)


def http_middleware(config: PaymentConfig) -> Any:
    """``async def (request, call_next)`` for ``app.middleware("http")`` (the official style).

    Prefer :class:`FourmicaX402`: this form runs inside Starlette's BaseHTTPMiddleware.
    """
    import hashlib

    from starlette.responses import Response as StarletteResponse

    gate = Gate(config)
    pricer = _FastAPIMiddleware(None, gate=gate)  # resolves routes; never called as an app

    async def middleware(request: Request, call_next: Any) -> Any:
        if pricer._given_router is None:  # the app is known only once it serves a request
            pricer._given_router = request.scope["app"].router
        error = pricer._start()
        if error is not None:
            bad = Gate._error_response(500, "configuration_error", error)
            return StarletteResponse(bad.body, bad.status, headers=dict(bad.headers))
        state = await Gate.run_async(gate.before(pricer._view(request.scope, request.receive)))
        if state is PASS:
            return await call_next(request)
        if isinstance(state, Response):
            return StarletteResponse(state.body, state.status, headers=dict(state.headers))
        request.state.payment = request.scope["fourmica_x402.payment"] = state.payment
        try:
            response = await call_next(request)
        except Exception as exc:
            await Gate.run_async(gate.finish(state, None, None, exc))
            raise
        cache = response.headers.get("cache-control")
        extra = await Gate.run_async(gate.response_start(state, response.status_code, cache))
        if isinstance(extra, Response):
            await Gate.run_async(gate.finish(state, None, None))
            return StarletteResponse(extra.body, extra.status, headers=dict(extra.headers))
        for key, value in extra:
            if key == "cache-control":
                response.headers[key] = value
            else:
                response.headers.append(key, value)
        hasher, original = hashlib.sha256(), response.body_iterator

        async def body() -> Any:
            try:
                async for chunk in original:
                    hasher.update(chunk)
                    yield chunk
            finally:
                await Gate.run_async(gate.finish(state, response.status_code, hasher.hexdigest()))

        response.body_iterator = body()
        return response

    middleware.gate = gate  # type: ignore[attr-defined]
    return middleware
