"""Of the table entries that fit a request, the most specific prices it, whatever their order:
an entry naming the resolved route exactly beats a wildcard or a parameter that also covers
it, and a named method beats ``*``. An earlier catch-all used to sell /files/premium at its
own price (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.flask import FourmicaX402
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import decode_payment_required

SELLER = TestBuyer.new().address
#: Listed least specific first: order must not decide.
TABLE = {
    "* /files/*": "$0.01",
    "GET /files/*": "$0.02",
    "GET /files/:name": "$0.03",
    "GET /files/premium": "$1.00",
}
EXPECTED = {"/files/premium": 1_000_000, "/files/report": 30_000}


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


def _amount(resp: Any) -> int:
    assert resp.status_code == 402, resp.status_code
    return int(decode_payment_required(resp.headers["payment-required"]).accepts[0].amount)


def _pay_and_check(client: Any, core: Core, path: str) -> None:
    """The challenge's price is the one settled: the buyer's lock after a paid request."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**7, network=NETWORK)
    name, value = buyer.pay_challenge(core, client.get(path).headers["payment-required"])
    assert client.get(path, headers={name: value}).status_code == 200
    assert core.position(buyer.address, network=NETWORK).locked == EXPECTED[path]


def _flask(core: Core, table: dict[str, str]) -> tuple[Flask, FourmicaX402]:
    """A Flask app selling by ``table`` on ``core`` (routes added by the test)."""
    app = Flask(__name__)
    app.config.update(FOURMICA_X402_PAY_TO=SELLER, FOURMICA_X402_CORE=core)
    app.config["FOURMICA_X402_ROUTES"] = table
    return app, FourmicaX402(app)


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app with no router: the gate prices its raw path."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_flask_sells_each_rule_at_its_most_specific_entry(core: Core) -> None:
    app, payments = _flask(core, TABLE)

    @app.route("/files/<name>", methods=["GET", "POST"])
    def named(name: str) -> dict[str, str]:
        return {"file": name}

    @app.get("/files/premium")
    def premium() -> dict[str, str]:
        return {"premium": "expensive content"}

    payments.check()
    client = app.test_client()
    for path, amount in EXPECTED.items():
        assert _amount(client.get(path)) == amount, path
    assert _amount(client.post("/files/report")) == 10_000  # only "* /files/*" prices POST
    _pay_and_check(client, core, "/files/premium")


def test_starlette_and_a_router_less_app_sell_at_the_most_specific_entry(core: Core) -> None:
    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({"path": request.url.path})

    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": TABLE}
    routed = Starlette(
        routes=[Route("/files/premium", ok), Route("/files/{name}", ok, methods=["GET", "POST"])],
        middleware=[Middleware(PaymentMiddleware, **options)],
    )

    for app in (routed, PaymentMiddleware(_bare, **options)):
        with TestClient(app) as client:
            for path, amount in EXPECTED.items():
                assert _amount(client.get(path)) == amount, (app, path)
            assert _amount(client.post("/files/report")) == 10_000
            if app is not routed:  # two segments: only the wildcards fit the raw path
                assert _amount(client.get("/files/a/b")) == 20_000
            _pay_and_check(client, core, "/files/premium")


@pytest.mark.parametrize(
    ("table", "path", "amount"),
    [
        (
            {"GET /api/*": "$0.01", "GET /api/:version/premium/*": "$1.00"},
            "/api/v1/premium/r",
            10**6,
        ),
        (
            {"GET /api/:version/premium/*": "$1.00", "GET /api/*": "$0.01"},
            "/api/v1/premium/r",
            10**6,
        ),
        ({"GET /*": "$0.01", "GET /premium/*/raw/*": "$5.00"}, "/premium/a/raw/b", 5 * 10**6),
        ({"GET /*": "$0.01", "GET /premium/*/raw/*": "$5.00"}, "/free-ish", 10_000),
    ],
)
def test_literal_text_outranks_a_catch_all_in_either_order(
    core: Core, table: dict[str, str], path: str, amount: int
) -> None:
    """Counting wildcards first sold /api/v1/premium/r at the catch-all's price."""

    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({})

    routes = [Route("/api/{version}/premium/{name}", ok), Route("/premium/{a}/raw/{b}", ok)]
    routes.append(Route("/{p}", ok))
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": table}
    app = Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, **options)])
    with TestClient(app) as client:
        assert _amount(client.get(path)) == amount
    assert [r.key for r in PaymentMiddleware(ok, **options).gate.routes.routes] == list(table)


#: Two routes of one app that differ only by their converters, each priced on its own; both
#: orders of the table (the first entry written used to price both routes).
CONVERTER_TABLES = [
    {"GET /items/<name>": "$0.01", "GET /items/<int:item_id>": "$1.00"},
    {"GET /items/<int:item_id>": "$1.00", "GET /items/<name>": "$0.01"},
    {"GET /items/{slug}": "$0.01", "GET /items/{item_id:int}": "$1.00"},
]
CONVERTER_PRICES = {"/items/42": 1_000_000, "/items/foo": 10_000}


def _pay_at(client: Any, core: Core, path: str, amount: int) -> None:
    """The challenge names ``amount`` and a paid request locks exactly that."""
    first = client.get(path)
    assert _amount(first) == amount, path
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**7, network=NETWORK)
    name, value = buyer.pay_challenge(core, first.headers["payment-required"])
    assert client.get(path, headers={name: value}).status_code == 200
    assert core.position(buyer.address, network=NETWORK).locked == amount, path


@pytest.mark.parametrize("table", CONVERTER_TABLES)
def test_routes_differing_by_converter_keep_their_own_prices(
    core: Core, table: dict[str, str]
) -> None:
    app, payments = _flask(core, table)

    @app.get("/items/<int:item_id>")
    def premium(item_id: int) -> dict[str, Any]:
        return {"premium": item_id}

    @app.get("/items/<name>")
    def cheap(name: str) -> dict[str, str]:
        return {"name": name}

    payments.check()
    client = app.test_client()
    for path, amount in CONVERTER_PRICES.items():
        _pay_at(client, core, path, amount)

    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({})

    routes = [Route("/items/{item_id:int}", ok), Route("/items/{slug}", ok)]
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": table}
    starlette = Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, **options)])
    with TestClient(starlette) as client:
        for path, amount in CONVERTER_PRICES.items():
            _pay_at(client, core, path, amount)


def test_converters_compare_across_notations() -> None:
    """Flask, Starlette and Django spell a converter their own way; one segment is one kind."""
    from fourmica_x402.templates import typed_template

    assert {typed_template(t) for t in ("/i/<int:pk>", "/i/{n:int}", "/i/<int:x>")} == {"/i/{int}"}
    segment = ("/i/<name>", "/i/{name}", "/i/:id", "/i/[id]", "/i/<string:x>", "/i/{x:str}")
    assert {typed_template(t) for t in segment} == {"/i/{}"}
    assert typed_template("/f/<path:p>") == typed_template("/f/{p:path}") == "/f/{path}"
    assert typed_template("/u/<slug:s>") != typed_template("/u/<int:s>")


def test_a_colon_inside_a_segment_is_text_not_a_parameter(core: Core) -> None:
    """``/models/{name}:predict`` and ``/models/{name}:explain`` are two routes: each sells at
    its own entry, and an app without a router prices its raw path the same way."""

    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({"path": request.url.path})

    table = {"GET /models/{name}:predict": "$0.01", "GET /models/{name}:explain": "$1.00"}
    table["GET /items:search"] = "$2.00"
    table["GET /items/:id"] = "$0.03"
    routes = [
        Route("/models/{name}:predict", ok),
        Route("/models/{name}:explain", ok),
        Route("/items:search", ok),
        Route("/items/{id}", ok),
    ]
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": table}
    prices = {
        "/models/m:predict": 10_000,
        "/models/m:explain": 10**6,
        "/items:search": 2 * 10**6,
        "/items/7": 30_000,
    }
    routed = Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, **options)])
    with TestClient(routed) as client:
        for path, amount in prices.items():
            _pay_at(client, core, path, amount)

    raw = {"GET /items:search": "$2.00", "GET /items/:id": "$0.03"}
    with TestClient(PaymentMiddleware(_bare, **{**options, "routes": raw})) as client:
        _pay_at(client, core, "/items:search", 2 * 10**6)
        assert client.get("/itemsearch").status_code == 200  # no entry names it: free


@pytest.mark.parametrize("order", ["segment-first", "wildcard-first"])
def test_a_path_converter_is_priced_by_a_wildcard_entry_not_a_one_segment_one(
    core: Core, order: str
) -> None:
    """``:name`` is one path segment: a route with a ``path`` converter (any depth) is priced
    by the ``*`` entry, as the raw path of an app without a router is."""
    entries = [("GET /files/:name", "$0.01"), ("GET /files/*", "$1.00")]
    table = dict(entries if order == "segment-first" else entries[::-1])
    app, payments = _flask(core, table)

    @app.get("/files/<name>")
    def one(name: str) -> dict[str, str]:
        return {"file": name}

    @app.get("/files/<path:rest>")
    def deep(rest: str) -> dict[str, str]:
        return {"download": rest}

    payments.check()
    client = app.test_client()
    _pay_at(client, core, "/files/deep/archive.tar", 10**6)
    _pay_at(client, core, "/files/report", 10_000)

    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({})

    routes = [Route("/files/{name}", ok), Route("/files/{rest:path}", ok)]
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": table}
    starlette = Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, **options)])
    with TestClient(starlette) as client:
        _pay_at(client, core, "/files/deep/archive.tar", 10**6)
        _pay_at(client, core, "/files/report", 10_000)


@pytest.mark.parametrize("order", ["segment-first", "wildcard-first"])
def test_a_custom_converter_matching_slashes_is_priced_like_a_path_converter(
    core: Core, order: str
) -> None:
    """A converter of the app's own that matches ``/`` spans segments as ``path`` does, as its
    framework defines it (werkzeug: ``part_isolating``; Starlette: its regex): only the
    ``*`` entry prices it. An entry written with the converter itself prices it too."""
    from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor
    from werkzeug.routing import BaseConverter, PathConverter

    entries = [("GET /files/:name", "$0.01"), ("GET /files/*", "$1.00")]
    table = dict(entries if order == "segment-first" else entries[::-1])

    class AnyPath(PathConverter):
        pass

    class Dotted(BaseConverter):  # ".+" without "/": werkzeug matches it within one segment
        regex = ".+"

    app, payments = _flask(core, table)
    app.url_map.converters.update(anypath=AnyPath, dotted=Dotted)

    @app.get("/files/<anypath:rest>")
    def deep(rest: str) -> dict[str, str]:
        return {"download": rest}

    @app.get("/files/<dotted:name>")
    def one(name: str) -> dict[str, str]:
        return {"file": name}

    payments.check()
    client = app.test_client()
    _pay_at(client, core, "/files/deep/archive.tar", 10**6)
    _pay_at(client, core, "/files/report", 10_000)  # the one-segment converter's route

    class Everything(Convertor[str]):
        regex = ".*"

        def convert(self, value: str) -> str:
            return value

        def to_string(self, value: str) -> str:
            return value

    if "anything" not in CONVERTOR_TYPES:
        register_url_convertor("anything", Everything())

    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({})

    routes = [Route("/files/{name}", ok), Route("/files/{rest:anything}", ok)]
    for own in (table, {"GET /files/{rest:anything}": "$0.50"}):
        options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": own}
        app_ = Starlette(routes=routes, middleware=[Middleware(PaymentMiddleware, **options)])
        with TestClient(app_) as client:
            _pay_at(client, core, "/files/deep/archive.tar", 10**6 if own is table else 500_000)


@pytest.mark.parametrize(
    ("regex", "spans"),
    [
        ("[^/]+", False),
        (r"\d+", False),
        ("[-a-zA-Z0-9_]+", False),
        ("[0-9a-f]{8}-[0-9a-f]{4}", False),
        (r"(?!/)\w+", False),  # a lookahead consumes nothing
        (".+", True),
        (".*", True),
        ("[a-z/]+", True),
        (r"\d{4}/\d{2}", True),
        ("[^a]+", True),
        (r"\S+", True),
        ("[+-9]", True),  # a range holding "/"
        ("(?:a|/)", True),
        ("[", True),  # unreadable: spans, to be safe
    ],
)
def test_a_converter_regex_is_read_for_whether_it_matches_a_slash(regex: str, spans: bool) -> None:
    from fourmica_x402.templates import matches_slash

    assert matches_slash(regex) is spans


def test_a_starlette_view_priced_under_one_of_its_paths_is_named_at_start_up(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """One view under two paths, the table pricing one: the other serves it free. The gate
    says so when it starts (it may be meant; a table cannot tell)."""

    async def report(request: Any) -> JSONResponse:
        return JSONResponse({"report": True})

    config = PaymentConfig(pay_to=SELLER, routes={"GET /v2/report": "$0.01"}, core=core)
    app = Starlette(
        routes=[Route("/v1/report", report), Route("/v2/report", report)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    with caplog.at_level(logging.WARNING, logger="fourmica_x402"), TestClient(app) as client:
        assert client.get("/v2/report").status_code == 402
        assert client.get("/v1/report").status_code == 200
    said = [r.getMessage() for r in caplog.records if "same handler" in r.getMessage()]
    assert said and "prices /v2/report but not /v1/report" in said[0]


def test_a_view_serving_any_method_keeps_no_pricing_for_made_up_methods() -> None:
    """Django resolves a URL whatever the method: each made-up method a client sent was kept
    on the view's endpoint for good (memory without bound). Priced afresh, as before."""
    from fourmica_x402.routes import RouteTable
    from fourmica_x402.templates import Endpoint

    table = RouteTable({"* /any": "$0.01"}, network=NETWORK, pay_to=SELLER)
    endpoint = Endpoint(object(), "/any")  # a view serving every method
    for i in range(500):
        route = table.for_endpoint(f"X{i:05d}", endpoint)
        assert route is not None and route.key == "* /any"  # still priced
    assert table.for_endpoint("GET", endpoint) is not None
    assert len(endpoint._priced) <= 2  # GET (and the table's "?" listing), nothing else


def test_a_starlette_endpoint_class_serves_the_methods_it_has_handlers_for(core: Core) -> None:
    """An ``HTTPEndpoint`` class with a free ``get`` (the form) and a priced ``post`` (the
    work): Starlette lists no methods for such a route, so the gate took it for a view serving
    every method and answered the free GET (and HEAD) 405 itself, its ``Allow`` naming POST
    only. It serves the methods it has handlers for, as Django's class-based views do."""
    from starlette.endpoints import HTTPEndpoint
    from starlette.responses import PlainTextResponse

    ran: list[str] = []

    class Convert(HTTPEndpoint):
        async def get(self, request: Any) -> PlainTextResponse:
            ran.append("get")
            return PlainTextResponse("the form")

        async def post(self, request: Any) -> PlainTextResponse:
            ran.append("post")
            return PlainTextResponse("converted")

    app = Starlette(routes=[Route("/convert", Convert)])
    options: dict[str, Any] = {"pay_to": SELLER, "core": core, "network": NETWORK}
    app.add_middleware(PaymentMiddleware, routes={"POST /convert": "$0.02"}, **options)
    with TestClient(app) as client:
        page = client.get("/convert")
        assert (page.status_code, page.text) == (200, "the form")
        assert client.head("/convert").status_code == 200
        assert client.delete("/convert").headers.get("allow") == "GET, HEAD, POST"  # its own
        challenge = client.post("/convert")
        assert _amount(challenge) == 20_000 and ran == ["get", "get"]
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 10**7, network=NETWORK)
        name, value = buyer.pay_challenge(core, challenge.headers["payment-required"])
        paid = client.post("/convert", headers={name: value})
        assert (paid.status_code, paid.text) == (200, "converted")
    assert ran == ["get", "get", "post"] and len(core.guarantees()) == 1


def test_an_endpoint_class_handler_for_an_unlisted_method_is_priced_too(core: Core) -> None:
    """``HTTPEndpoint`` dispatches any method to the handler named like it: a ``purge`` handler
    serves PURGE. Priced for every method (``"* /cache"``), a PURGE is challenged like any
    other method, never taken for one the class does not serve (the gate's 405)."""
    from starlette.endpoints import HTTPEndpoint

    class Cache(HTTPEndpoint):
        async def get(self, request: Any) -> Any:
            raise AssertionError("ran unpaid")

        purge = get

    app = Starlette(routes=[Route("/cache", Cache)])
    app.add_middleware(
        PaymentMiddleware, routes={"* /cache": "$0.02"}, pay_to=SELLER, core=core, network=NETWORK
    )
    with TestClient(app) as client:
        assert _amount(client.request("PURGE", "/cache")) == 20_000


@pytest.mark.parametrize(
    "key",
    ["GET,POST /report", "GET|POST /report", "get,post /report", "ANY /report", "all /report"],
)
def test_an_entry_listing_several_methods_fails_at_start_up(core: Core, key: str) -> None:
    """A key naming several methods (as a marker's key is listed: ``GET,POST /report``), or
    "any" the way other routers write it, was taken as one made-up method that no request
    has: the route it meant to sell was free on a router-less app, and a Starlette mount
    answered every method 405. A start-up error now (``*`` is every method)."""
    from fourmica_x402.errors import ConfigurationError

    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, routes={key: "$0.01"})
    with pytest.raises(ConfigurationError, match="one method per entry"), TestClient(app):
        pass  # the ASGI lifespan: the app does not start
    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, routes={"* /report": "$0.01"})
    with TestClient(app) as client:  # what to write instead: every method priced
        assert _amount(client.get("/report")) == _amount(client.post("/report")) == 10_000


def test_an_entry_written_with_a_trailing_slash_prices_the_path_without_it(core: Core) -> None:
    """``"GET /report/"`` priced ``/report/`` only: a router-less app serving ``/report`` too
    ran it free, and a Starlette route ``/report`` failed at start-up as named by no entry.
    An entry matches with or without its trailing slash, either way round
    (docs/architecture.md, "Case and trailing slash")."""

    async def report(request: Any) -> JSONResponse:
        return JSONResponse({"report": True})

    options = {"pay_to": SELLER, "core": core, "network": NETWORK}
    table = {"GET /report/": "$1.00", "GET /items/:id/": "$0.50"}
    routed = Starlette(
        routes=[Route("/report", report), Route("/items/{id}", report)],
        middleware=[Middleware(PaymentMiddleware, routes=table, **options)],
    )
    bare = PaymentMiddleware(_bare, routes=table, **options)
    for app, paths in ((bare, ("/report", "/report/", "/REPORT")), (routed, ("/report",))):
        with TestClient(app) as client:
            for path in paths:
                assert _amount(client.get(path)) == 1_000_000, (app, path)
            assert _amount(client.get("/items/7")) == 500_000


@pytest.mark.parametrize("catch_all", ["GET /files/*", "* /files/*"])
@pytest.mark.parametrize("first", [True, False])
def test_an_exact_entry_outranks_a_catch_all_on_its_bare_prefix(
    core: Core, catch_all: str, first: bool
) -> None:
    """``"GET /files/*"`` also prices the bare ``/files``; counted as more literal text (its
    ``/``), it outranked ``"GET /files"`` there: a router-less app sold ``/files`` at the
    catch-all's $0.01 instead of its own $5, in either table order. The slash of a trailing
    ``/*`` is the wildcard's: the exact entry prices its path."""
    entries = [(catch_all, "$0.01"), ("GET /files", "$5.00")]
    table = dict(entries if first else entries[::-1])
    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, network=NETWORK, routes=table)
    with TestClient(app) as client:
        assert _amount(client.get("/files")) == _amount(client.get("/files/")) == 5_000_000
        assert _amount(client.get("/files/report")) == 10_000
        buyer = TestBuyer.new()  # the catch-all's price never pays the exact entry's path
        core.deposit(buyer.address, 10**7, network=NETWORK)
        name, value = buyer.pay_challenge(core, client.get("/files/x").headers["payment-required"])
        assert client.get("/files", headers={name: value}).status_code == 402
        assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("first", [True, False])
def test_a_catch_all_under_literal_text_outranks_an_entry_of_parameters_only(
    core: Core, first: bool
) -> None:
    """Once the ``/`` of a trailing ``/*`` stopped counting as literal text, the slashes of
    ``"GET /{org}/{repo}/{file}"`` outweighed the ``v1`` of ``"GET /v1/*"``: a router-less app
    sold /v1/models/gpt, the $5 API, at the $0.01 of an entry naming no text at all."""
    entries = [("GET /v1/*", "$5.00"), ("GET /{org}/{repo}/{file}", "$0.01")]
    table = dict(entries if first else entries[::-1])
    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, network=NETWORK, routes=table)
    with TestClient(app) as client:
        assert _amount(client.get("/v1/models/gpt")) == 5_000_000
        assert _amount(client.get("/acme/tools/readme")) == 10_000


@pytest.mark.parametrize(
    ("table", "prices"),
    [
        (
            {"GET /report": "$0.01", "GET /report/": "$5.00"},
            {"/report": 10_000, "/report/": 5_000_000, "/REPORT": 10_000},
        ),
        (
            {"GET /report": "$0.01", "GET /REPORT": "$5.00"},
            {"/report": 10_000, "/REPORT": 5_000_000, "/Report/": 10_000},
        ),
        (
            {"GET /Items/:id/": "$5.00", "GET /items/:id": "$0.01"},
            {"/items/1": 10_000, "/Items/1/": 5_000_000},
        ),
    ],
)
def test_look_alike_entries_price_the_path_each_is_written_as(
    core: Core, table: dict[str, str], prices: dict[str, int]
) -> None:
    """Entries differing only by case or a trailing slash both match either path on a
    router-less app (which may serve them as two routes): the one written as the request's
    path prices it, not whichever sorts or is written first (the seller's $5 route sold at
    $0.01, or the $0.01 one charged $5)."""
    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, network=NETWORK, routes=table)
    with TestClient(app) as client:
        assert {path: _amount(client.get(path)) for path in prices} == prices


@pytest.mark.parametrize(
    "key",
    [
        "GET /report?tier=gold",
        "GET /report?",
        "GET /report?raw",
        "GET /search?q",
        "GET /report#full",
        "GET /my%20report",
        "GET /caf%C3%A9",
    ],
)
def test_an_entry_with_a_query_or_fragment_fails_at_start_up(core: Core, key: str) -> None:
    """The table prices paths as the app sees them: ``"GET /report?tier=gold"`` matched no
    request path (the query is not part of it), nor did ``"GET /my%20report"`` copied from an
    address bar (the path is ``/my report``), so a router-less app served them free. A
    start-up error now, as a typo in a route's path is under a router. A flag query
    (``"GET /report?raw"``) reads as a Django ``re_path``'s own ``?`` would: only an app
    with a router can have such a route, so a router-less one refuses it (plain WSGI too)."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware as WSGIMiddleware
    from werkzeug.test import Client

    from fourmica_x402.errors import ConfigurationError

    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, routes={key: "$0.01"})
    with pytest.raises(ConfigurationError, match="no query"), TestClient(app):
        pass
    try:
        wsgi = WSGIMiddleware(lambda e, s: [], pay_to=SELLER, core=core, routes={key: "$0.01"})
    except ConfigurationError as exc:
        assert "no query" in str(exc)
    else:  # refused when it starts: every request answered so, never served free
        answer = Client(wsgi).get("/report")
        assert answer.status_code == 500 and "configuration_error" in answer.text


def test_a_converter_holding_a_question_mark_is_no_query(core: Core) -> None:
    """An entry written with its route's own converter (a werkzeug regex converter,
    ``<regex("colou?r"):word>``) tells that route from a ``/<name>`` beside it; its ``?`` was
    taken for a query and the app no longer started."""
    from werkzeug.routing import BaseConverter

    class Regex(BaseConverter):
        def __init__(self, url_map: Any, *items: Any) -> None:
            super().__init__(url_map)
            self.regex = items[0]

    table = {'GET /<regex("colou?r"):word>': "$1.00", "GET /:name": "$0.01"}
    app, payments = _flask(core, table)
    app.url_map.converters["regex"] = Regex

    @app.get('/<regex("colou?r"):word>')
    def colour(word: str) -> str:
        return "paid"

    @app.get("/<name>")
    def named(name: str) -> str:
        return "cheap"

    payments.check()
    client = app.test_client()
    assert _amount(client.get("/color")) == 1_000_000
    assert _amount(client.get("/other")) == 10_000


@pytest.mark.parametrize(
    ("table", "prices"),
    [
        (
            {"GET /report": "$0.01", "* /report/": "$5.00"},
            {"/report": 10_000, "/report/": 5_000_000},
        ),
        (
            {"GET /report": "$0.01", "* /REPORT": "$5.00"},
            {"/report": 10_000, "/REPORT": 5_000_000},
        ),
    ],
)
def test_look_alike_entries_of_another_method_price_the_path_each_is_written_as(
    core: Core, table: dict[str, str], prices: dict[str, int]
) -> None:
    """Look-alikes told apart only when they named the same method: a '* /report/' at $5 and a
    'GET /report' at $0.01 both match GET /report, and the more literal catch-all charged the
    buyer $5 for the $0.01 view (a 'GET /report' before '* /REPORT' sold /REPORT at $0.01)."""
    app = PaymentMiddleware(_bare, pay_to=SELLER, core=core, network=NETWORK, routes=table)
    with TestClient(app) as client:
        assert {path: _amount(client.get(path)) for path in prices} == prices


def test_an_entry_of_several_wildcards_reads_a_long_path_without_backtracking(core: Core) -> None:
    """``*`` matches anything, so ``"GET /orgs/*/repos/*/files/*/raw"`` was three ``.*`` that
    a path repeating ``/repos/`` and ``/files/`` made the matcher try at every position
    together: O(n³) for an unpaid request of a few KiB, a matcher busy for minutes. The text
    between two ``*`` is now searched for once: at most one wildcard of an entry backtracks
    (the one before its last text), whatever the path."""
    from fourmica_x402.templates import compile_pattern, path_matcher

    key = "/orgs/*/repos/*/files/*/raw"
    for regex in (compile_pattern(key), path_matcher(key), path_matcher("/o/{a}/r/{b}/f/{c}")):
        assert regex.pattern.count(".*") - regex.pattern.count("(?>.*?") == 1, regex.pattern
        assert regex.pattern.count("(?>.*?") == 2, regex.pattern
    table = {f"GET {key}": "$1.00", "GET /orgs/*": "$0.01"}
    options = {"pay_to": SELLER, "core": core, "network": NETWORK, "routes": table}
    with TestClient(PaymentMiddleware(_bare, **options)) as client:
        assert _amount(client.get("/orgs/a/repos/b/files/c/raw")) == 10**6
        assert _amount(client.get("/orgs/a/repos/b/x/files/c/d/raw/")) == 10**6
        assert _amount(client.get("/ORGS/a/repos/b/files/c/RAW/")) == 10**6
        assert _amount(client.get("/orgs/a/repos/b/files/c/raw/x")) == 10_000
        assert _amount(client.get("/orgs/a/files/b/repos/c/raw")) == 10_000
        long = "/orgs" + "/repos/files" * 300 + "/x"  # answered at once, by the cheaper entry
        assert _amount(client.get(long)) == 10_000
