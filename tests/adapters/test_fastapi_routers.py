"""FastAPI's included routers are priced like routes declared on the app.

From FastAPI 0.16x on, ``include_router`` adds one entry standing for the whole router
instead of copying its routes; the middleware must still find the route it stands for, with
its prefix, its ``Paid`` wherever it was declared (the route, ``APIRouter(dependencies=)``,
``include_router(dependencies=)``) and the route table's templates.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.gate import Payment
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = TestBuyer.new().address


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


def build(core: Core, calls: collections.Counter[str]) -> tuple[FastAPI, Any]:
    app = FastAPI()
    payments = FourmicaX402(
        app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /v1/table/:n": "$0.04"}
    )

    @app.get("/free")
    def free() -> dict[str, bool]:
        calls["/free"] += 1
        return {"free": True}

    signature = APIRouter()

    @signature.get("/report")
    def report(request: Request, p: Payment = Paid("$0.01")) -> dict[str, Any]:  # noqa: B008
        calls[request.url.path] += 1
        return {"amount": p.amount}

    on_router = APIRouter(prefix="/router", dependencies=[Paid("$0.02")])

    @on_router.get("/report")
    def router_report(request: Request) -> dict[str, bool]:
        calls[request.url.path] += 1
        return {"ok": True}

    on_include = APIRouter()

    @on_include.get("/report")
    def include_report(request: Request) -> dict[str, bool]:
        calls[request.url.path] += 1
        return {"ok": True}

    table = APIRouter()

    @table.get("/table/{n}")
    def table_item(n: int, request: Request) -> dict[str, int]:
        calls[request.url.path] += 1
        return {"n": n}

    outer = APIRouter(prefix="/v1")
    outer.include_router(signature, prefix="/signature")
    outer.include_router(table)
    app.include_router(outer)
    app.include_router(on_router)
    app.include_router(on_include, prefix="/include", dependencies=[Paid("$0.03")])
    return app, payments.gate


@pytest.fixture
def seller(core: Core) -> Iterator[tuple[TestClient, collections.Counter[str], Any]]:
    calls: collections.Counter[str] = collections.Counter()
    app, gate = build(core, calls)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, calls, gate


def pay(core: Core, client: TestClient, path: str) -> tuple[int, dict[str, str]]:
    """The amount ``path`` is challenged at, and a valid payment header for it."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    challenge = client.get(path)
    assert challenge.status_code == 402, (path, challenge.text)
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    version = 2 if "validatorAddress" in req.extra else 1
    tab = core.open_tab(
        buyer.address, req.pay_to, network=NETWORK, asset=req.asset, guarantee_version=version
    )
    name, value = payment_header(buyer, req, tab.to_json())
    return int(req.amount), {name: value}


@pytest.mark.parametrize(
    ("path", "amount"),
    [
        ("/v1/signature/report", 10_000),  # Paid in the handler's signature, nested inclusion
        ("/router/report", 20_000),  # APIRouter(dependencies=[Paid])
        ("/include/report", 30_000),  # include_router(dependencies=[Paid])
        ("/v1/table/7", 40_000),  # the route table naming an included route's template
    ],
)
def test_an_included_route_is_challenged_at_its_price_and_charged_once(
    seller: Any, core: Core, path: str, amount: int
) -> None:
    client, calls, gate = seller
    challenged, headers = pay(core, client, path)
    assert challenged == amount and calls[path] == 0
    paid = client.get(path, headers=headers)
    assert paid.status_code == 200, paid.text
    assert calls[path] == 1 and "payment-response" in paid.headers
    gate.flush()
    (kept,) = core.guarantees(address=core.guarantees()[-1].user_address)
    assert kept.amount == amount and kept.state in ("payable", "pending_validation")
    again = client.get(path, headers=headers)  # the same payment cannot buy it twice
    assert again.status_code == 402 and calls[path] == 1


def test_the_table_naming_an_included_route_leaves_the_rest_of_the_app_alone(seller: Any) -> None:
    client, calls, _ = seller
    assert client.get("/free").status_code == 200 and calls["/free"] == 1
    assert client.get("/v1/table/nope").status_code == 402  # priced; FastAPI validates later


def test_an_included_route_under_another_method_or_path_is_never_settled(
    seller: Any, core: Core
) -> None:
    client, calls, _ = seller
    _, headers = pay(core, client, "/router/report")
    assert client.post("/router/report", headers=headers).status_code == 405
    assert client.get("/router/report/", headers=headers, follow_redirects=False).status_code in (
        307,
        404,
    )
    assert core.guarantees() == [] and calls["/router/report"] == 0
    assert client.get("/router/report", headers=headers).status_code == 200  # still good


def install(app: FastAPI, how: str, **options: Any) -> None:
    """The gate on ``app`` by each of its three FastAPI forms."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402 import PaymentConfig

    if how == "FourmicaX402":
        FourmicaX402(app, **options)
    elif how == "add_middleware":
        app.add_middleware(PaymentMiddleware, **options)
    else:
        app.middleware("http")(http_middleware(PaymentConfig(**options)))


@pytest.mark.parametrize("how", ["FourmicaX402", "add_middleware", "http_middleware"])
def test_a_paid_route_serving_options_answers_it_without_running_the_handler(
    core: Core, how: str
) -> None:
    """OPTIONS is never priced; a Paid route listing it refused 503 even with a payment.
    Installed but by FourmicaX402, the answer went out as FastAPI's ``{"detail": {}}`` under
    the gate's ``Content-Length: 0``: a body longer than its length, which a server breaks."""
    app = FastAPI()
    install(app, how, pay_to=SELLER, core=core, network=NETWORK)
    runs: list[str] = []

    @app.api_route("/any", methods=["GET", "OPTIONS"], dependencies=[Paid("$0.01")])
    def any_method(request: Request) -> dict[str, str]:
        runs.append(request.method)
        return {"method": request.method}

    with TestClient(app) as client:
        _, headers = pay(core, client, "/any")
        for sent in ({}, headers):
            resp = client.options("/any", headers=sent)
            assert resp.status_code == 200 and resp.content == b""
            assert resp.headers["content-length"] == "0"
            assert "OPTIONS" in resp.headers["allow"] and "GET" in resp.headers["allow"]
        assert runs == [] and core.guarantees() == []
        assert client.get("/any", headers=headers).status_code == 200 and runs == ["GET"]


@pytest.mark.parametrize("how", ["FourmicaX402", "add_middleware", "http_middleware"])
def test_a_mounted_apps_paid_refusals_take_the_gates_shape_unless_it_has_its_own(
    core: Core, how: str
) -> None:
    """A FastAPI app mounted under the gated one raised ``Paid``'s refusal in its own exception
    layer: FastAPI's ``{"detail": …}``, for OPTIONS a 13-byte body under ``Content-Length: 0``.
    A handler the app registered for the refusal itself is left in place."""
    from fourmica_x402.adapters.fastapi import PaymentRefused
    from starlette.responses import PlainTextResponse

    app, sub, own = FastAPI(), FastAPI(), FastAPI()
    runs: list[str] = []

    async def mine(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("mine", status_code=418)

    own.add_exception_handler(PaymentRefused, mine)
    for mounted in (sub, own):

        @mounted.api_route("/any", methods=["GET", "OPTIONS"])
        def any_method(request: Request, p: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
            runs.append(request.method)
            return {"method": request.method}

    app.mount("/sub", sub)
    app.mount("/own", own)
    install(app, how, pay_to=SELLER, core=core, network=NETWORK)
    with TestClient(app) as client:
        client.get("/")  # the http middleware form learns the app at its first request
        resp = client.options("/sub/any")
        assert (resp.status_code, resp.content, resp.headers["content-length"]) == (200, b"", "0")
        assert resp.headers["allow"] == "GET, OPTIONS"
        assert client.options("/own/any").text == "mine"
        assert client.get("/sub/any").status_code == 402
    assert runs == [] and core.guarantees() == []


@pytest.mark.parametrize("how", ["FourmicaX402", "add_middleware", "http_middleware"])
def test_a_host_apps_paid_refusals_take_the_gates_shape(core: Core, how: str) -> None:
    """A FastAPI app served under ``app.host(...)`` (a host-based sub-app) raised ``Paid``'s
    refusal in its own exception layer: FastAPI's ``{"detail": {}}`` for an OPTIONS, where a
    mounted app answers in the gate's shape; the gate only looked under ``Mount``s."""
    sub = FastAPI()
    runs: list[str] = []

    @sub.api_route("/any", methods=["GET", "OPTIONS"])
    def any_method(request: Request, p: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        runs.append(request.method)
        return {"method": request.method}

    app = FastAPI()
    app.host("api.example.com", sub)
    install(app, how, pay_to=SELLER, core=core, network=NETWORK)
    host = {"host": "api.example.com"}
    with TestClient(app) as client:
        client.get("/")  # the http middleware form learns the app at its first request
        resp = client.options("/any", headers=host)
        assert (resp.status_code, resp.content, resp.headers["content-length"]) == (200, b"", "0")
        assert resp.headers["allow"] == "GET, OPTIONS"
        assert client.get("/any", headers=host).status_code == 402
    assert runs == [] and core.guarantees() == []


@pytest.mark.parametrize("form", ["FourmicaX402", "http_middleware"])
def test_a_paid_routes_other_dependencies_never_run_for_a_method_it_answers_itself(
    core: Core, form: str
) -> None:
    """OPTIONS and a method ``Paid(methods=...)`` leaves out were passed on to the route:
    FastAPI ran the dependencies declared before ``Paid`` (a quota, an audit write), unpaid,
    before ``Paid`` answered. The gate gives that answer itself now."""
    from fastapi import Depends

    app, runs = FastAPI(), collections.Counter[str]()
    install(app, form, pay_to=SELLER, core=core, network=NETWORK)

    def side_effect() -> None:
        runs["dependency"] += 1

    @app.api_route("/x", methods=["GET", "POST", "OPTIONS"], dependencies=[Depends(side_effect)])
    def x(p: Payment = Paid("$0.01", methods=["POST"])) -> dict[str, int]:  # noqa: B008
        runs["handler"] += 1
        return {"amount": p.amount}

    with TestClient(app) as client:
        refused = client.get("/x")
        assert refused.status_code == 405 and refused.json()["error"] == "method_not_allowed"
        assert refused.headers["allow"] == "OPTIONS, POST"
        options = client.options("/x")
        assert options.status_code == 200 and options.headers["allow"] == "OPTIONS, POST"
        assert runs == {} and core.guarantees() == []
        assert client.post("/x").status_code == 402 and runs == {}


@pytest.mark.parametrize("entry", ["GET /report", "* /report"])
def test_a_table_priced_route_serving_options_answers_it_without_running_the_handler(
    core: Core, entry: str
) -> None:
    """A route listing OPTIONS beside a priced method ran its handler for OPTIONS, unpaid,
    serving what the GET sells; a route of its own for OPTIONS still runs (never priced)."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    runs: list[str] = []

    async def report(request: Any) -> JSONResponse:
        runs.append(request.method)
        return JSONResponse({"report": "paid content"})

    async def preflight(request: Any) -> JSONResponse:
        runs.append("preflight")
        return JSONResponse({})

    routes = [
        Route("/report", report, methods=["GET", "POST", "OPTIONS"]),
        Route("/own", preflight, methods=["OPTIONS"]),
        Route("/own", report, methods=["GET"]),
    ]
    table = {entry: "$0.01", "GET /own": "$0.01"}
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": table}
    app = Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, **options)])
    with TestClient(app) as client:
        resp = client.options("/report")
        assert resp.status_code == 200 and resp.content == b""
        assert resp.headers["allow"] == "GET, HEAD, OPTIONS, POST"
        assert runs == []
        assert client.options("/own").status_code == 200 and runs == ["preflight"]
        _, headers = pay(core, client, "/report")
        assert client.get("/report", headers=headers).status_code == 200
        assert runs == ["preflight", "GET"]


def close_code(client: TestClient, path: str) -> int:
    """The close code of a WebSocket handshake on ``path`` that the app refuses."""
    from starlette.websockets import WebSocketDisconnect

    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(path) as socket,
    ):
        socket.receive_text()
    return int(refused.value.code)


def test_a_websocket_route_with_paid_is_refused_with_1008(core: Core) -> None:
    """``Paid(...)`` on a WebSocket route prices it: the handshake is refused (close code
    1008; there is no paid-WebSocket mode), never a crash in the dependency."""
    from fastapi import WebSocket

    app, calls = FastAPI(), collections.Counter[str]()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)

    @app.websocket("/live")
    async def live(websocket: WebSocket, payment: Payment = Paid("$1")) -> None:  # noqa: B008
        calls["live"] += 1
        await websocket.accept()

    with TestClient(app) as client:
        code = close_code(client, "/live")
    assert code == 1008 and calls == {}


def test_a_convertors_http_answer_on_a_priced_path_is_given_by_the_gate_never_passed_on(
    core: Core,
) -> None:
    """A convertor that raises HTTPException (a retired slug: 404; a moved one: 307) on a path
    a table entry prices gets that answer from the gate: passed on unpriced, the router asks
    the convertor again, and one that reads context (a tenant a middleware inside ours sets,
    a cache) let the handler run unpaid. On a free path the app gives its own answer."""
    from starlette.convertors import Convertor, register_url_convertor
    from starlette.exceptions import HTTPException

    asked = collections.Counter[str]()

    class Article(Convertor[str]):
        regex = "[a-z]+"

        def convert(self, value: str) -> str:
            asked[value] += 1
            if value == "old":
                raise HTTPException(307, "moved", headers={"Location": "/articles/new"})
            if value == "retired" or (value in ("flaky", "wobbly") and asked[value] % 2 == 1):
                raise HTTPException(404, "no such article")
            return value

        def to_string(self, value: str) -> str:
            return value

    register_url_convertor("fx_article", Article())
    app, calls = FastAPI(), collections.Counter[str]()
    FourmicaX402(
        app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /articles/{slug}": "$0.01"}
    )

    @app.get("/articles/{slug:fx_article}")
    def read(slug: str) -> dict[str, str]:
        calls[slug] += 1
        return {"slug": slug}

    @app.get("/free/{slug:fx_article}")
    def free(slug: str) -> dict[str, str]:
        calls["free " + slug] += 1
        return {"slug": slug}

    with TestClient(app, follow_redirects=False) as client:
        for slug in ("flaky", "retired"):
            refused = client.get(f"/articles/{slug}")
            assert refused.status_code == 404, (slug, refused.status_code)
            assert refused.json() == {"error": "unroutable_path", "message": "no such article"}
        moved = client.get("/articles/old")
        assert moved.status_code == 307 and moved.headers["location"] == "/articles/new"
        assert client.get("/articles/fresh").status_code == 402
        assert calls == {} and core.guarantees() == []
        # a free path: the app's own answer (FastAPI's shape), and its route once it reads
        assert client.get("/free/retired").json() == {"detail": "no such article"}
        assert client.get("/free/wobbly").json() == {"slug": "wobbly"}  # the app's 2nd ask
    assert calls == {"free wobbly": 1} and core.guarantees() == []


def _refused_on_first_ask(name: str, regex: str, **headers: str) -> None:
    """Register convertor ``name``: it refuses a value the first time it is asked (404, as
    one reading context a middleware inside ours has not set yet, or a cold cache), then
    reads it; the gate asks before the router does."""
    from starlette.convertors import Convertor, register_url_convertor
    from starlette.exceptions import HTTPException

    asked = collections.Counter[str]()

    class FirstAskRefused(Convertor[str]):
        def convert(self, value: str) -> str:
            asked[value] += 1
            if asked[value] == 1:
                raise HTTPException(404, "not loaded yet", headers=headers or None)
            return value

        def to_string(self, value: str) -> str:
            return value

    FirstAskRefused.regex = regex
    register_url_convertor(name, FirstAskRefused())


@pytest.mark.parametrize(
    ("entry", "route", "path"),
    [
        # the route's own slash-matching convertor, written in the table entry
        ("GET /files/{p:fx_span}", "/files/{p:fx_span}", "/files/a/b"),
        ("GET /shop/{tenant}/*", "/shop/{tenant:fx_word}", "/shop/acme"),  # the bare prefix
    ],
)
def test_a_table_entry_that_may_price_a_path_is_never_narrower_than_the_router(
    core: Core, entry: str, route: str, path: str
) -> None:
    """Where the gate passes a convertor's HTTP answer on, it judged no entry may price the
    path: a matcher narrower than the router (a parameter taken as one segment, a prefix's
    ``/*`` not covering the prefix) let a convertor that reads context run the route unpaid."""
    _refused_on_first_ask("fx_span", ".+", **{"Content-Length": "0"})
    _refused_on_first_ask("fx_word", "[a-z]+", **{"Content-Length": "0"})
    app, calls = FastAPI(), collections.Counter[str]()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={entry: "$0.01"})

    @app.get(route)
    def read(request: Request) -> dict[str, str]:
        calls[request.url.path] += 1
        return {}

    with TestClient(app) as client:
        refused = client.get(path)
        assert refused.status_code == 404 and calls == {}, (refused.status_code, calls)
        # the convertor's Content-Length would have described another body than the gate's
        assert int(refused.headers["content-length"]) == len(refused.content) > 0
        assert client.get(path).status_code == 402  # read now: priced, never run unpaid
    assert calls == {} and core.guarantees() == []


def test_a_root_path_the_router_reads_otherwise_is_judged_on_both_paths(core: Core) -> None:
    """With ``root_path`` "/api/" (a trailing slash) the gate reads the path below it while
    Starlette routes the whole path: a convertor's answer on the priced route was passed on,
    and the route ran unpaid once the convertor read its value."""
    import asyncio

    from fourmica_x402.testing import http_scope

    _refused_on_first_ask("fx_tenant", "[a-z]+")
    app, calls = FastAPI(), collections.Counter[str]()
    routes = {"GET /api/shop/{t}": "$0.01"}
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes=routes)

    @app.get("/api/shop/{t:fx_tenant}")
    def shop(t: str) -> dict[str, str]:
        calls[t] += 1
        return {"t": t}

    async def status(path: str) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(http_scope("GET", path, root_path="/api/"), receive, send)
        return int(sent[0]["status"])

    with TestClient(app):  # started: the router is known
        assert asyncio.run(status("/api/shop/acme")) == 404
        assert asyncio.run(status("/api/shop/acme")) == 402
    assert calls == {} and core.guarantees() == []


def test_a_websocket_path_the_router_cannot_read_is_refused_with_1008(core: Core) -> None:
    """An int convertor on a 5 000-digit segment raises in the router the gate asks for
    the route: the handshake is refused (1008), not a crash in the middleware."""
    from fastapi import WebSocket

    app, calls = FastAPI(), collections.Counter[str]()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)

    @app.websocket("/live/{n:int}")
    async def live(websocket: WebSocket, n: int) -> None:
        calls["live"] += 1
        await websocket.accept()

    with TestClient(app) as client:
        code = close_code(client, "/live/" + "9" * 5000)
    assert code == 1008 and calls == {}


def test_http_middleware_never_serves_a_priced_websocket(core: Core) -> None:
    """``@app.middleware("http")`` never sees a WebSocket (Starlette passes them around it):
    ``Paid(...)`` on a WebSocket route refuses the handshake itself (1008, not a crash in
    the dependency), and a table entry naming a WebSocket route, which this form cannot
    guard, fails its start-up (answered ``configuration_error``) instead of selling it free."""
    from fastapi import WebSocket
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402.config import PaymentConfig

    def app_with(routes: dict[str, str]) -> tuple[FastAPI, collections.Counter[str]]:
        app, calls = FastAPI(), collections.Counter[str]()
        config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK, routes=routes)
        app.middleware("http")(http_middleware(config))

        @app.get("/free")
        def free() -> dict[str, bool]:
            return {"free": True}

        @app.websocket("/live")
        async def live(websocket: WebSocket) -> None:
            calls["live"] += 1
            await websocket.accept()
            await websocket.send_text("paid content")
            await websocket.close()

        @app.websocket("/marked")
        async def marked(websocket: WebSocket, payment: Payment = Paid("$1")) -> None:  # noqa: B008
            calls["marked"] += 1
            await websocket.accept()

        async def raw(scope: Any, receive: Any, send: Any) -> None:  # HTTP and WebSockets
            calls["raw"] += 1
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "paid content"})

        app.mount("/raw", raw)
        return app, calls

    app, calls = app_with({})
    with TestClient(app) as client:
        code = close_code(client, "/marked")
    assert code == 1008 and calls == {}

    app, calls = app_with({"GET /live": "$0.01"})
    with TestClient(app) as client:
        broken = client.get("/free")
        assert (broken.status_code, broken.json()["error"]) == (500, "configuration_error")
        close_code(client, "/live")
    assert calls == {}

    app, calls = app_with({"GET /raw/*": "$0.01"})  # a priced mount may take WebSockets too
    with TestClient(app) as client:
        assert client.get("/raw/x").status_code == 402
        code = close_code(client, "/raw/x")
    assert code == 1008 and calls == {}


def test_a_frontend_priced_by_the_table_is_charged_and_a_free_one_stays_free(
    core: Core, tmp_path: Any
) -> None:
    """FastAPI's ``frontend()`` routes are tried after every other route: the gate resolves
    them the same way, so a table key prices the files under them (a one-segment key does
    not), and a path FastAPI redirects or answers 405 is never charged."""
    if not hasattr(FastAPI(), "frontend"):
        pytest.fail("this FastAPI has no frontend(): the project pins one that has")
    for name, text in (("index.html", "<h1>paid dashboard</h1>"), ("report.txt", "secret")):
        (tmp_path / name).write_text(text)
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "index.html").write_text("free")
    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /app/*": "$0.05"})

    @app.get("/app/api/data")
    def data() -> dict[str, int]:
        return {"data": 1}

    app.frontend("/app", directory=str(tmp_path))
    app.frontend("/open", directory=str(tmp_path / "open"))
    with TestClient(app) as client:
        amount, header = pay(core, client, "/app/report.txt")
        assert amount == 50_000
        paid = client.get("/app/report.txt", headers=header)
        assert (paid.status_code, paid.text) == (200, "secret")
        assert pay(core, client, "/app/api/data")[0] == 50_000
        assert client.get("/open/").status_code == 200  # no key names it: free
        assert client.post("/app/report.txt").status_code == 405  # never challenged
        redirected = client.get("/app/api/data/", follow_redirects=False)
        assert redirected.status_code == 307
    assert len(core.guarantees()) == 1


def test_what_a_mounted_app_serves_beyond_its_routes_is_priced_by_the_mounts_key(
    core: Core, tmp_path: Any
) -> None:
    """``"GET /reports/*"`` over a mounted FastAPI app priced its API route, but its
    ``frontend()`` files (and a mounted router's ``default``) were served free: the resolver
    tried frontends on the top router only and passed the rest on unpriced. What a mounted app
    serves beyond its routes is the mount's, priced by a key naming everything under it."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, Router

    if not hasattr(FastAPI(), "frontend"):
        pytest.fail("this FastAPI has no frontend(): the project pins one that has")
    (tmp_path / "index.html").write_text("paid viewer")
    reports = FastAPI()

    @reports.get("/summary")
    def summary() -> dict[str, int]:
        return {"sum": 1}

    reports.frontend("/viewer", directory=str(tmp_path))

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("paid fallback")(scope, receive, send)

    async def free(request: Any) -> PlainTextResponse:
        return PlainTextResponse("free")

    app = FastAPI()
    routes = {"GET /reports/*": "$0.05", "GET /more/*": "$0.05"}
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes=routes)
    app.mount("/reports", reports)
    app.mount("/more", Router(routes=[Route("/one", free)], default=fallback))
    app.mount("/open", Router(routes=[Route("/one", free)]))  # its default: a plain 404
    with TestClient(app) as client:
        for path in ("/reports/summary", "/reports/viewer/", "/more/q3"):
            assert pay(core, client, path)[0] == 50_000
        _, header = pay(core, client, "/reports/viewer/")
        paid = client.get("/reports/viewer/", headers=header)
        assert (paid.status_code, paid.text) == (200, "paid viewer")
        assert client.get("/open/nothing").status_code == 404  # nothing served: not priced
    assert len(core.guarantees()) == 1


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
def test_the_apps_own_router_default_is_priced_by_a_key_naming_everything(
    core: Core, kind: str
) -> None:
    """A ``default`` of the app's own router (a catch-all proxy, a page renderer) answering
    200 was passed on free under ``"GET /*"``, while the same handler as a mounted router's
    default was priced by the mount's key: the resolver looked for a router's own default
    under mounts only. A path a route 405s or redirects is still the route's, never priced."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    served: list[str] = []

    async def proxy(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await PlainTextResponse("proxied work")(scope, receive, send)

    async def form(request: Any) -> PlainTextResponse:
        return PlainTextResponse("form")

    routes = {"GET /*": "$0.05"}
    own = [Route("/form/", form, methods=["POST"]), Route("/status", form)]
    if kind == "fastapi":
        app: Any = FastAPI()
        app.router.routes.extend(own)
        FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes=routes)
    else:
        app = Starlette(routes=own)
        app.add_middleware(
            PaymentMiddleware, pay_to=SELLER, core=core, network=NETWORK, routes=routes
        )
    app.router.default = proxy
    with TestClient(app) as client:
        amount, header = pay(core, client, "/upstream/report")
        assert amount == 50_000 and served == []
        paid = client.get("/upstream/report", headers=header)
        assert (paid.status_code, paid.text) == (200, "proxied work")
        assert client.post("/upstream/report").status_code == 405  # it serves every method
        assert client.get("/form/").status_code == 405  # the route's: never priced
        assert client.get("/form", follow_redirects=False).status_code == 307
    assert served == ["/upstream/report"] and len(core.guarantees()) == 1


def test_a_path_a_mounted_router_405s_or_redirects_is_not_its_defaults(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a mounted router with a ``default``, a path one of its routes answers 405 (or
    the router redirects, its slash added) was challenged as the mount's: a buyer paid, the
    router ran the route's 405 and the dispatch check answered 503 ``payment_not_enforced``
    instead, logging a layer that was not there. The router answers those before its
    default, so the gate does too: a 405 or a redirect is never challenged."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, Router

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("paid fallback")(scope, receive, send)

    async def form(request: Any) -> PlainTextResponse:
        return PlainTextResponse("free")

    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /more/*": "$0.05"})
    own = [Route("/submit", form, methods=["POST"]), Route("/list/", form)]
    app.mount("/more", Router(routes=own, default=fallback))
    with caplog.at_level("ERROR", logger="fourmica_x402"), TestClient(app) as client:
        refused = client.get("/more/submit")
        assert (refused.status_code, refused.headers.get("allow")) == (405, "POST")
        moved = client.get("/more/list", follow_redirects=False)
        assert (moved.status_code, moved.headers["location"]) == (
            307,
            "http://testserver/more/list/",
        )
        assert pay(core, client, "/more/q3")[0] == 50_000  # the default's: the mount's price
    assert not [r for r in caplog.records if "a layer between" in r.getMessage()]


def test_an_included_routers_frontend_is_priced_like_the_apps_own(
    core: Core, tmp_path: Any
) -> None:
    """``frontend()`` on an included router was never resolved: ``"GET /app/*"`` priced the
    app's ``/app/api/data`` and the files under the router's ``/app/files`` were served
    free; a key naming only such a frontend failed the start-up; a mounted app whose only
    frontend is an included router's was passed on unpriced."""
    if not hasattr(FastAPI(), "frontend"):
        pytest.fail("this FastAPI has no frontend(): the project pins one that has")
    (tmp_path / "report.txt").write_text("secret")
    files, own, sub = APIRouter(), APIRouter(), FastAPI()
    for router in (files, own):
        router.frontend("/files", directory=str(tmp_path))
    sub.include_router(own)
    app = FastAPI()
    routes = {"GET /app/*": "$0.05", "GET /portal/*": "$0.06", "GET /sub/*": "$0.07"}
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes=routes)

    @app.get("/app/api/data")
    def data() -> dict[str, int]:
        return {"data": 1}

    app.include_router(files, prefix="/app")
    app.include_router(files, prefix="/portal")
    app.mount("/sub", sub)
    with TestClient(app) as client:
        for path, price in (("/app", 50_000), ("/portal", 60_000), ("/sub", 70_000)):
            amount, header = pay(core, client, path + "/files/report.txt")
            assert amount == price
            paid = client.get(path + "/files/report.txt", headers=header)
            assert (paid.status_code, paid.text) == (200, "secret")
    assert len(core.guarantees()) == 3


def test_a_frontend_page_behind_two_trailing_slashes_is_challenged(
    core: Core, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``/app/feedback//`` under a priced ``frontend("/app")`` beside a ``POST /app/feedback/``:
    FastAPI strips every trailing slash before its redirect check, the gate stripped one, took
    the path for a redirect and passed it unpriced; the router's check then refused the
    frontend (503 ``payment_not_enforced``) and logged a layer that was not there."""
    if not hasattr(FastAPI(), "frontend"):
        pytest.fail("this FastAPI has no frontend(): the project pins one that has")
    (tmp_path / "index.html").write_text("<h1>paid dashboard</h1>")
    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /app/*": "$0.05"})

    @app.post("/app/feedback/")
    def feedback() -> dict[str, int]:
        return {"thanks": 1}

    app.frontend("/app", directory=str(tmp_path))
    with caplog.at_level("ERROR", logger="fourmica_x402"), TestClient(app) as client:
        answer = client.get("/app/feedback//", follow_redirects=False)
    assert answer.status_code == 402
    assert not [r for r in caplog.records if "a layer between" in r.getMessage()]


def _two_prices(where: str) -> FastAPI:
    """A route priced $1.00 in its signature under a $0.01 default set at ``where``."""
    app = FastAPI(dependencies=[Paid("$0.01")] if where == "app" else None)
    router = APIRouter(dependencies=[Paid("$0.01")] if where == "router" else None)
    route_deps = [Paid("$0.01")] if where == "route" else None

    @router.get("/premium", dependencies=route_deps)
    def premium(p: Payment = Paid("$1.00")) -> dict[str, int]:  # noqa: B008
        return {"paid": p.amount}

    include = [Paid("$0.01")] if where == "include" else None
    app.include_router(router, prefix="/shop", dependencies=include)
    return app


@pytest.mark.parametrize("where", ["app", "router", "include", "route"])
def test_two_prices_on_one_route_fail_at_start_up(core: Core, where: str) -> None:
    """A router's default ``Paid`` and the route's own: the gate charged the first it found
    ($0.01) and the $1.00 handler accepted that payment. Now the app does not start, and
    without a lifespan every request is refused."""
    app = _two_prices(where)
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    with pytest.raises(Exception, match="more than one price"), TestClient(app):
        pass
    resp = TestClient(app, raise_server_exceptions=False).get("/shop/premium")
    assert resp.status_code == 500 and resp.json()["error"] == "configuration_error"


def test_one_paid_used_twice_on_a_route_is_one_price(core: Core) -> None:
    price = Paid("$0.01")
    app = FastAPI()
    router = APIRouter(dependencies=[price])

    @router.get("/premium")
    def premium(p: Payment = price) -> dict[str, int]:
        return {"paid": p.amount}

    app.include_router(router)
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    with TestClient(app) as client:
        resp = client.get("/premium")
        assert resp.status_code == 402
        req = decode_payment_required(resp.headers["payment-required"]).accepts[0]
        assert req.amount == "10000"


def test_the_pure_middleware_on_a_fastapi_app_prices_as_fourmicax402_does(core: Core) -> None:
    """``app.add_middleware(PaymentMiddleware, ...)``: FastAPI 0.165's router also matches like
    a route, and was taken for one: the gate priced raw paths, a typo'd entry started, and
    ``Paid`` went unseen. It finds the router and the ``Paid`` markers now."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware

    def app_with(routes: dict[str, str]) -> FastAPI:
        app = FastAPI()

        @app.get("/files/{p:path}")
        def files(p: str) -> dict[str, str]:
            return {"file": p}

        @app.get("/premium")
        def premium(payment: Payment = Paid("$1.00")) -> dict[str, int]:  # noqa: B008
            return {"paid": payment.amount}

        app.add_middleware(
            PaymentMiddleware, pay_to=SELLER, core=core, network=NETWORK, routes=routes
        )
        return app

    with (
        pytest.raises(Exception, match="name no route"),
        TestClient(app_with({"GET /fiels/*": "$0.01"})),
    ):
        pass
    with (
        pytest.raises(Exception, match="name no route"),
        TestClient(app_with({"GET /files/:name": "$0.01"})),
    ):
        pass
    with TestClient(app_with({"GET /files/*": "$0.02"})) as client:
        for path, amount in (("/files/a/b", "20000"), ("/premium", "1000000")):
            resp = client.get(path)
            assert resp.status_code == 402, path
            assert (
                decode_payment_required(resp.headers["payment-required"]).accepts[0].amount
                == amount
            )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # FastAPI(root_path=) is deprecated
def test_the_pure_middleware_outside_a_fastapi_app_routes_by_its_root_path(core: Core) -> None:
    """``FastAPI(root_path="/api")`` sets the root path on each request itself, after a
    middleware wrapped around the app has seen it; the router then serves ``/api/premium``
    as ``/premium``. The gate routes by it too: that path is priced, not passed through free."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware

    api = FastAPI(root_path="/api")
    calls: collections.Counter[str] = collections.Counter()

    @api.get("/premium")
    def premium() -> dict[str, bool]:
        calls["premium"] += 1
        return {"premium": True}

    app = PaymentMiddleware(
        api, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /premium": "$0.50"}
    )
    with TestClient(app) as client:
        for path in ("/premium", "/api/premium"):
            assert client.get(path).status_code == 402, path
        assert calls["premium"] == 0
        amount, headers = pay(core, client, "/api/premium")
        paid = client.get("/api/premium", headers=headers)
        assert amount == 500_000 and paid.status_code == 200 and calls["premium"] == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # FastAPI(root_path=) is deprecated
def test_a_host_apps_own_root_path_routes_the_gate_too(core: Core) -> None:
    """A FastAPI app served under ``app.host(...)`` with a ``root_path`` of its own serves
    ``/api/premium`` as ``/premium`` (it sets its root path when the Host calls it). The gate
    resolved that path without it: nothing, so it passed the request on and the route's guard
    answered 503 ``payment_not_enforced`` where the route's 402 was due; sold now."""
    api = FastAPI(root_path="/api")
    calls: collections.Counter[str] = collections.Counter()

    @api.get("/premium")
    def premium() -> dict[str, bool]:
        calls["premium"] += 1
        return {"premium": True}

    @api.get("/marked")
    def marked(p: Payment = Paid("$0.02")) -> dict[str, int]:  # noqa: B008
        calls["marked"] += 1
        return {"paid": p.amount}

    app = FastAPI()
    app.host("api.example.com", api)
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /premium": "$0.50"})
    host = {"host": "api.example.com"}
    with TestClient(app, headers=host) as client:
        for path in ("/premium", "/api/premium", "/marked", "/api/marked"):
            assert client.get(path).status_code == 402, path
        assert calls == {}
        for path, price in (("/api/premium", 500_000), ("/api/marked", 20_000)):
            amount, headers = pay(core, client, path)
            paid = client.get(path, headers=headers)
            assert (amount, paid.status_code) == (price, 200), path
        assert calls == {"premium": 1, "marked": 1}


def test_paid_refuses_a_payment_made_at_the_tables_price(core: Core) -> None:
    """A gate that does not see a route's ``Paid`` (told so: ``marker=``) prices it by a table
    entry covering it: ``Paid`` refuses that payment (503) rather than selling its handler at
    the table's price, and the buyer is refunded."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware

    app = FastAPI()
    ran: list[int] = []

    @app.get("/api/premium")
    def premium(payment: Payment = Paid("$1.00")) -> dict[str, int]:  # noqa: B008
        ran.append(payment.amount)
        return {"paid": payment.amount}

    options = {
        "pay_to": SELLER,
        "core": core,
        "network": NETWORK,
        "routes": {"GET /api/*": "$0.01"},
    }
    app.add_middleware(PaymentMiddleware, router=app.router, marker=lambda route: None, **options)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**7, network=NETWORK)
    with TestClient(app) as client:
        challenge = client.get("/api/premium")
        req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        assert req.amount == "10000"
        name, value = buyer.pay_challenge(core, challenge.headers["payment-required"])
        refused = client.get("/api/premium", headers={name: value})
        body = refused.json()  # the gate's shape under every install, not {"detail": …}
        assert (refused.status_code, body["error"]) == (503, "payment_not_enforced")
    assert ran == []
    assert [g.state for g in core.guarantees()] in (["voided"], ["cancelled"])
    assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("inner", ["FourmicaX402", "http_middleware"])
def test_an_app_mounted_with_a_gate_of_its_own_is_paid_once(core: Core, inner: str) -> None:
    """An app mounted inside another, each with its gate: the outer gate settled the payment
    and the inner one saw its guarantee again (replayed_request_id), so the outer refunded
    and the route could never be sold. The inner gate lets a settled request through now."""
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.testing import paid_headers

    runs: list[str] = []
    sub = FastAPI()
    if inner == "FourmicaX402":
        FourmicaX402(sub, pay_to=SELLER, core=core, network=NETWORK)
    else:
        config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK)
        sub.middleware("http")(http_middleware(config))

    @sub.get("/premium")
    def premium(payment: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        runs.append(payment.guarantee_id or "")
        return {"guarantee": payment.guarantee_id or ""}

    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    app.mount("/sub", sub)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/sub/premium"))
        resp = client.get("/sub/premium", headers=headers)
    assert resp.status_code == 200 and runs == [resp.json()["guarantee"]]
    [paid] = core.guarantees(address=buyer.address)
    assert (paid.guarantee_id, paid.state) == (runs[0], "payable")
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


@pytest.mark.parametrize("form", ["FourmicaX402", "http_middleware"])
def test_a_paid_routes_cors_preflight_is_left_to_a_cors_middleware_inside_the_gate(
    core: Core, form: str
) -> None:
    """The gate answered a Paid route's OPTIONS itself, a browser's preflight too: a
    ``CORSMiddleware`` installed inside the gate never saw it, so the answer had no
    ``Access-Control-Allow-Origin`` and the browser never sent the paid request."""
    from fastapi.middleware.cors import CORSMiddleware
    from fourmica_x402.adapters.fastapi import http_middleware

    from fourmica_x402 import PaymentConfig

    app, origin = FastAPI(), "https://shop.example"
    app.add_middleware(CORSMiddleware, allow_origins=[origin], allow_methods=["*"])
    if form == "FourmicaX402":
        FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    else:
        app.middleware("http")(
            http_middleware(PaymentConfig(pay_to=SELLER, core=core, network=NETWORK))
        )

    @app.api_route("/x", methods=["GET", "POST", "OPTIONS"])
    def x(p: Payment = Paid("$0.01", methods=["POST"])) -> dict[str, int]:  # noqa: B008
        return {"amount": p.amount}

    with TestClient(app) as client:
        asked = {"origin": origin, "access-control-request-method": "POST"}
        preflight = client.options("/x", headers=asked)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        options = client.options("/x")  # not a preflight: the marker's answer, as before
        assert options.status_code == 200 and options.headers["allow"] == "OPTIONS, POST"


@pytest.mark.parametrize("how", ["mount", "host"])
def test_a_paid_routes_cors_preflight_is_left_to_the_cors_middleware_of_its_mounted_app(
    core: Core, how: str
) -> None:
    """A FastAPI app mounted in the gated one (by path, or by its Host) with a
    ``CORSMiddleware`` of its own: the gate looked for one down its own stack only and answered
    a preflight to the app's Paid route itself, without ``Access-Control-Allow-Origin``, so a
    browser never sent the paid request. The preflight goes on to the app the router serves."""
    from fastapi.middleware.cors import CORSMiddleware

    sub, origin = FastAPI(), "https://shop.example"
    sub.add_middleware(CORSMiddleware, allow_origins=[origin], allow_methods=["*"])

    @sub.api_route("/x", methods=["GET", "POST", "OPTIONS"])
    def x(p: Payment = Paid("$0.01", methods=["POST"])) -> dict[str, int]:  # noqa: B008
        return {"amount": p.amount}

    app = FastAPI()
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    if how == "mount":
        app.mount("/sub", sub)
    else:
        app.host("api.example.com", sub)
    path, host = ("/sub/x", {}) if how == "mount" else ("/x", {"host": "api.example.com"})
    with TestClient(app, headers=host) as client:
        asked = {"origin": origin, "access-control-request-method": "POST"}
        preflight = client.options(path, headers=asked)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        options = client.options(path)  # not a preflight: the marker's answer, as before
        assert options.status_code == 200 and options.headers["allow"] == "OPTIONS, POST"
