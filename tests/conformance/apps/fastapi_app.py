"""FastAPI conformance app: /premium priced by the Paid() dependency, the rest by config."""

from __future__ import annotations

import collections
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
from starlette.testclient import TestClient

from fourmica_x402.gate import Payment


class Client:
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


def build(options: dict[str, Any], calls: collections.Counter[str]) -> Client:
    options = dict(options)
    price = options.pop("premium_price")
    app = FastAPI()
    payments = FourmicaX402(app, **options)

    @app.get("/free")
    def free(request: Request) -> dict[str, Any]:
        calls[request.url.path] += 1
        return {"free": True}

    @app.get("/premium")
    def premium(request: Request, p: Payment = Paid(price)) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {
            "ok": True,
            "payer": p.payer,
            "amount": p.amount,
            "guarantee_id": p.guarantee_id,
            "request_id": p.request_id,
            "x402_version": p.x402_version,
        }

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        calls[request.url.path] += 1
        return {"echo": await request.json()}

    @app.get("/items/{item_id}")
    def item(item_id: str, request: Request) -> dict[str, Any]:
        calls[request.url.path] += 1
        return {"item": item_id}

    @app.get("/boom")
    def boom(request: Request) -> None:
        calls[request.url.path] += 1
        raise RuntimeError("boom")

    @app.get("/fail")
    def fail(request: Request) -> JSONResponse:
        calls[request.url.path] += 1
        return JSONResponse({"error": "fail"}, status_code=500)

    @app.get("/redirect")
    def redirect(request: Request) -> RedirectResponse:
        calls[request.url.path] += 1
        return RedirectResponse("/free", status_code=302)

    @app.get("/stream")
    def stream(request: Request) -> StreamingResponse:
        calls[request.url.path] += 1
        return StreamingResponse(
            (f"chunk-{i}\n".encode() for i in range(3)), media_type="text/plain"
        )

    return Client(app, payments.gate)
