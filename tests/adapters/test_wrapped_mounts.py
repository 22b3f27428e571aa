"""A ``Host`` or ``Mount`` holding a router behind a middleware of its own (a
``CORSMiddleware`` around a ``Router``) is priced route by route, as it routes.

The gate saw such an app as one route, everything under it: ``"GET /report"``, which prices
``/report`` on every host, sold host A's and left host B's, behind the wrapper, free; and an
entry naming a route under a wrapped mount failed the start-up (docs/architecture.md, "Which
route is priced")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers

SELLER = TestBuyer.new().address


def _wrapped(router: Router) -> Any:
    return CORSMiddleware(router, allow_origins=["*"])


def _app(tmp_path: Path, routes: dict[str, str], served: list[str]) -> tuple[Any, Core]:
    async def page(request: Request) -> PlainTextResponse:
        served.append(f"{request.headers['host']}{request.url.path}")
        return PlainTextResponse("paid content")

    async def catch_all(scope: Any, receive: Any, send: Any) -> None:  # a proxy's default
        await PlainTextResponse("proxied paid content")(scope, receive, send)

    core = Core(str(tmp_path / "core.db"))
    app = Starlette(
        routes=[
            Host("a.example.com", Router([Route("/report", page)])),
            Host("b.example.com", _wrapped(Router([Route("/report", page)]))),
            Host("c.example.com", _wrapped(Router([Route("/free", page)], default=catch_all))),
            Mount("/api", _wrapped(Router([Route("/report", page), Route("/free", page)]))),
        ]
    )
    options = {"pay_to": SELLER, "network": NETWORK, "core": core, "routes": routes}
    app.add_middleware(PaymentMiddleware, **options)
    return app, core


def test_a_priced_path_behind_a_hosts_own_middleware_is_priced(tmp_path: Path) -> None:
    served: list[str] = []
    app, core = _app(tmp_path, {"GET /report": "$0.01"}, served)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with TestClient(app) as client:
        for host in ("a.example.com", "b.example.com"):
            assert client.get("/report", headers={"host": host}).status_code == 402, host
        assert served == []
        challenge = client.get("/report", headers={"host": "b.example.com"})
        headers = {"host": "b.example.com", **paid_headers(client, buyer, challenge)}
        assert client.get("/report", headers=headers).status_code == 200
    assert served == ["b.example.com/report"]
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


def test_a_route_under_a_wrapped_mount_is_named_and_priced_alone(tmp_path: Path) -> None:
    served: list[str] = []
    app, _ = _app(tmp_path, {"GET /api/report": "$0.02"}, served)
    with TestClient(app) as client:  # the entry names a route: the app starts
        assert client.get("/api/report").status_code == 402
        assert client.get("/api/free").status_code == 200  # a free route there stays free
        assert client.get("/api/none").status_code == 404  # and a path none serves: not sold
    assert served == ["testserver/api/free"]


def test_what_a_wrapped_routers_default_serves_stays_priced_by_a_catch_all(
    tmp_path: Path,
) -> None:
    served: list[str] = []
    app, _ = _app(tmp_path, {"GET /*": "$0.01"}, served)
    with TestClient(app) as client:
        resp = client.get("/anything", headers={"host": "c.example.com"})
    assert resp.status_code == 402


class _Legacy:
    """A layer of a mount's own that answers one path itself, the rest through its router."""

    def __init__(self, app: Any, served: list[str]) -> None:
        self.app, self.served = app, served

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/legacy"):
            self.served.append(scope["path"])
            return await PlainTextResponse("legacy paid content")(scope, receive, send)
        await self.app(scope, receive, send)


def test_what_a_mounts_own_layer_answers_stays_priced_by_the_mounts_catch_all(
    tmp_path: Path,
) -> None:
    served: list[str] = []

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("paid content")

    core = Core(str(tmp_path / "core.db"))
    app = Starlette(routes=[Mount("/api", _Legacy(Router([Route("/report", page)]), served))])
    options = {"pay_to": SELLER, "network": NETWORK, "core": core}
    app.add_middleware(PaymentMiddleware, **options, routes={"GET /api/*": "$0.01"})
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with TestClient(app) as client:
        challenge = client.get("/api/legacy")
        assert challenge.status_code == 402  # the layer's answer: under /api/*, never free
        assert served == []
        resp = client.get("/api/legacy", headers=paid_headers(client, buyer, challenge))
        assert resp.status_code == 200 and resp.text == "legacy paid content"
        assert client.get("/api/report").status_code == 402
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


class _Widget:
    """A mounted ASGI app that keeps a reference to the app it is part of, as ``.app``."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("widget paid content")(scope, receive, send)


def test_a_mounted_apps_reference_back_to_its_app_is_not_its_router(tmp_path: Path) -> None:
    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("paid content")

    widget = _Widget()
    app = Starlette(routes=[Route("/report", page), Mount("/widget", widget)])
    widget.app = app  # not a layer around a router of the widget's: the whole app again
    options = {"pay_to": SELLER, "network": NETWORK, "core": Core(str(tmp_path / "core.db"))}
    table = {"GET /report": "$0.01", "GET /widget/*": "$0.01"}
    app.add_middleware(PaymentMiddleware, **options, routes=table)
    with TestClient(app) as client:  # starts: the widget is one route, everything under it
        for path in ("/report", "/widget/anything", "/widget/report"):
            assert client.get(path).status_code == 402, path
