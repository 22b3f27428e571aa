"""The demo's three sellers — a Starlette *planner*, a Flask *data* service and a Django
*validator* — and the loopback servers they run on.

One seller per framework, each with its own gate on the demo's one Core file, so a single run
shows every adapter pricing the endpoint its own router resolved (docs/architecture.md, "Which
route is priced"). The planner prices its route in the config's route table; the other two
with the ``@paid`` decorator. Frameworks are imported only when a seller is built.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import httpx

from fourmica_x402.config import PaymentConfig

__all__ = [
    "NETWORK",
    "PRICES",
    "django_validator",
    "flask_data",
    "free_port",
    "serve_asgi",
    "serve_wsgi",
    "starlette_planner",
    "wait_up",
]

#: Base Sepolia: the sandbox network every agent and seller of the demo uses.
NETWORK = "eip155:84532"
#: seller → (its paid path, its price).
PRICES = {
    "planner": ("/plan", "$0.02"),
    "data": ("/data", "$0.01"),
    "validator": ("/validate", "$0.005"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def starlette_planner(config: PaymentConfig) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ..asgi import PaymentMiddleware

    async def plan(request: Request) -> JSONResponse:
        steps = ["gather data", "validate", "summarise"]
        return JSONResponse({"plan": steps, "for": request.state.payment.payer})

    async def free(request: Request) -> JSONResponse:
        return JSONResponse({"free": True})

    return Starlette(
        routes=[Route("/plan", plan), Route("/free", free)],
        middleware=[Middleware(PaymentMiddleware, config=config)],  # type: ignore[arg-type]
    )


def flask_data(config: PaymentConfig) -> Any:
    from flask import Flask, g

    from ..flask import FourmicaX402, paid

    app = Flask("fourmica_demo_data")
    FourmicaX402(app, config=config)

    @app.get("/data")
    @paid(price=PRICES["data"][1])
    def data() -> dict[str, Any]:
        return {"rows": [random.random() for _ in range(5)], "for": g.payment.payer}

    @app.get("/free")
    def free() -> dict[str, Any]:
        return {"free": True}

    return app


def django_validator(config: PaymentConfig) -> Any:
    import django
    from django.conf import settings

    module = types.ModuleType("fourmica_demo_validator_urls")
    sys.modules[module.__name__] = module
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="demo-only-not-secret",
            ROOT_URLCONF=module.__name__,
            MIDDLEWARE=["fourmica_x402.adapters.django.PaymentMiddleware"],
            INSTALLED_APPS=[],
            DATABASES={},
            FOURMICA_X402_CONFIG=config,
            USE_TZ=True,
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpRequest, JsonResponse
    from django.urls import path

    from ..django import paid

    @paid(price=PRICES["validator"][1])
    def validate(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"valid": True, "score": 100, "for": request.payment.payer})  # type: ignore[attr-defined]

    def free(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"free": True})

    module.urlpatterns = [path("validate", validate), path("free", free)]  # type: ignore[attr-defined]
    return WSGIHandler()


@contextlib.contextmanager
def serve_wsgi(app: Any, port: int) -> Iterator[None]:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:  # the demo prints its own story
            pass

    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()


@contextlib.contextmanager
def serve_asgi(app: Any, port: int) -> Iterator[None]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/free", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"seller at {url} did not start")
