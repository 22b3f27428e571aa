"""Starlette conformance app (pure ASGI middleware)."""

from __future__ import annotations

import collections
from typing import Any

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.config import PaymentConfig


class AsgiClient:
    interface = "asgi"

    def __init__(self, app: Any, gate: Any) -> None:
        self.gate = gate
        self.app = app
        self._client = TestClient(app, raise_server_exceptions=False, follow_redirects=False)

    def request(self, method: str, path: str, headers: dict[str, str], json: Any = None) -> Any:
        r = self._client.request(method, path, headers=headers, json=json)
        return r.status_code, dict(r.headers.items()), r.content

    def close(self) -> None:
        self._client.close()


def build(options: dict[str, Any], calls: collections.Counter[str]) -> AsgiClient:
    options = dict(options)
    price = options.pop("premium_price")
    options["routes"] = {"GET /premium": price, **options["routes"]}

    def counted(request: Request) -> None:
        calls[request.url.path] += 1

    async def free(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse({"free": True})

    async def premium(request: Request) -> JSONResponse:
        counted(request)
        p = request.state.payment
        return JSONResponse(
            {
                "ok": True,
                "payer": p.payer,
                "amount": p.amount,
                "guarantee_id": p.guarantee_id,
                "request_id": p.request_id,
                "x402_version": p.x402_version,
            }
        )

    async def echo(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse({"echo": await request.json()})

    async def item(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse({"item": request.path_params["item_id"]})

    async def boom(request: Request) -> JSONResponse:
        counted(request)
        raise RuntimeError("boom")

    async def fail(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse({"error": "fail"}, status_code=500)

    async def redirect(request: Request) -> RedirectResponse:
        counted(request)
        return RedirectResponse("/free", status_code=302)

    async def stream(request: Request) -> StreamingResponse:
        counted(request)

        async def chunks() -> Any:
            for i in range(3):
                yield f"chunk-{i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    config = PaymentConfig(**options)
    app = Starlette(
        routes=[
            Route("/free", free),
            Route("/premium", premium),
            Route("/echo", echo, methods=["POST"]),
            Route("/items/{item_id}", item),
            Route("/boom", boom),
            Route("/fail", fail),
            Route("/redirect", redirect),
            Route("/stream", stream),
        ],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    client = AsgiClient(app, None)
    client._client.__enter__()
    # Starlette builds its middleware stack lazily: reach the gate after the first call.
    client._client.get("/free")
    calls["/free"] -= 1
    client.gate = _find_gate(app)
    return client


def _find_gate(app: Any) -> Any:
    node = app.middleware_stack
    while node is not None:
        if isinstance(node, PaymentMiddleware):
            return node.gate
        node = getattr(node, "app", None)
    raise RuntimeError("PaymentMiddleware not found")
