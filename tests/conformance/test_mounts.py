"""An app mounted under a prefix (ASGI ``root_path``, WSGI ``SCRIPT_NAME``) is priced on the
path it routes on, and every URL the gate gives buyers (resource, tab endpoint) carries the
prefix, so a buyer can open a tab and pay through it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = TestBuyer.new().address
Send = Callable[..., Any]  # (method, path, headers, json) -> (status, headers, body)


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


def options(core: Core) -> dict[str, Any]:
    return {"pay_to": SELLER, "network": NETWORK, "routes": {"GET /report": "$0.01"}, "core": core}


def plain_app(runs: list[str]) -> Any:
    """An ASGI app with no router: it serves the path below its root_path, as ASGI says."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        runs.append(path)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"report" if path == "/report" else b""})

    return app


def buy(send: Send, core: Core, path: str) -> tuple[Any, str, dict[str, str]]:
    """The requirements ``path`` is challenged with, its resource URL, and a payment for it
    made through its advertised tab endpoint (its path: the test client is the host)."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    status, headers, _ = send("GET", path, {}, None)
    assert status == 402
    challenge = decode_payment_required(headers["payment-required"])
    req = challenge.accepts[0]
    assert challenge.resource is not None
    tab_url = urlsplit(req.extra["tabEndpoint"]).path
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    status, _, tab = send("POST", tab_url, {}, body)
    assert status == 200, tab
    name, value = payment_header(buyer, req, json.loads(tab))
    return req, challenge.resource.url, {name: value}


def starlette_send(client: TestClient) -> Send:
    def send(method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        r = client.request(method, path, headers=headers, json=body)
        return r.status_code, r.headers, r.content

    return send


def test_a_router_less_app_under_a_mount_is_priced_below_it(core: Core) -> None:
    """The gate matched the table against /api/report, found nothing and served it free."""
    runs: list[str] = []
    inner = PaymentMiddleware(plain_app(runs), **options(core))
    with TestClient(Starlette(routes=[Mount("/api", app=inner)])) as client:
        send = starlette_send(client)
        req, url, headers = buy(send, core, "/api/report")
        assert runs == [] and url == "http://testserver/api/report"
        assert req.extra["tabEndpoint"] == "http://testserver/api/x402/tab"
        status, _, body = send("GET", "/api/report", headers, None)
        assert (status, body, runs) == (200, b"report", ["/report"])
        assert send("GET", "/api/report", headers, None)[0] == 402  # paid once, served once
    assert [g.amount for g in core.guarantees()] == [10_000] and runs == ["/report"]


def test_a_server_root_path_prices_the_path_the_app_routes_on(core: Core) -> None:
    """uvicorn --root-path /api: the scope's path carries the prefix the app routes below."""
    runs: list[str] = []
    app = PaymentMiddleware(plain_app(runs), **options(core))
    with TestClient(app, root_path="/api") as client:
        send = starlette_send(client)
        req, _, headers = buy(send, core, "/report")
        assert runs == [] and req.extra["tabEndpoint"] == "http://testserver/api/x402/tab"
        assert send("GET", "/report", headers, None)[0] == 200 and runs == ["/report"]


def test_a_mounted_app_with_a_router_gets_its_tab_endpoint_under_the_mount(core: Core) -> None:
    runs: list[str] = []

    async def report(request: Any) -> PlainTextResponse:
        runs.append(request.url.path)
        return PlainTextResponse("report")

    sub = Starlette(routes=[Route("/report", report)])
    inner = PaymentMiddleware(sub, **options(core))
    with TestClient(Starlette(routes=[Mount("/api", app=inner)])) as client:
        send = starlette_send(client)
        req, _, headers = buy(send, core, "/api/report")
        assert req.extra["tabEndpoint"] == "http://testserver/api/x402/tab" and runs == []
        assert send("GET", "/api/report", headers, None)[0] == 200
        assert runs == ["/api/report"]


def test_a_flask_app_under_a_script_name_gets_its_urls_under_it(core: Core) -> None:
    from flask import Flask
    from fourmica_x402.adapters.flask import FourmicaX402
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    runs: list[str] = []
    flask_app = Flask("mounted")
    FourmicaX402(flask_app, **options(core))

    @flask_app.get("/report")
    def report() -> str:
        runs.append("/report")
        return "report"

    client = Client(DispatcherMiddleware(Flask("root"), {"/api": flask_app}))

    def send(method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        r = client.open(path, method=method, headers=headers, json=body)
        return r.status_code, r.headers, r.get_data()

    req, url, headers = buy(send, core, "/api/report")
    assert url == "http://localhost/api/report"
    assert req.extra["tabEndpoint"] == "http://localhost/api/x402/tab" and runs == []
    assert send("GET", "/api/report", headers, None)[:1] == (200,) and runs == ["/report"]
