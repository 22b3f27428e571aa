"""FastAPI conformance app: /premium priced by the Paid() dependency, the rest by config."""

from __future__ import annotations

import collections
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
from starlette.convertors import Convertor, register_url_convertor
from starlette.testclient import TestClient

from fourmica_x402._json import loads
from fourmica_x402.gate import Payment

#: nginx's own caching header, which there wins over Cache-Control (sent by /cached, /stored).
ACCEL = {"X-Accel-Expires": "600"}


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
    options["routes"] = {**options["routes"], "GET /ws": "$0.01"}
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
        # bounded: py_ecc, which the suite imports, lets stdlib json overflow the C stack
        return {"echo": loads(await request.body())}

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
        metered = getattr(getattr(request.state, "payment", None), "stream", None)
        if metered is not None:  # a metered stream (docs/protocol.md): ?n= ticks
            n = int(request.query_params.get("n", "3"))
            ticks = ({"tick": i} for i in range(n))
            return StreamingResponse(metered.events(ticks), media_type="text/event-stream")
        return StreamingResponse(
            (f"chunk-{i}\n".encode() for i in range(3)), media_type="text/plain"
        )

    @app.get("/missing")
    def missing(request: Request) -> JSONResponse:
        calls[request.url.path] += 1
        return JSONResponse({"error": "missing"}, status_code=404)

    @app.api_route("/multi", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def multi(request: Request, p: Payment = Paid(price)) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {"method": request.method, "payer": p.payer}

    @app.api_route("/limited", methods=["GET", "POST"])
    def limited(request: Request, p: Payment = Paid(price, methods=["GET"])) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {"method": request.method}

    @app.get("/files/{p:path}")
    def files(p: str, request: Request, pay: Payment = Paid(price)) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {"file": p, "payer": pay.payer}

    @app.get("/docs/{d:anypath}")
    def docs(d: str, request: Request, pay: Payment = Paid(price)) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {"doc": d, "payer": pay.payer}

    @app.get("/numbers/{n:int}")
    def numbers(n: int, request: Request, pay: Payment = Paid(price)) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {"n": n, "payer": pay.payer}

    @app.get("/cached")
    def cached(request: Request) -> JSONResponse:
        calls[request.url.path] += 1
        return JSONResponse(
            {"cached": True}, headers={"cache-control": "public, max-age=600", **ACCEL}
        )

    @app.get("/stored")
    def stored(request: Request) -> JSONResponse:
        calls[request.url.path] += 1
        return JSONResponse(
            {"stored": False}, headers={"cache-control": "no-store, max-age=0", **ACCEL}
        )

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        calls["/ws"] += 1
        await websocket.accept()
        await websocket.send_text("paid content")
        await websocket.close()

    return Client(app, payments.gate)


class AnyPath(Convertor[str]):
    """A custom convertor whose regex matches '/' (the kind a raw-path table got wrong)."""

    regex = "[a-z0-9/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())
