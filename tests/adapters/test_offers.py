"""A route with several offers: a payment for any of them is charged on that offer's terms, in
either x402 version (docs/protocol.md, "Paying")."""

from __future__ import annotations

from typing import Any

import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

FIRST, SECOND = TestBuyer.new().address, TestBuyer.new().address


def _app(core: Core) -> Any:
    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    offers = [
        {"scheme": "4mica-credit", "price": "$0.01", "network": NETWORK, "payTo": FIRST},
        {"scheme": "4mica-credit", "price": "$0.02", "network": NETWORK, "payTo": SECOND},
    ]
    return PaymentMiddleware(
        Starlette(routes=[Route("/premium", premium)]),
        pay_to=FIRST,
        core=core,
        network=NETWORK,
        routes={"GET /premium": {"accepts": offers}},
        delivery_policy=False,  # G-v1 guarantees: what an x402 v1 buyer signs
    )


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("index", "amount"), [(0, 10_000), (1, 20_000)], ids=["first", "second"])
def test_each_offer_is_paid_on_its_own_terms(
    audited_core: Core, version: int, index: int, amount: int
) -> None:
    """A v1 payment names no offer: it was checked against the first offer with its asset, so
    paying the second (another payTo, another amount) was refused as a mismatch."""
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    with TestClient(_app(audited_core)) as client:
        offer = decode_payment_required(client.get("/premium").headers["payment-required"])
        chosen = offer.accepts[index]
        body = {
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": chosen.to_dict(),
        }
        tab = client.post(chosen.extra["tabEndpoint"], json=body).json()
        name, value = payment_header(buyer, chosen, tab, version=version)
        answer = client.get("/premium", headers={name: value})
        assert answer.status_code == 200, answer.text
        # The same payment again is a replay whichever offer it was for.
        assert client.get("/premium", headers={name: value}).status_code == 402
    (guarantee,) = audited_core.guarantees(address=buyer.address)
    assert (guarantee.recipient_address, guarantee.amount) == ((FIRST, SECOND)[index], amount)
    assert audited_core.position(buyer.address, network=NETWORK).locked == amount


def test_the_apps_max_timeout_seconds_is_what_routes_naming_none_advertise(
    audited_core: Core,
) -> None:
    """``PaymentConfig.max_timeout_seconds`` was read by nothing: every challenge said 300
    whatever the seller set (and 0 or "soon" passed). A route or offer naming none now
    advertises the app's; one naming its own keeps it; a bad one fails at start-up."""
    from fourmica_x402.config import PaymentConfig
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.routes import RouteConfig

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    routes = {
        "GET /a": "$0.01",
        "GET /b": RouteConfig(price="$0.01", max_timeout_seconds=600),
        "GET /c": {"accepts": [{"price": "$0.01"}, {"price": "$0.02", "maxTimeoutSeconds": 30}]},
    }
    app = PaymentMiddleware(
        Starlette(routes=[Route(path, premium) for path in ("/a", "/b", "/c")]),
        pay_to=FIRST,
        core=audited_core,
        network=NETWORK,
        routes=routes,
        max_timeout_seconds=60,
    )
    with TestClient(app) as client:
        said = {
            path: [
                o.max_timeout_seconds
                for o in decode_payment_required(
                    client.get(path).headers["payment-required"]
                ).accepts
            ]
            for path in ("/a", "/b", "/c")
        }
        assert said == {"/a": [60], "/b": [600], "/c": [60, 30]}
        buyer = TestBuyer.new()  # a valid payment of those terms is taken
        audited_core.deposit(buyer.address, 10**6, network=NETWORK)
        name, value = buyer.pay_challenge(
            audited_core, client.get("/a").headers["payment-required"]
        )
        assert client.get("/a", headers={name: value}).text == "paid"
    for bad in (0, 86_401, "60", 1.5, True):
        with pytest.raises(ConfigurationError, match="max_timeout_seconds"):
            PaymentConfig(pay_to=FIRST, max_timeout_seconds=bad)  # type: ignore[arg-type]


def test_the_official_accepts_form_keeps_the_routes_other_terms_or_refuses_them() -> None:
    """``{"accepts": [...], ...}`` kept only a description, MIME type, resource and extensions:
    a ``min_amount``, a ``stage`` (staged work's order), units or a cap written beside the
    offers were dropped without a word (the route sold below its minimum, a later stage
    without the earlier ones). They apply now, as in the ``{"price": ...}`` form; the
    official package's keys we do not use (``tags``…) are still passed over."""
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.jobs import Stage
    from fourmica_x402.routes import RouteTable

    offers = [{"price": "$0.02", "payTo": FIRST}, {"price": "$0.03", "payTo": SECOND}]
    stage = Stage("report", 2, of=3)
    table = RouteTable(
        {
            "POST /r": {"accepts": offers, "stage": stage, "min_amount": "$0.02"},
            "GET /d": {"accepts": offers[0], "mimeType": "text/csv", "description": "data"},
        },
        network=NETWORK,
        pay_to=FIRST,
    )
    staged, plain = table.routes
    assert staged.config.stage == stage and staged.terms is not None
    assert [t.minimum for t in staged.terms] == [20_000, 20_000]
    assert (plain.config.mime_type, plain.config.description) == ("text/csv", "data")
    with pytest.raises(ConfigurationError, match="below min_amount"):
        RouteTable(
            {"POST /r": {"accepts": offers, "min_amount": "$1"}}, network=NETWORK, pay_to=FIRST
        )
    official = {"accepts": offers, "tags": ["data"], "serviceName": "s", "hookTimeoutSeconds": 5}
    assert RouteTable({"GET /o": official}, network=NETWORK, pay_to=FIRST).routes[0].terms is None


def test_the_official_route_dict_reads_max_timeout_seconds_as_the_official_package_does(
    audited_core: Core,
) -> None:
    """The official package reads ``maxTimeoutSeconds`` as a whole number written as text or
    as a float ("60", 60.0), and so did this table: such a route dict stopped starting. A whole
    number so written is taken; a fraction still fails at start-up."""
    from fourmica_x402.errors import ConfigurationError

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    def app(timeout: Any) -> Any:
        offer = {"scheme": "4mica-credit", "price": "$0.01", "network": NETWORK, "payTo": FIRST}
        routes = {"GET /premium": {"accepts": {**offer, "maxTimeoutSeconds": timeout}}}
        return PaymentMiddleware(
            Starlette(routes=[Route("/premium", premium)]),
            pay_to=FIRST,
            core=audited_core,
            network=NETWORK,
            routes=routes,
        )

    for timeout in ("60", 60.0, " 60\n", "60.0"):
        with TestClient(app(timeout)) as client:
            challenge = client.get("/premium").headers["payment-required"]
            assert [o.max_timeout_seconds for o in decode_payment_required(challenge).accepts] == [
                60
            ], timeout
    for bad in ("60.5", 60.5, "soon", True, 0):
        with pytest.raises(ConfigurationError, match="maxTimeoutSeconds"), TestClient(app(bad)):
            pass


def test_a_routes_max_timeout_seconds_is_what_its_offers_naming_none_advertise(
    audited_core: Core,
) -> None:
    """A ``RouteConfig`` naming its ``max_timeout_seconds`` beside several offers: the offers
    told buyers the app's 300 seconds (docs/operations.md says the route's own applies), an
    offer naming its own keeps it."""
    from fourmica_x402.routes import Offer, RouteConfig

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    offers = (
        Offer(price="$0.01", network=NETWORK, pay_to=FIRST),
        Offer(price="$0.02", network=NETWORK, pay_to=SECOND, max_timeout_seconds=30),
    )
    app = PaymentMiddleware(
        Starlette(routes=[Route("/premium", premium)]),
        pay_to=FIRST,
        core=audited_core,
        network=NETWORK,
        routes={"GET /premium": RouteConfig(accepts=offers, max_timeout_seconds=600)},
    )
    with TestClient(app) as client:
        challenge = decode_payment_required(client.get("/premium").headers["payment-required"])
        assert [o.max_timeout_seconds for o in challenge.accepts] == [600, 30]


def test_an_accepts_entry_with_a_key_it_does_not_know_fails_at_start_up(
    audited_core: Core,
) -> None:
    """A misspelt key of an accepts entry (``"netwrok": "eip155:8453"``, ``"payto"``,
    ``"assset"``) was passed over: the offer silently took the app's default instead, a
    route meant for Base mainnet USDC sold for Base Sepolia test tokens, and a buyer's
    test-token payment ran it. It fails at start-up now, naming the key."""
    from fourmica_x402.errors import ConfigurationError

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    def app(offer: dict[str, Any]) -> Any:
        return PaymentMiddleware(
            Starlette(routes=[Route("/premium", premium)]),
            pay_to=FIRST,
            core=audited_core,
            network=NETWORK,
            routes={"GET /premium": {"accepts": [offer]}},
        )

    offer = {"scheme": "4mica-credit", "price": "$0.01", "payTo": SECOND}
    for typo in ({"netwrok": "eip155:8453"}, {"payto": SECOND}, {"Asset": FIRST}):
        with (
            pytest.raises(ConfigurationError, match=next(iter(typo))),
            TestClient(app(typo | offer)),
        ):
            pass
    # every key the official package or this one reads still works (pay_to, asset, extra…)
    spelled = {
        "scheme": "4mica-credit",
        "price": "$0.01",
        "network": NETWORK,
        "pay_to": SECOND,
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "max_timeout_seconds": 60,
        "extra": {"note": "x"},
    }
    with TestClient(app(spelled)) as client:
        (said,) = decode_payment_required(
            client.get("/premium").headers["payment-required"]
        ).accepts
    assert (said.pay_to, said.max_timeout_seconds, said.extra["note"]) == (SECOND, 60, "x")


def test_a_route_term_beside_accepts_in_camel_case_fails_at_start_up(audited_core: Core) -> None:
    """Beside ``accepts`` the route dict takes the route's terms as ``RouteConfig`` names them
    (docs/protocol.md, "Paying"), and passes the official package's other keys over. Written
    in the dict's own camelCase (``"minAmount"``, as the discovery listing spells it), a term
    was passed over as one of those: the route started with no minimum, no unit cap, no
    validation policy, and sold a 1-unit request at $0.01 where the seller asked $0.05."""
    from fourmica_x402.errors import ConfigurationError

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    def app(terms: dict[str, Any]) -> Any:
        route = {"accepts": [{"price": "$0.01"}], "units": lambda request: 1, **terms}
        return PaymentMiddleware(
            Starlette(routes=[Route("/premium", premium)]),
            pay_to=FIRST,
            core=audited_core,
            network=NETWORK,
            routes={"GET /premium": route},
        )

    for camel in ({"minAmount": "$0.05"}, {"maxUnits": 10}, {"validationPolicy": None}):
        with pytest.raises(ConfigurationError, match=next(iter(camel))), TestClient(app(camel)):
            pass
    with TestClient(app({"min_amount": "$0.05", "tags": ["data"]})) as client:  # as named
        said = decode_payment_required(client.get("/premium").headers["payment-required"]).accepts[
            0
        ]
    assert said.amount == "50000"


def test_accepts_of_a_route_config_or_a_marker_holding_no_offer_fails_clearly() -> None:
    """``RouteConfig(accepts=[{"price": …}])`` or ``Paid(accepts=…)`` with the official dict's
    entries (or one dict, not a list) raised ``AttributeError: 'dict' object has no attribute
    'price'`` from deep inside the route table at start-up, naming neither the route nor the
    fix. It is a ConfigurationError saying what ``accepts`` takes."""
    from fourmica_x402.adapters.fastapi import Paid

    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.routes import Offer, RouteConfig, RouteTable

    entry = {"scheme": "4mica-credit", "price": "$0.01", "network": NETWORK, "payTo": SECOND}
    for accepts in ([entry], entry, "$0.01"):
        with pytest.raises(ConfigurationError, match="Offer"):
            RouteTable(
                {"GET /a": RouteConfig(accepts=accepts)},  # type: ignore[arg-type]
                network=NETWORK,
                pay_to=FIRST,
            )
        with pytest.raises(ConfigurationError, match="Offer"):
            Paid(accepts=accepts)
    offers: Any = [Offer(price="$0.01", network=NETWORK, pay_to=SECOND)]  # a list: kept
    table = RouteTable({"GET /a": RouteConfig(accepts=offers)}, network=NETWORK, pay_to=FIRST)
    assert [o.amount.amount for o in table.routes[0].offers if o.amount] == [10_000]


def test_an_asset_that_is_no_address_fails_at_start_up_whatever_the_price(
    audited_core: Core,
) -> None:
    """``asset="USDC"`` (the symbol, not the token's address) failed at start-up only beside a
    static ``$`` price: a route priced per request started, and every request was then
    answered 500 ``pricing_failed``; beside an explicit amount it was passed over."""
    from fourmica_x402.errors import ConfigurationError
    from fourmica_x402.networks import TokenAmount
    from fourmica_x402.routes import RouteConfig

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    def app(route: Any, **options: Any) -> Any:
        return PaymentMiddleware(
            Starlette(routes=[Route("/premium", premium)]),
            pay_to=FIRST,
            core=audited_core,
            network=NETWORK,
            routes={"GET /premium": route},
            **options,
        )

    usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    for route, options in (
        (RouteConfig(price=lambda request: "$0.01", asset="USDC"), {}),
        (RouteConfig(price=lambda request: "$0.01"), {"asset": "USDC"}),
        (RouteConfig(price=TokenAmount(10_000, usdc), asset="USDC"), {}),
    ):
        with (
            pytest.raises(ConfigurationError, match="asset: not an address: 'USDC'"),
            TestClient(app(route, **options)),
        ):
            pass
    with TestClient(app(RouteConfig(price=lambda request: "$0.01", asset=usdc.lower()))) as c:
        assert c.get("/premium").status_code == 402


def test_the_route_dicts_max_timeout_seconds_beside_accepts_is_what_its_offers_advertise(
    audited_core: Core,
) -> None:
    """``{"accepts": [...], "max_timeout_seconds": 600}``: docs/protocol.md says that dict takes
    the route's other terms as ``RouteConfig`` names them, but this one was dropped (it was
    taken for an offer's own) and every offer told buyers the app's 300 seconds, as
    ``RouteConfig(accepts=..., max_timeout_seconds=600)`` no longer does."""

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    offers = [{"price": "$0.01"}, {"price": "$0.02", "maxTimeoutSeconds": 30}]
    app = PaymentMiddleware(
        Starlette(routes=[Route("/premium", premium)]),
        pay_to=FIRST,
        core=audited_core,
        network=NETWORK,
        routes={"GET /premium": {"accepts": offers, "max_timeout_seconds": 600}},
    )
    with TestClient(app) as client:
        challenge = decode_payment_required(client.get("/premium").headers["payment-required"])
    assert [o.max_timeout_seconds for o in challenge.accepts] == [600, 30]


@pytest.mark.parametrize(
    "beside",
    [{"network": "eip155:8453"}, {"payTo": SECOND}, {"pay_to": SECOND}, {"asset": FIRST}],
    ids=["network", "payTo", "pay_to", "asset"],
)
def test_an_offer_term_beside_accepts_fails_at_start_up(
    audited_core: Core, beside: dict[str, Any]
) -> None:
    """``{"network": "eip155:8453", "accepts": [{"price": "$0.01"}]}``: the route's
    ``max_timeout_seconds`` applies to its offers, but a ``network``, ``payTo`` or ``asset``
    written there was dropped silently, each offer taking the app's instead: a route meant for
    Base mainnet sold for Base Sepolia test tokens, paid to the app's payTo, not the route's.
    It fails at start-up now, naming the key (each offer names its own)."""
    from fourmica_x402.errors import ConfigurationError

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    def app() -> Any:
        return PaymentMiddleware(
            Starlette(routes=[Route("/premium", premium)]),
            pay_to=FIRST,
            core=audited_core,
            network=NETWORK,
            routes={"GET /premium": {**beside, "accepts": [{"price": "$0.01"}]}},
        )

    with pytest.raises(ConfigurationError, match=next(iter(beside))), TestClient(app()):
        pass
