"""Starlette conformance app (pure ASGI middleware)."""

from __future__ import annotations

import collections
from typing import Any

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from fourmica_x402._json import loads
from fourmica_x402.config import PaymentConfig

#: nginx's own caching header, which there wins over Cache-Control (sent by /cached, /stored).
ACCEL = {"X-Accel-Expires": "600"}


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
    options["routes"] = {"GET /premium": price, **EXTRA_ROUTES, **options["routes"]}

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
        # bounded: py_ecc, which the suite imports, lets stdlib json overflow the C stack
        return JSONResponse({"echo": loads(await request.body())})

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
        metered = getattr(getattr(request.state, "payment", None), "stream", None)
        if metered is not None:  # a metered stream (docs/protocol.md): ?n= ticks

            async def ticks() -> Any:
                for i in range(int(request.query_params.get("n", "3"))):
                    yield {"tick": i}

            return StreamingResponse(metered.events(ticks()), media_type="text/event-stream")

        async def chunks() -> Any:
            for i in range(3):
                yield f"chunk-{i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def missing(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse({"error": "missing"}, status_code=404)

    def paid_json(request: Request, **data: Any) -> JSONResponse:
        counted(request)
        return JSONResponse({**data, "payer": request.state.payment.payer})

    async def multi(request: Request) -> JSONResponse:
        return paid_json(request, method=request.method)

    async def limited(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse({"method": request.method})

    async def files(request: Request) -> JSONResponse:
        return paid_json(request, file=request.path_params["p"])

    async def docs(request: Request) -> JSONResponse:
        return paid_json(request, doc=request.path_params["d"])

    async def numbers(request: Request) -> JSONResponse:
        return paid_json(request, n=request.path_params["n"])

    async def cached(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse(
            {"cached": True}, headers={"cache-control": "public, max-age=600", **ACCEL}
        )

    async def stored(request: Request) -> JSONResponse:
        counted(request)
        return JSONResponse(
            {"stored": False}, headers={"cache-control": "no-store, max-age=0", **ACCEL}
        )

    async def ws(websocket: WebSocket) -> None:
        calls["/ws"] += 1
        await websocket.accept()
        await websocket.send_text("paid content")
        await websocket.close()

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
            Route("/missing", missing),
            Route("/multi", multi, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/limited", limited, methods=["GET", "POST"]),
            Route("/files/{p:path}", files),
            Route("/docs/{d:anypath}", docs),
            Route("/numbers/{n:int}", numbers),
            Route("/cached", cached),
            Route("/stored", stored),
            WebSocketRoute("/ws", ws),
        ],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    client = AsgiClient(app, None)
    client._client.__enter__()
    # Starlette builds its middleware stack lazily: reach the gate after the first call.
    if client._client.get("/free").status_code == 200:
        calls["/free"] -= 1
    client.gate = _find_gate(app)
    return client


class AnyPath(Convertor[str]):
    """A custom convertor whose regex matches '/' (the kind a raw-path table got wrong)."""

    regex = "[a-z0-9/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())

#: Priced by config: Starlette has no per-handler marker (see apps/README.md).
EXTRA_ROUTES = {
    "/multi": "$0.01",
    "GET /limited": "$0.01",
    "GET /files/*": "$0.01",
    "GET /docs/*": "$0.01",
    "GET /numbers/:n": "$0.01",
    "GET /ws": "$0.01",
}


def _find_gate(app: Any) -> Any:
    node = app.middleware_stack
    while node is not None:
        if isinstance(node, PaymentMiddleware):
            return node.gate
        node = getattr(node, "app", None)
    raise RuntimeError("PaymentMiddleware not found")
