"""FastAPI: price routes with a per-route dependency.

    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
    from fourmica_x402.gate import Payment

    app = FastAPI()
    FourmicaX402(app, pay_to="0xYourAddress")

    @app.get("/premium")
    def premium(payment: Payment = Paid("$0.01")):
        return {"payer": payment.payer}

``Paid`` marks the route; ``FourmicaX402`` installs the pure ASGI middleware,
which finds the marked routes on the first request. Routes can also be priced
in ``routes=`` as with any adapter.
"""

from __future__ import annotations

import re
import threading
from typing import Any

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.routing import APIRoute
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.fastapi needs FastAPI: pip install "fourmica-x402[fastapi]"'
    ) from exc

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import PASS, Gate, Payment, Response
from fourmica_x402.routes import RouteConfig

from .asgi import PaymentMiddleware, request_view

__all__ = ["FourmicaX402", "Paid", "http_middleware"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


def Paid(price: Any = None, **route: Any) -> Any:
    """A dependency that prices its route and hands the handler the :class:`Payment`."""

    async def payment(request: Request) -> Payment:
        found = request.scope.get("fourmica_x402.payment")
        if found is None:
            raise RuntimeError("Paid() needs FourmicaX402(app) (or PaymentMiddleware) installed")
        return found  # type: ignore[no-any-return]

    payment.__fourmica_route__ = RouteConfig(price=price, **route)  # type: ignore[attr-defined]
    return Depends(payment)


class _Discovering(PaymentMiddleware):
    """The ASGI middleware, plus a one-time scan of the app's routes for ``Paid`` markers."""

    def __init__(self, app: Any, *, gate: Gate, fastapi_app: FastAPI) -> None:
        super().__init__(app, gate=gate)
        self._fastapi_app = fastapi_app
        self._scanned = False
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._scanned:
            with self._lock:
                if not self._scanned:
                    self._scan()
                    self._scanned = True
        await super().__call__(scope, receive, send)

    def _scan(self) -> None:
        for route in self._fastapi_app.routes:
            if not isinstance(route, APIRoute):
                continue
            config = _marker(route.dependant)
            if config is None:
                continue
            path = _PARAM.sub(lambda m: "*" if m.group(2) else f":{m.group(1)}", route.path)
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    self.gate.add_route(f"{method} {path}", config)


def _marker(dependant: Any) -> RouteConfig | None:
    for dep in dependant.dependencies:
        found = getattr(dep.call, "__fourmica_route__", None) or _marker(dep)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


class FourmicaX402:
    """Install payments on a FastAPI app; ``config`` or the keyword options of PaymentConfig."""

    def __init__(self, app: FastAPI, config: PaymentConfig | None = None, **options: Any) -> None:
        self.gate = Gate(config or PaymentConfig(**options))
        app.add_middleware(_Discovering, gate=self.gate, fastapi_app=app)


def http_middleware(config: PaymentConfig) -> Any:
    """``async def (request, call_next)`` for ``app.middleware("http")`` (the official style).

    Prefer :class:`FourmicaX402`: this form runs inside Starlette's BaseHTTPMiddleware.
    """
    import hashlib

    from starlette.responses import Response as StarletteResponse

    gate = Gate(config)

    async def middleware(request: Request, call_next: Any) -> Any:
        state = await Gate.run_async(gate.before(request_view(request.scope, request.receive)))
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
        extra = await Gate.run_async(gate.response_start(state, response.status_code))
        if isinstance(extra, Response):
            await Gate.run_async(gate.finish(state, None, None))
            return StarletteResponse(extra.body, extra.status, headers=dict(extra.headers))
        for key, value in extra:
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
