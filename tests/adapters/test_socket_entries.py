"""A WebSocket route that a table entry names is priced, whatever method the entry writes.

Nothing but a WebSocket reaches a WebSocket route, and there is no paid-WebSocket mode: a
handshake there is refused (1008). An entry such as ``"POST /live"`` priced it for a method
no WebSocket has, and the handshake was served free (docs/architecture.md, "Which route is
priced")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.fastapi import http_middleware
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer

SELLER = TestBuyer.new().address
KEYS = ["POST /live", "PUT /live", "* /live", "GET /live"]


def _options(tmp_path: Path, key: str) -> dict[str, Any]:
    core = Core(str(tmp_path / "core.db"))
    return {"pay_to": SELLER, "network": NETWORK, "core": core, "routes": {key: "$0.01"}}


def _handshake(client: TestClient, path: str) -> Any:
    """The first text the WebSocket sends, or the close code it was refused with."""
    try:
        with client.websocket_connect(path) as ws:
            return ws.receive_text()
    except WebSocketDisconnect as exc:
        return exc.code


def _served(calls: list[str]) -> Any:
    async def live(websocket: WebSocket) -> None:
        calls.append(websocket.url.path)
        await websocket.accept()
        await websocket.send_text("live paid content")
        await websocket.close()

    return live


@pytest.mark.parametrize("key", KEYS)
def test_a_websocket_route_any_entry_names_is_refused(tmp_path: Path, key: str) -> None:
    calls: list[str] = []
    app = Starlette(routes=[WebSocketRoute("/live", _served(calls))])
    app.add_middleware(PaymentMiddleware, **_options(tmp_path, key))
    with TestClient(app) as client:
        assert _handshake(client, "/live") == 1008
    assert calls == []


class _Alias:
    """A layer below the gate that serves ``/free`` WebSockets from ``/live``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/free":
            scope = {**scope, "path": "/live", "raw_path": b"/live"}
        await self.app(scope, receive, send)


@pytest.mark.parametrize("key", KEYS)
def test_a_websocket_rerouted_to_a_route_any_entry_names_is_refused(
    tmp_path: Path, key: str
) -> None:
    calls: list[str] = []
    app = Starlette(
        routes=[WebSocketRoute("/live", _served(calls)), WebSocketRoute("/free", _served(calls))]
    )
    app.add_middleware(_Alias)  # inside the gate: it priced /free, the router runs /live
    app.add_middleware(PaymentMiddleware, **_options(tmp_path, key))
    with TestClient(app) as client:
        assert _handshake(client, "/free") == 1008
    assert calls == []


@pytest.mark.parametrize("key", KEYS)
def test_the_http_middleware_form_refuses_to_start_with_such_an_entry(
    tmp_path: Path, key: str
) -> None:
    """app.middleware("http") never sees a WebSocket: an entry naming a WebSocket route fails
    its start-up, as one written with GET did."""
    calls: list[str] = []
    app = FastAPI()
    app.router.routes.append(WebSocketRoute("/live", _served(calls)))
    app.router.routes.append(Route("/free", lambda request: PlainTextResponse("free")))
    app.middleware("http")(http_middleware(PaymentConfig(**_options(tmp_path, key))))
    with TestClient(app) as client:
        resp = client.get("/free")
        assert resp.status_code == 500 and resp.json()["error"] == "configuration_error"
        assert "WebSocket" in resp.json()["message"]
        assert _handshake(client, "/live") == 1008
    assert calls == []


@pytest.mark.parametrize("path", ["/x402/feed", "/x402/tab", "/x402"])
def test_a_websocket_under_the_gates_prefix_is_priced_as_anywhere(
    tmp_path: Path, path: str
) -> None:
    """The gate answers HTTP requests under its prefix itself, but no WebSocket: a handshake
    there went on to a router-less app priced for everything (a proxy), unrefused."""
    calls: list[str] = []
    live = _served(calls)

    async def proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await live(WebSocket(scope, receive, send))

    app = PaymentMiddleware(proxy, **_options(tmp_path, "GET /*"))
    assert _handshake(TestClient(app), path) == 1008
    assert calls == []


@pytest.mark.parametrize("layer", [False, True])
def test_the_http_middleware_form_refuses_what_a_mounted_routers_default_takes(
    tmp_path: Path, layer: bool
) -> None:
    """app.middleware("http") never sees a WebSocket: one that a mounted router's default (a
    proxy) takes, under a key pricing everything there, is refused where the mount hands it
    on, behind a layer of the mount's own too."""
    calls: list[str] = []
    live = _served(calls)

    async def proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            return await live(WebSocket(scope, receive, send))
        await PlainTextResponse("proxied paid content")(scope, receive, send)

    inner = Router([Route("/page", lambda request: PlainTextResponse("paid"))], default=proxy)
    app = FastAPI()
    app.router.routes.append(Mount("/api", CORSMiddleware(inner) if layer else inner))
    app.middleware("http")(http_middleware(PaymentConfig(**_options(tmp_path, "GET /api/*"))))
    app.add_api_route("/", lambda: {"ok": True})
    with TestClient(app) as client:
        assert client.get("/api/anything").status_code == 402
        assert _handshake(client, "/api/stream") == 1008
        assert client.get("/").status_code == 200
    assert calls == []
