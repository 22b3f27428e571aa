"""What Starlette's router dispatches is checked against what the gate decided on.

A pure ASGI layer between the payment middleware and the router (a method override, a path
alias, ``Mount(..., middleware=[...])``) changed the request after the gate resolved it: the
gate passed on a 405, a 404 or a free route, and the router then ran a route the table
prices, unpaid and unrecorded. Such a route is now refused, 503 ``payment_not_enforced``
(docs/architecture.md, "Which route is priced"); what the gate decided on stays as it decided.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid, http_middleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.gate import Gate, Payment
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers

SELLER = TestBuyer.new().address
TABLE = {"GET /items/:n": "$0.01", "GET /v1/report": "$0.02"}


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


class Rewrite:
    """A pure ASGI layer: the method from ``X-HTTP-Method-Override``, the path from
    ``X-Rewrite-URL``, and ``<root>/old/...`` served as ``<root>/...`` (an alias kept for old
    clients; ``<root>``: the mount it is installed on, if any)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        root = scope.get("root_path", "")
        path = headers.get(b"x-rewrite-url", b"").decode() or scope["path"]
        if path.startswith(root + "/old/"):
            path = root + path[len(root) + 4 :]
        scope = {**scope, "path": path, "raw_path": path.encode()}
        if b"x-http-method-override" in headers:
            scope["method"] = headers[b"x-http-method-override"].decode().upper()
        return await self.app(scope, receive, send)


def _funded(core: Core) -> TestBuyer:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**7, network=NETWORK)
    return buyer


def _gate(core: Core, table: dict[str, str]) -> Gate:
    return Gate(PaymentConfig(pay_to=SELLER, core=core, network=NETWORK, routes=table))


def _routes(runs: list[str]) -> list[Any]:
    """GET priced, POST free on one route; a mount with a rewriting middleware of its own."""

    async def item(request: Request) -> JSONResponse:
        runs.append(f"{request.method} {request.url.path}")
        return JSONResponse({"item": request.path_params["n"]})

    async def report(request: Request) -> JSONResponse:
        runs.append(f"{request.method} {request.url.path}")
        return JSONResponse({"report": "full"})

    return [
        Route("/items/{n}", item, methods=["GET", "POST"]),
        Mount("/v1", routes=[Route("/report", report)], middleware=[Middleware(Rewrite)]),
    ]


def _starlette(runs: list[str], gate: Gate) -> Starlette:
    return Starlette(  # first: outermost, the rewrite inside the gate
        routes=_routes(runs),
        middleware=[Middleware(PaymentMiddleware, gate=gate), Middleware(Rewrite)],
    )


def _fastapi(core: Core, runs: list[str], form: str) -> FastAPI:
    app = FastAPI()
    app.add_middleware(Rewrite)  # added first: below the gate
    if form == "FourmicaX402":
        FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes=TABLE)
    else:
        config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK, routes=TABLE)
        app.middleware("http")(http_middleware(config))

    @app.api_route("/items/{n}", methods=["GET", "POST"])
    def item(n: str, request: Request) -> dict[str, str]:
        runs.append(f"{request.method} {request.url.path}")
        return {"item": n}

    included = APIRouter(prefix="/v1")

    @included.get("/report")
    def report(request: Request) -> dict[str, str]:
        runs.append(f"{request.method} {request.url.path}")
        return {"report": "full"}

    app.include_router(included)
    return app


def _refused(resp: Any) -> bool:
    return resp.status_code == 503 and resp.json().get("error") == "payment_not_enforced"


@pytest.mark.parametrize("form", ["starlette", "FourmicaX402", "http_middleware"])
def test_a_layer_inside_the_gate_that_reroutes_a_request_never_runs_a_priced_route_unpaid(
    core: Core, form: str
) -> None:
    """A method override (a free POST made a priced GET), a path alias (a 404 made a priced
    route, HEAD too), a mount's own middleware, an included router: refused, the handler never
    runs. Free requests, and paid ones, are served as before."""
    runs: list[str] = []
    app = (
        _starlette(runs, _gate(core, TABLE)) if form == "starlette" else _fastapi(core, runs, form)
    )
    buyer = _funded(core)
    with TestClient(app) as client:
        assert client.get("/items/1").status_code == 402
        assert _refused(client.post("/items/1", headers={"X-HTTP-Method-Override": "GET"}))
        assert _refused(client.get("/old/items/1"))
        assert client.head("/old/items/1").status_code == 503
        assert _refused(client.get("/old/v1/report"))
        if form == "starlette":  # the mount's middleware rewrites below the mount
            assert _refused(client.get("/v1/old/report"))
        assert runs == []
        assert client.post("/items/1").status_code == 200 and runs == ["POST /items/1"]
        headers = paid_headers(client, buyer, client.get("/items/2"))
        assert client.get("/items/2", headers=headers).status_code == 200
    assert runs == ["POST /items/1", "GET /items/2"]
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


def test_a_frontend_with_dependencies_rerouted_to_is_refused_too(core: Core, tmp_path: Any) -> None:
    """A ``frontend()`` whose router has dependencies is served by its group, which sends the
    files itself instead of calling the route's ``handle``: a path alias inside the gate
    reached the priced files free (without dependencies it was refused, 503)."""
    from fastapi import Depends

    (tmp_path / "report.txt").write_text("paid file")
    for dependencies in ([], [Depends(lambda: None)]):
        app = FastAPI(dependencies=dependencies)
        app.add_middleware(Rewrite)  # added first: below the gate
        FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /app/*": "$0.05"})
        app.frontend("/app", directory=str(tmp_path))
        buyer = _funded(core)
        with TestClient(app) as client:
            assert _refused(client.get("/old/app/report.txt"))
            headers = paid_headers(client, buyer, client.get("/app/report.txt"))
            paid = client.get("/app/report.txt", headers=headers)
            assert (paid.status_code, paid.text) == (200, "paid file")


@pytest.mark.parametrize("form", ["FourmicaX402", "http_middleware"])
def test_a_paid_route_a_layer_reroutes_to_runs_none_of_its_dependencies_unpaid(
    core: Core, form: str
) -> None:
    """A path alias inside the gate onto a ``Paid`` route: ``Paid`` refused it (503), but only
    after FastAPI had run the dependencies declared before it (a quota, an audit write),
    unpaid. The route is checked where the router calls it, as a table-priced one is."""
    from fastapi import Depends

    app, runs = FastAPI(), collections.Counter[str]()
    app.add_middleware(Rewrite)  # added first: below the gate
    if form == "FourmicaX402":
        FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    else:
        config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK)
        app.middleware("http")(http_middleware(config))

    def side_effect() -> None:
        runs["dependency"] += 1

    @app.get("/paid", dependencies=[Depends(side_effect)])
    def paid(payment: Payment = Paid("$0.01")) -> dict[str, int]:  # noqa: B008
        runs["handler"] += 1
        return {"amount": payment.amount}

    buyer = _funded(core)
    with TestClient(app) as client:
        assert client.get("/paid").status_code == 402  # (the http middleware learns the app)
        assert _refused(client.get("/old/paid")) and runs == {}
        headers = paid_headers(client, buyer, client.get("/paid"))
        assert client.get("/paid", headers=headers).status_code == 200
    assert runs == {"dependency": 1, "handler": 1}


def test_a_payment_for_one_route_does_not_buy_the_route_a_layer_reroutes_it_to(
    core: Core,
) -> None:
    """Paid for /items/1 at its price, rewritten to /v1/report (a dearer route): refused, and
    the payment is not kept (no handler ran)."""
    runs: list[str] = []
    buyer = _funded(core)
    with TestClient(_starlette(runs, _gate(core, TABLE))) as client:
        headers = paid_headers(client, buyer, client.get("/items/1"))
        assert _refused(client.get("/items/1", headers={**headers, "X-Rewrite-URL": "/v1/report"}))
    assert runs == []
    assert [g.state for g in core.guarantees(address=buyer.address)] in (["voided"], ["cancelled"])
    assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("form", ["starlette", "FourmicaX402", "http_middleware"])
def test_a_payment_is_not_kept_for_a_free_route_a_layer_reroutes_it_to(
    core: Core, form: str
) -> None:
    """Paid for GET /items/1, turned into the free POST by a layer inside the gate: the free
    handler answered 200 and the buyer was charged for a request that never ran. Refused now
    (503), and the payment is not kept."""
    runs: list[str] = []
    app = (
        _starlette(runs, _gate(core, TABLE)) if form == "starlette" else _fastapi(core, runs, form)
    )
    buyer = _funded(core)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/items/1"))
        posted = client.get("/items/1", headers={**headers, "X-HTTP-Method-Override": "POST"})
        assert _refused(posted)
        assert client.post("/items/1").status_code == 200  # free, unpaid: unchanged
    assert runs == ["POST /items/1"]
    assert all(g.state in ("voided", "cancelled") for g in core.guarantees(address=buyer.address))
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_route_priced_at_run_time_is_checked_when_the_router_dispatches(core: Core) -> None:
    """The table is read when the router dispatches, not when the app started: a route priced
    after the start (``gate.add_route``) is refused when a layer reroutes a request to it."""
    runs: list[str] = []
    gate = _gate(core, {"GET /items/:n": "$0.01"})
    with TestClient(_starlette(runs, gate)) as client:
        assert client.get("/old/v1/report").status_code == 200  # free: served
        gate.add_route("GET /v1/report", "$0.02")
        assert client.get("/v1/report").status_code == 402
        assert _refused(client.get("/old/v1/report"))
    assert runs == ["GET /v1/report"]


def test_a_websocket_rerouted_to_a_priced_route_is_closed(core: Core) -> None:
    """The gate closes a WebSocket on a priced route (1008); one a layer reroutes there too."""
    opened: list[str] = []

    async def feed(websocket: WebSocket) -> None:
        opened.append(websocket.url.path)
        await websocket.accept()
        await websocket.send_text("tick")
        await websocket.close()

    gate = _gate(core, {"GET /feed": "$0.01"})
    app = Starlette(
        routes=[WebSocketRoute("/feed", feed), WebSocketRoute("/free", feed)],
        middleware=[Middleware(PaymentMiddleware, gate=gate), Middleware(Rewrite)],
    )
    with TestClient(app) as client:
        for path in ("/feed", "/old/feed"):
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path) as ws:
                ws.receive_text()  # unreached: closed before it is accepted
            assert closed.value.code == 1008
        with client.websocket_connect("/old/free") as ws:
            assert ws.receive_text() == "tick"
    assert opened == ["/free"]


def test_a_request_an_outer_gate_settled_runs_on_an_inner_gates_priced_route(core: Core) -> None:
    """An app with a gate of its own mounted as a plain ASGI app (the outer router sees one
    route for all of it): the outer gate's payment runs the inner route it reaches, once."""
    runs: list[str] = []
    inner = PaymentMiddleware(Starlette(routes=_routes(runs)), gate=_gate(core, TABLE))
    outer = Starlette(
        routes=[Mount("/shop", app=inner)],
        middleware=[Middleware(PaymentMiddleware, gate=_gate(core, {"GET /shop/*": "$0.03"}))],
    )
    buyer = _funded(core)
    with TestClient(outer) as client:
        headers = paid_headers(client, buyer, client.get("/shop/items/1"))
        assert client.get("/shop/items/1", headers=headers).status_code == 200
    assert runs == ["GET /shop/items/1"]
    assert core.position(buyer.address, network=NETWORK).locked == 30_000


PARTNER = TestBuyer.new().address


def _bought_through_a_platform(core: Core, partner: Any, price: str) -> tuple[Any, TestBuyer]:
    """``GET /partner/premium``, ``partner`` mounted at /partner in an app whose gate prices
    ``GET /partner/*`` at ``price`` (to SELLER): the answer to a funded buyer's payment."""
    platform = Starlette(
        routes=[Mount("/partner", app=partner)],
        middleware=[Middleware(PaymentMiddleware, gate=_gate(core, {"GET /partner/*": price}))],
    )
    buyer = _funded(core)
    with TestClient(platform) as client:
        headers = paid_headers(client, buyer, client.get("/partner/premium"))
        return client.get("/partner/premium", headers=headers), buyer


@pytest.mark.parametrize(
    ("outer_price", "inner_pay_to"), [("$0.001", SELLER), ("$0.01", PARTNER), ("$0.03", PARTNER)]
)
@pytest.mark.parametrize("inner", ["starlette", "FourmicaX402", "http_middleware"])
def test_an_outer_gate_never_sells_an_inner_gates_route_on_other_terms(
    core: Core, outer_price: str, inner_pay_to: str, inner: str
) -> None:
    """A platform's gate prices its partner's mounted app as a whole (``GET /partner/*``)
    and the partner's own gate prices a route of it: the outer payment ran the partner's
    route whatever its price and payee ($0.01 sold for $0.001, or paid to the platform). The
    inner gate lets it through only on its own terms now; else 503, and the outer refunds."""
    runs: list[str] = []

    async def premium(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        return JSONResponse({"premium": True})

    config = PaymentConfig(pay_to=inner_pay_to, core=core, network=NETWORK)
    if inner == "starlette":
        table = {"GET /premium": "$0.01"}
        partner: Any = PaymentMiddleware(
            Starlette(routes=[Route("/premium", premium)]),
            config=PaymentConfig(pay_to=inner_pay_to, core=core, network=NETWORK, routes=table),
        )
    else:
        partner = FastAPI()

        @partner.get("/premium")
        def bought(payment: Payment = Paid("$0.01")) -> dict[str, bool]:  # noqa: B008
            runs.append("/partner/premium")
            return {"premium": True}

        if inner == "FourmicaX402":
            FourmicaX402(partner, config=config)
        else:
            partner.middleware("http")(http_middleware(config))
    resp, buyer = _bought_through_a_platform(core, partner, outer_price)
    states = [g.state for g in core.guarantees(address=buyer.address)]
    locked = core.position(buyer.address, network=NETWORK).locked
    if inner != "starlette" and inner_pay_to == SELLER:  # the outer gate sees the Paid too:
        assert resp.status_code == 200 and len(runs) == 1  # its price, not the wildcard's
        assert (states, locked) == (["payable"], 10_000)
        return
    assert _refused(resp), (resp.status_code, resp.text)
    assert runs == [] and states in (["voided"], ["cancelled"]) and locked == 0


@pytest.mark.parametrize(
    "inner",
    ["marker", "validation policy", "gate's validation policy", "offer's validation policy"],
)
def test_an_inner_route_whose_terms_are_more_than_a_price_never_runs_on_an_outer_payment(
    core: Core, inner: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The outer gate cannot see inside this mount (a router under a middleware of its own),
    so its wildcard sells the route at the same amount and payee; the inner route's marker
    (the handler's own check) or validation policy is what the outer payment is not: 503,
    refunded, and the log says why, not that a layer changed the request. A policy the inner
    gate sets for all its routes, or an offer carries in its ``extra``, is its own too: the
    route ran on the outer payment, its validator never asked."""
    from fourmica_x402.guarantee.policy import ValidationPolicy

    runs: list[str] = []
    config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK)
    if inner == "marker":
        sub = FastAPI()

        @sub.get("/premium")
        def bought(payment: Payment = Paid("$0.01")) -> dict[str, bool]:  # noqa: B008
            runs.append("/premium")
            return {"premium": True}

        partner: Any = PaymentMiddleware(sub, config=config)
    else:
        policy = ValidationPolicy(SELLER, SELLER, 1, 80, bytes(32), 84532)
        table: dict[str, Any] = {"GET /premium": {"price": "$0.01", "validation_policy": policy}}
        options: dict[str, Any] = {}
        if inner == "gate's validation policy":
            table, options = {"GET /premium": "$0.01"}, {"validation_policy": policy}
        elif inner == "offer's validation policy":
            offer = {"price": "$0.01", "network": NETWORK, "payTo": SELLER}
            offer["extra"] = {**policy.to_extra(), "jobHash": "0x" + "11" * 32}
            table = {"GET /premium": {"accepts": offer}}

        async def premium(request: Request) -> JSONResponse:
            runs.append("/premium")
            return JSONResponse({"premium": True})

        sub = Starlette(routes=[Route("/premium", premium)])
        config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK, routes=table, **options)
        partner = PaymentMiddleware(sub, gate=Gate(config))
    resp, buyer = _bought_through_a_platform(core, partner, "$0.01")
    assert _refused(resp) and runs == []
    assert [g.state for g in core.guarantees(address=buyer.address)] in (["voided"], ["cancelled"])
    why = "marker here" if inner == "marker" else "validation policy of its own"
    assert any(why in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("case", ["unpriced method", "repriced", "bad unit count"])
def test_an_inner_gate_decides_on_an_outer_payment_as_on_any_request(core: Core, case: str) -> None:
    """The inner gate judged an outer payment by a route of its own finding: a POST on a
    mount serving every method (GET priced: 405 here) bought the $1 GET content for $0.001;
    a price raised in the price book was never read (the old price met); a bad unit count
    of a bundle was 503 payment_not_enforced instead of 400 invalid_units. It decides as on
    any request now, and only the payment step is the outer gate's."""
    from fourmica_x402.gate.prices import PriceBook

    runs: list[str] = []

    async def report(scope: Any, receive: Any, send: Any) -> None:  # any method
        runs.append(scope["method"])
        await JSONResponse({"report": True})(scope, receive, send)

    table: dict[str, Any] = {"GET /premium/*": "$0.01"}
    if case == "bad unit count":
        table = {"GET /premium/*": {"price": "$0.01", "units": lambda r: int(r.query)}}
    partner = Starlette(routes=[Mount("/premium", app=report)])
    if case == "repriced":  # `fourmica-x402 reprice` in another process
        PriceBook(core.store).set({"GET /premium/*": "$1"}, source="cli")
    inner = PaymentMiddleware(partner, gate=_gate(core, table))
    platform = Starlette(
        routes=[Mount("/partner", app=inner)],
        middleware=[Middleware(PaymentMiddleware, gate=_gate(core, {"* /partner/*": "$0.01"}))],
    )
    buyer = _funded(core)
    method, url = ("POST", "/partner/premium/x") if case == "unpriced method" else ("GET", "")
    url = url or ("/partner/premium/x?abc" if case == "bad unit count" else "/partner/premium/x")
    with TestClient(platform) as client:
        headers = paid_headers(client, buyer, client.request(method, url))
        resp = client.request(method, url, headers=headers)
    expected = {"unpriced method": 405, "repriced": 503, "bad unit count": 400}[case]
    assert resp.status_code == expected and runs == [], (resp.status_code, resp.text)
    assert [g.state for g in core.guarantees(address=buyer.address)] in (["voided"], ["cancelled"])


@pytest.mark.parametrize("form", ["starlette", "FourmicaX402", "http_middleware"])
def test_a_request_the_gate_passes_unresolved_never_reaches_a_priced_route(
    core: Core, form: str
) -> None:
    """The gate lets some requests through without asking the router (an OPTIONS on its
    discovery path, a WebSocket on its own paths): they left no note, and a layer inside the
    gate that rerouted them reached a priced route unchecked."""
    runs: list[str] = []
    if form == "starlette":
        app: Any = _starlette(runs, _gate(core, TABLE))
    else:
        app = _fastapi(core, runs, form)
    sneaked = {"X-HTTP-Method-Override": "GET", "X-Rewrite-URL": "/items/1"}
    with TestClient(app) as client:
        resp = client.options("/.well-known/x402", headers=sneaked)
        assert _refused(resp), (resp.status_code, resp.text)
        assert client.post("/items/1").status_code == 200  # free: unchanged
    assert runs == ["POST /items/1"]


def test_a_websocket_on_the_gates_own_paths_never_reaches_a_priced_route(core: Core) -> None:
    opened: list[str] = []

    async def feed(websocket: WebSocket) -> None:
        opened.append(websocket.url.path)
        await websocket.accept()
        await websocket.send_text("tick")

    app = Starlette(
        routes=[WebSocketRoute("/feed", feed)],
        middleware=[
            Middleware(PaymentMiddleware, gate=_gate(core, {"GET /feed": "$0.01"})),
            Middleware(Rewrite),
        ],
    )
    with TestClient(app) as client:
        for path in ("/x402/anything", "/x402/tab"):
            with (
                pytest.raises(WebSocketDisconnect) as closed,
                client.websocket_connect(path, headers={"X-Rewrite-URL": "/feed"}) as ws,
            ):
                ws.receive_text()
            assert closed.value.code == 1008, path
    assert opened == []


@pytest.mark.parametrize("outer_get", [None, "$0.01"], ids=["free-get", "paid-get"])
def test_a_gate_inside_another_never_hides_a_reroute_from_the_outer_one(
    core: Core, outer_get: str | None
) -> None:
    """A layer between two gates (on the mount of an app with a gate of its own) turned a GET
    into the PUT the outer gate prices at $1: the inner gate's note of what it saw replaced
    the outer one's, and the $1 PUT ran free, or on a $0.01 GET's payment."""
    runs: list[str] = []

    async def shelf(request: Request) -> JSONResponse:
        runs.append(request.method)
        return JSONResponse({"ran": request.method})

    async def other(request: Request) -> JSONResponse:
        return JSONResponse({})

    inner = Starlette(
        routes=[Route("/a", shelf, methods=["GET", "PUT"]), Route("/other", other)],
        middleware=[Middleware(PaymentMiddleware, gate=_gate(core, {"GET /other": "$0.05"}))],
    )
    table = {"PUT /shop/a": "$1", **({"GET /shop/a": outer_get} if outer_get else {})}
    outer = Starlette(
        routes=[Mount("/shop", app=inner, middleware=[Middleware(Rewrite)])],
        middleware=[Middleware(PaymentMiddleware, gate=_gate(core, table))],
    )
    buyer = _funded(core)
    with TestClient(outer) as client:
        assert client.put("/shop/a").status_code == 402
        headers = paid_headers(client, buyer, client.get("/shop/a")) if outer_get else {}
        resp = client.get("/shop/a", headers={**headers, "X-HTTP-Method-Override": "PUT"})
        assert _refused(resp), (resp.status_code, resp.text)
        assert client.get("/shop/a").status_code == (402 if outer_get else 200)
    assert runs == ([] if outer_get else ["GET"])
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_route_objects_shared_with_another_app_answer_by_that_apps_own_gates(
    core: Core,
) -> None:
    """One APIRouter's routes served by apps with gates of their own: the check of one app's
    gate refused the other's paid requests. (An app without a gate sharing them fails closed:
    no gate noted its request.)"""
    runs: list[str] = []
    router = APIRouter()

    @router.get("/items")
    def items() -> dict[str, bool]:
        runs.append("items")
        return {"ok": True}

    sold, bare, other = FastAPI(), FastAPI(), FastAPI()
    for app in (sold, bare, other):
        app.include_router(router)
    FourmicaX402(sold, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /items": "$1"})
    FourmicaX402(other, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /items": "$2"})
    with TestClient(sold) as a, TestClient(bare) as b, TestClient(other) as c:
        assert a.get("/items").status_code == 402 and c.get("/items").status_code == 402
        assert _refused(b.get("/items"))  # no gate noted it: every gate pricing it judges
        buyer = _funded(core)
        assert c.get("/items", headers=paid_headers(c, buyer, c.get("/items"))).status_code == 200
    assert runs == ["items"]
    assert core.position(buyer.address, network=NETWORK).locked == 2_000_000


def test_a_method_in_another_case_on_a_priced_route_is_the_routes_405(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """``get /premium`` (lowercase): the router matched the route partially (a method it does
    not serve: 405) and the gate let it through, unpriced; the router's check upper-cased the
    method, found GET priced and answered 503 ``payment_not_enforced``, logging a layer that
    rerouted the request. The route answers its own 405, as for PUT."""

    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"paid": True})

    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, gate=_gate(core, {"GET /premium": "$0.01"}))],
    )

    def status(method: str) -> int:  # sent as is (an HTTP client upper-cases it)
        import asyncio

        from fourmica_x402.testing import http_scope

        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(asyncio.wait_for(app(http_scope(method, "/premium"), receive, send), 10))
        return int(sent[0]["status"])

    with caplog.at_level("ERROR", logger="fourmica_x402"), TestClient(app):
        assert [status(m) for m in ("PUT", "get", "Get", "GET")] == [405, 405, 405, 402]
    assert not [r for r in caplog.records if "a layer between" in r.getMessage()]
    assert core.guarantees() == []


@pytest.mark.parametrize("form", ["mounts", "included", "FourmicaX402", "http_middleware"])
def test_a_payment_for_a_shared_route_under_a_cheap_prefix_does_not_buy_the_dear_one(
    core: Core, form: str
) -> None:
    """One route under two prefixes (a Starlette ``Route`` in two mounts, a FastAPI router
    included twice) is two endpoints, each at its own price. A $0.01 payment for /basic/report
    rewritten to /pro/report ($1), or to /free/report: the router's check took the route
    object for the endpoint the gate priced, so /pro ran on the /basic payment, kept. Now
    only the endpoint that runs is checked: refused, the payment refunded; each prefix's own
    payment (or none at /free) is served."""
    runs: list[str] = []

    async def report(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        return JSONResponse({"ok": 1})

    table = {"GET /basic/report": "$0.01", "GET /pro/report": "$1"}
    layers = [Middleware(PaymentMiddleware, gate=_gate(core, table)), Middleware(Rewrite)]
    prefixes = ("/basic", "/pro", "/free")
    app: Any
    if form == "mounts":
        shared = [Route("/report", report)]
        app = Starlette(routes=[Mount(p, routes=shared) for p in prefixes], middleware=layers)
    else:
        app, router = FastAPI(middleware=layers if form == "included" else None), APIRouter()
        router.add_api_route("/report", report)
        if form != "included":
            app.add_middleware(Rewrite)  # added first: below the gate
            config = PaymentConfig(pay_to=SELLER, core=core, network=NETWORK, routes=table)
            if form == "FourmicaX402":
                FourmicaX402(app, config=config)
            else:
                app.middleware("http")(http_middleware(config))
        for prefix in prefixes:
            app.include_router(router, prefix=prefix)
    buyer = _funded(core)
    with TestClient(app) as client:
        for target in ("/pro/report", "/free/report"):
            headers = paid_headers(client, buyer, client.get("/basic/report"))
            moved = client.get("/basic/report", headers={**headers, "X-Rewrite-URL": target})
            assert _refused(moved), moved.text
        assert runs == []
        assert all(g.state in ("voided", "cancelled") for g in core.guarantees())
        for path in ("/basic/report", "/pro/report"):
            served = client.get(path, headers=paid_headers(client, buyer, client.get(path)))
            assert served.status_code == 200, served.text
        assert client.get("/free/report").status_code == 200
        rewritten = client.get("/free/report", headers={"X-Rewrite-URL": "/pro/report"})
        assert _refused(rewritten)
    assert runs == ["/basic/report", "/pro/report", "/free/report"]
