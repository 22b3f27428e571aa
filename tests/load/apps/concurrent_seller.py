"""The seller the concurrent-attack tests run under real servers, one module per framework.

``app``: Starlette (uvicorn). ``flask_app``: Flask (gunicorn). Env: LOAD_CORE (database URL),
LOAD_COUNTER (a file: one line per handler run), PAY_TO. Routes: GET /a and GET /b ($0.01),
POST /c ($0.02), GET /free.
"""

from __future__ import annotations

import functools
import os
from typing import Any

COUNTER = os.environ["LOAD_COUNTER"]
ROUTES = {"GET /a": "$0.01", "GET /b": "$0.01", "POST /c": "$0.02"}


def _ran(payer: str, guarantee_id: str, route: str) -> None:
    """One O_APPEND write per handler run: atomic across workers and threads."""
    fd = os.open(COUNTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {payer} {guarantee_id} {route}\n".encode())
    finally:
        os.close(fd)


@functools.cache
def _starlette() -> Any:
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fourmica_x402 import PaymentConfig

    async def free(request: Request) -> JSONResponse:
        return JSONResponse({"free": True})

    async def paid(request: Request) -> JSONResponse:
        await request.body()
        payment = request.state.payment
        _ran(payment.payer, payment.guarantee_id, request.url.path)
        return JSONResponse({"route": request.url.path, "guarantee": payment.guarantee_id})

    config = PaymentConfig(
        core=os.environ["LOAD_CORE"],
        pay_to=os.environ["PAY_TO"],
        network="eip155:84532",
        routes=ROUTES,
        throttle_failures=10_000,  # every buyer shares 127.0.0.1
    )
    routes = [Route("/free", free), Route("/a", paid), Route("/b", paid)]
    routes.append(Route("/c", paid, methods=["POST"]))
    return Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, config=config)])


@functools.cache
def _flask() -> Any:
    from flask import Flask, g, request
    from fourmica_x402.adapters.flask import FourmicaX402

    flask_app = Flask(__name__)
    flask_app.config["FOURMICA_X402_PAY_TO"] = os.environ["PAY_TO"]
    flask_app.config["FOURMICA_X402_NETWORK"] = "eip155:84532"
    flask_app.config["FOURMICA_X402_CORE"] = os.environ["LOAD_CORE"]
    flask_app.config["FOURMICA_X402_ROUTES"] = ROUTES
    flask_app.config["FOURMICA_X402_THROTTLE_FAILURES"] = 10_000
    payments = FourmicaX402(flask_app)

    @flask_app.get("/free")
    def free() -> dict[str, Any]:
        return {"free": True}

    @flask_app.route("/a", endpoint="a")
    @flask_app.route("/b", endpoint="b")
    @flask_app.post("/c", endpoint="c")
    def paid() -> dict[str, Any]:
        request.get_data()
        _ran(g.payment.payer, g.payment.guarantee_id, request.path)
        return {"route": request.path, "guarantee": g.payment.guarantee_id}

    payments.check()
    return flask_app


def __getattr__(name: str) -> Any:  # each server loads only its framework
    if name == "app":
        return _starlette()
    if name == "flask_app":
        return _flask()
    raise AttributeError(name)
