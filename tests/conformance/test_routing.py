"""The gate prices the route the framework resolved, and charges only for a delivered 2xx.

Every test runs against all six adapters with valid payments (an attacker holding a good
payment, not a broken one): path variants, methods, HEAD, converters, WebSockets, caching
headers and start-up checks. Apps with a router (all but plain WSGI) price the endpoint their
router resolves; plain WSGI prices its raw path (docs/architecture.md, "Which route is priced").
"""

from __future__ import annotations

from typing import Any

import pytest

from fourmica_x402.core import Core
from fourmica_x402.gate import GRANT

#: Adapters whose framework has a per-handler marker (``@paid``, ``Paid``).
MARKERS = {"fastapi", "flask", "django_sync", "django_async"}


def routed(seller: Any) -> bool:
    return seller.kind != "wsgi"


def guarantees(core: Core) -> int:
    return len(core.guarantees())


# -- path variants and redirects ---------------------------------------------------------------


def test_a_trailing_slash_variant_never_settles_and_the_payment_stays_usable(
    seller: Any, kit: Any
) -> None:
    """Starlette redirected /premium/ (307) after settling it, and the buyer paid twice;
    Flask and Django voided it after a 404, using up the buyer's payment for nothing."""
    buyer = kit.funded(seller)
    headers = kit.header(seller, buyer, "/premium")
    variant = seller.request("GET", "/premium/", headers=headers)
    assert not 200 <= variant.status < 300 and seller.calls["/premium"] == 0
    assert kit.locked(seller, buyer) == 0
    if routed(seller):  # the router never served it: nothing was settled, the payment is intact
        assert variant.status in (307, 308, 404), variant.status
        assert guarantees(seller.core) == 0
        resp = seller.request("GET", "/premium", headers=headers)
        assert resp.status == 200 and resp.json()["payer"] == buyer.address
        assert seller.calls["/premium"] == 1 and kit.locked(seller, buyer) == 10_000
    else:  # a raw path: priced, and voided when the app did not serve it (not charged)
        assert variant.status == 404


def test_an_unpaid_path_variant_gets_the_frameworks_answer_not_a_challenge(
    seller: Any, kit: Any
) -> None:
    resp = seller.request("GET", "/premium/")
    if routed(seller):
        assert resp.status in (307, 308, 404) and "payment-required" not in resp.headers
    else:
        assert resp.status == 402
    if seller.kind == "starlette" or seller.kind == "fastapi":  # redirect_slashes
        assert resp.status == 307 and resp.headers["location"].endswith("/premium")


# -- methods -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_a_priced_handler_prices_every_method_it_serves(seller: Any, kit: Any, method: str) -> None:
    """Django's @paid priced GET/HEAD only: POST/PUT/DELETE/PATCH ran the view unpaid."""
    body = {"x": 1} if method in ("POST", "PUT", "PATCH") else None
    unpaid = seller.request(method, "/multi", json=body)
    assert unpaid.status == 402 and seller.calls["/multi"] == 0
    buyer = kit.funded(seller)
    resp = kit.pay(seller, buyer, "/multi", method)
    assert resp.status == 200, resp.text
    assert resp.json() == {"method": method, "payer": buyer.address}
    assert seller.calls["/multi"] == 1 and kit.locked(seller, buyer) == 10_000


def test_a_method_the_marker_does_not_price_is_405_never_run_unpaid(seller: Any, kit: Any) -> None:
    resp = seller.request("POST", "/limited", json={"x": 1})
    if seller.kind in MARKERS:
        assert resp.status == 405 and seller.calls["/limited"] == 0
    else:  # priced by the table as "GET /limited": the seller left POST free
        assert resp.status == 200 and resp.json() == {"method": "POST"}
    assert seller.request("GET", "/limited").status == 402


# -- converters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        ("/files/a/b/c.txt", "file", "a/b/c.txt"),  # the framework's path converter
        ("/docs/guides/intro", "doc", "guides/intro"),  # a custom converter matching '/'
        ("/numbers/7", "n", 7),  # an int converter
    ],
)
def test_routes_with_converters_are_priced(
    seller: Any, kit: Any, path: str, key: str, value: Any
) -> None:
    """Flask ran a custom-converter view unpaid; FastAPI answered 500 on every converter."""
    assert seller.request("GET", path).status == 402
    assert sum(seller.calls.values()) == 0
    buyer = kit.funded(seller)
    resp = kit.pay(seller, buyer, path)
    assert resp.status == 200, resp.text
    assert resp.json() == {key: value, "payer": buyer.address}
    assert kit.locked(seller, buyer) == 10_000


def test_a_path_the_converter_refuses_is_the_frameworks_404(seller: Any) -> None:
    resp = seller.request("GET", "/numbers/seven")
    if routed(seller):
        assert resp.status == 404 and "payment-required" not in resp.headers
    assert sum(seller.calls.values()) == 0


@pytest.mark.parametrize("kind", ["starlette", "fastapi", "flask", "django_sync", "django_async"])
def test_a_path_the_router_cannot_read_is_a_4xx_never_run_nor_charged(
    seller: Any, kit: Any
) -> None:
    """Starlette's int convertor raises on a segment past Python's 4 300-digit limit: its
    router, run by the gate to price the request, answered 500. Now a 400 with a code."""
    buyer = kit.funded(seller)
    huge = "/numbers/" + "9" * 5000
    paid_for_seven = kit.header(seller, buyer, "/numbers/7", "GET")
    for headers in (None, paid_for_seven):
        resp = seller.request("GET", huge, headers=headers)
        assert 400 <= resp.status < 500, resp.status
        if seller.kind in ("starlette", "fastapi"):
            assert resp.status == 400 and resp.json()["error"] == "unroutable_path"
    assert sum(seller.calls.values()) == 0
    assert kit.locked(seller, buyer) == 0


# -- HEAD --------------------------------------------------------------------------------------


def test_head_gets_the_challenge_but_a_payment_sent_with_head_is_not_settled(
    seller: Any, kit: Any
) -> None:
    unpaid = seller.request("HEAD", "/premium")
    assert unpaid.status == 402 and "payment-required" in unpaid.headers
    buyer = kit.funded(seller)
    headers = kit.header(seller, buyer, "/premium")
    head = seller.request("HEAD", "/premium", headers=headers)
    assert kit.error_of(head) == "head_not_charged"
    assert seller.calls["/premium"] == 0 and kit.locked(seller, buyer) == 0
    assert guarantees(seller.core) == 0
    resp = seller.request("GET", "/premium", headers=headers)  # the same payment, on the GET
    assert resp.status == 200 and resp.json()["payer"] == buyer.address


# -- caching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/premium", "private, no-store"),
        ("/cached", "private, no-store"),  # the handler's "public, max-age=600" is replaced
        ("/stored", "no-store, max-age=0"),  # already forbids storing: kept as it is
    ],
)
def test_paid_responses_are_never_stored_by_shared_caches(
    seller: Any, kit: Any, path: str, expected: str
) -> None:
    assert seller.request("GET", path).headers["cache-control"] == "no-store"  # the 402
    resp = kit.pay(seller, kit.funded(seller), path)
    assert resp.status == 200
    assert resp.headers["cache-control"] == expected
    # nginx's proxy_cache stores an answer for its X-Accel-Expires whatever Cache-Control says
    assert "x-accel-expires" not in resp.headers  # (the handler's, on /cached and /stored)


@pytest.mark.parametrize(
    ("path", "expected"), [("/cached", "private, no-store"), ("/stored", "no-store, max-age=0")]
)
def test_a_granted_answer_is_never_stored_by_shared_caches(
    make_seller: Any, path: str, expected: str
) -> None:
    """``GRANT`` serves a priced route's content free to one client (a subscriber): its answer
    kept the handler's ``Cache-Control: public, max-age=600`` and the headers only CDNs read,
    so a shared cache stored the paid content and handed it to every unpaid client after."""
    granted = lambda request, route: GRANT if request.header("x-key") == "sub" else None  # noqa: E731
    seller = make_seller(on_protected_request=granted)
    resp = seller.request("GET", path, headers={"x-key": "sub"})
    assert resp.status == 200 and resp.headers["cache-control"] == expected
    assert "x-accel-expires" not in resp.headers and guarantees(seller.core) == 0


def test_free_responses_keep_their_own_caching(seller: Any) -> None:
    resp = seller.request("GET", "/free")
    assert resp.status == 200 and "no-store" not in resp.headers.get("cache-control", "")


# -- start-up checks ---------------------------------------------------------------------------


def test_a_table_entry_naming_no_route_fails_at_start_up(
    make_seller: Any, kind: str, base_routes: dict[str, Any]
) -> None:
    routes = {**base_routes, "GET /premiun": "$0.01"}  # a typo: it would leave nothing priced
    if kind == "wsgi":  # no router to check against: the raw path is priced as written
        seller = make_seller(routes=routes)
        assert seller.request("GET", "/premiun").status == 402
        return
    try:
        seller = make_seller(routes=routes)
    except Exception as exc:  # refused while the app was built or started
        assert "/premiun" in str(exc), exc
        return
    resp = seller.request("GET", "/free")  # refused when it first served, if not earlier
    assert resp.status == 500 and resp.json()["error"] == "configuration_error"
    assert "/premiun" in resp.json()["message"]
    assert seller.calls["/free"] == 0


# -- WebSockets (ASGI only: WSGI has none) -----------------------------------------------------


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
def test_a_websocket_on_a_priced_route_is_refused(seller: Any) -> None:
    from starlette.websockets import WebSocketDisconnect

    with (
        pytest.raises(WebSocketDisconnect) as refused,
        seller.client._client.websocket_connect("/ws") as ws,
    ):
        ws.receive_text()
    assert refused.value.code == 1008
    assert seller.calls["/ws"] == 0


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
def test_a_bad_database_fails_the_asgi_lifespan_start_up(
    make_seller: Any, kind: str, tmp_path: Any
) -> None:
    """The Starlette example started ("Application startup complete") and then answered 500
    to every request, /free too: the server must refuse to start instead."""
    import asyncio

    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fourmica_x402.errors import FourmicaError

    bad = f"sqlite:///{tmp_path}/no/such/dir/core.db"
    # FastAPI builds the gate in FourmicaX402(app, …), Starlette when its test client starts
    # the app (lifespan): either way the app is refused before it serves anything.
    with pytest.raises(FourmicaError, match="does not exist"):
        make_seller(core=bad)
    if kind == "fastapi":
        return
    options = {"pay_to": "0x" + "11" * 20, "routes": {"GET /free": "$0.01"}, "core": bad}
    app = Starlette(
        routes=[Route("/free", lambda request: PlainTextResponse("free"))],
        middleware=[Middleware(PaymentMiddleware, **options)],
    )
    sent: list[dict[str, Any]] = []

    async def lifespan() -> None:
        messages = [{"type": "lifespan.startup"}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    with pytest.raises(FourmicaError, match="does not exist"):  # as Starlette's router raises
        asyncio.run(lifespan())
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "does not exist" in sent[0]["message"]
    resp = TestClient(app).get("/free")  # a server that started anyway still fails closed
    assert resp.status_code == 500 and resp.json()["error"] == "configuration_error"


def test_a_markers_own_pay_to_takes_tabs_from_start_up(tmp_path: Any) -> None:
    """A ``Paid(pay_to=…)`` address is not in the route table: the tab endpoint must know it
    from start-up (another worker may have served the challenge)."""
    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
    from starlette.testclient import TestClient

    from fourmica_x402.testing import NETWORK, TestBuyer

    other = TestBuyer.new().address
    app = FastAPI()
    FourmicaX402(
        app, pay_to=TestBuyer.new().address, network=NETWORK, core=f"sqlite:///{tmp_path}/c.db"
    )

    @app.get("/premium")
    def premium(p: Any = Paid("$0.01", pay_to=other)) -> dict[str, Any]:  # noqa: B008
        return {"payer": p.payer}

    with TestClient(app) as client:  # lifespan: the app starts; no challenge served yet
        requirements = {
            "scheme": "4mica-credit",
            "network": NETWORK,
            "amount": "10000",
            "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
            "payTo": other,
            "maxTimeoutSeconds": 300,
            "extra": {},
        }
        body = {"x402Version": 2, "userAddress": TestBuyer.new().address}
        resp = client.post("/x402/tab", json={**body, "paymentRequirements": requirements})
        assert resp.status_code == 200, resp.text
        assert resp.json()["recipientAddress"] == other


def test_the_zero_address_as_pay_to_fails_at_start_up(tmp_path: Any) -> None:
    """``pay_to="0x000…0"`` (a template's placeholder) started: every challenge offered it,
    and every buyer was then refused at the tab endpoint (400 ``invalid_recipient_address``:
    no tab is opened to the zero address), a mistake found per request, not at start-up
    (README.md, "Selling")."""
    from fastapi import FastAPI
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from fourmica_x402.adapters.fastapi import Paid
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fourmica_x402 import PaymentConfig, RouteConfig
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.testing import NETWORK, TestBuyer

    zero, seller = "0x" + "0" * 40, TestBuyer.new().address
    core = f"sqlite:///{tmp_path}/c.db"
    with pytest.raises(ConfigurationError, match="zero address"):
        PaymentConfig(pay_to=zero, routes={"GET /p": "$0.01"}, core=core)
    official = {"accepts": {"scheme": "4mica-credit", "price": "$0.01", "network": NETWORK}}
    for route in (
        RouteConfig(price="$0.01", pay_to=zero),
        {"accepts": {**official["accepts"], "payTo": zero}},
    ):
        config = PaymentConfig(pay_to=seller, routes={"GET /p": route}, core=core)
        app = Starlette(routes=[Route("/p", lambda request: PlainTextResponse("p"))])
        app.add_middleware(PaymentMiddleware, config=config)
        with pytest.raises(ConfigurationError, match="zero address"), TestClient(app):
            pass
    with pytest.raises(ConfigurationError, match="zero address"):
        app = FastAPI()

        @app.get("/p")
        def p(payment: Any = Paid("$0.01", pay_to=zero)) -> str:  # noqa: B008
            return "p"

    # one computed per request: that request fails (500 pricing_failed), no challenge offers it
    route = RouteConfig(price="$0.01", pay_to=lambda r: zero)
    config = PaymentConfig(pay_to=seller, routes={"GET /p": route}, core=core)
    app = Starlette(routes=[Route("/p", lambda request: PlainTextResponse("p"))])
    app.add_middleware(PaymentMiddleware, config=config)
    with TestClient(app) as client:
        resp = client.get("/p")
        assert resp.status_code == 500 and resp.json()["error"] == "pricing_failed"


def test_a_public_url_every_challenge_would_carry_broken_or_with_a_secret_fails_at_start_up(
    tmp_path: Any,
) -> None:
    """``public_url`` starts every URL a challenge and the discovery listing hand to anyone
    (the resource, ``tabEndpoint``, ``rpcUrl``): one with ``user:password@`` published the
    password to every buyer, and a query or fragment gave ``https://api.example/?v=2/x402/tab``,
    which reaches no tab endpoint, so every buyer failed. A path prefix is kept."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.testing import TestBuyer
    from fourmica_x402.wire import decode_payment_required

    seller, core = TestBuyer.new().address, f"sqlite:///{tmp_path}/c.db"
    for bad in (
        "https://shop:hunter2@api.example.com",
        "https://api.example.com/?v=2",
        "https://api.example.com#top",
        "https://api.example.com:99999",
    ):
        with pytest.raises(ConfigurationError, match="public_url") as info:
            PaymentConfig(pay_to=seller, routes={"GET /p": "$0.01"}, core=core, public_url=bad)
        assert "hunter2" not in str(info.value)
    config = PaymentConfig(
        pay_to=seller, routes={"GET /p": "$0.01"}, core=core, public_url="https://api.example/v1/"
    )
    app = Starlette(routes=[Route("/p", lambda request: PlainTextResponse("p"))])
    app.add_middleware(PaymentMiddleware, config=config)
    with TestClient(app) as client:
        challenge = decode_payment_required(client.get("/p").headers["payment-required"])
    assert challenge.accepts[0].extra["tabEndpoint"] == "https://api.example/v1/x402/tab"


def test_a_tab_endpoint_no_buyer_could_reach_fails_at_start_up(tmp_path: Any) -> None:
    """``tab_endpoint`` is advertised verbatim in every challenge: one with no host
    (``f"https://{host}/x402/tab"`` with an empty ``host``) or a port past 65535 started, and
    every buyer then failed to open a tab. A query is kept."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.testing import TestBuyer
    from fourmica_x402.wire import decode_payment_required

    seller, core = TestBuyer.new().address, f"sqlite:///{tmp_path}/c.db"
    for bad in ("https:///x402/tab", "https://api.example.com:70000/x402/tab"):
        with pytest.raises(ConfigurationError, match="tab_endpoint"):
            PaymentConfig(pay_to=seller, routes={"GET /p": "$0.01"}, core=core, tab_endpoint=bad)
    good = "https://api.example.com/pay/tab?v=2"
    config = PaymentConfig(pay_to=seller, routes={"GET /p": "$0.01"}, core=core, tab_endpoint=good)
    app = Starlette(routes=[Route("/p", lambda request: PlainTextResponse("p"))])
    app.add_middleware(PaymentMiddleware, config=config)
    with TestClient(app) as client:
        challenge = decode_payment_required(client.get("/p").headers["payment-required"])
    assert challenge.accepts[0].extra["tabEndpoint"] == good


def test_a_tab_endpoint_with_credentials_fails_at_start_up(tmp_path: Any) -> None:
    """``tab_endpoint`` is handed verbatim to every caller of a priced route (each challenge's
    ``extra.tabEndpoint``), as ``public_url`` is: one written with ``user:password@`` (a tab
    endpoint behind a proxy's basic auth) started, and published the password to anyone who
    asked for a priced route, unpaid."""
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.testing import TestBuyer

    seller, core = TestBuyer.new().address, f"sqlite:///{tmp_path}/c.db"
    for bad in ("https://shop:hunter2@api.example.com/x402/tab", "https://TOKEN@api.example/t"):
        with pytest.raises(
            ConfigurationError, match=r"tab_endpoint .* carries credentials"
        ) as info:
            PaymentConfig(pay_to=seller, routes={"GET /p": "$0.01"}, core=core, tab_endpoint=bad)
        assert "hunter2" not in str(info.value) and "TOKEN" not in str(info.value)
