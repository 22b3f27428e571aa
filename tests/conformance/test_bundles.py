"""Minimums, bundles and prepaid caps (docs/protocol.md, "Minimums, bundles and prepaid caps").

The behaviour runs on every adapter (``make_seller``: a real Core on a SQLite file, each
framework's own test client): a bundle is charged its units times the unit price, shown in the
challenge before the buyer signs; a count the route refuses is a 400 ``invalid_units`` that
charges nothing; a retry that counts other units than its payment is refused; a cap is what a
prepaid route charges. Handlers reading ``units``/``cap`` off their payment are checked in
Starlette, FastAPI (``Paid``) and Flask (``@paid``) apps paid by the buyer client. The start-up
checks of the new route fields are plain unit tests at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from fourmica_x402.client import PaymentTransport, discover
from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError, Reason
from fourmica_x402.gate import Payment, RequestView
from fourmica_x402.networks import TokenAmount
from fourmica_x402.routes import RouteConfig, RouteTable, validate_marker
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import PaymentRequired, decode_payment_required

harness = sys.modules["conformance_buyers"]  # loaded by conftest.py
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  # Base Sepolia USDC (6 decimals)
UNIT = 10_000  # "$0.01" in atomic units
ITEMS = "GET /items/:item_id"  # priced by config in every conformance app; ?count= picks the size


def hundreds(request: RequestView) -> int:
    """Units of 100 records in ``?count=N`` (rounded up); a missing or non-numeric count
    raises KeyError or ValueError, which the gate answers 400 ``invalid_units``."""
    count = int(parse_qs(request.query)["count"][0])
    return -(-count // 100)


#: The bundled route of most tests: $0.01 per 100 records, at most 10 units per request.
BUNDLE = {
    "price": "$0.01",
    "units": hundreds,
    "unit": "100 records",
    "max_units": 10,
    "description": "Records",
}


def challenged(seller: Any, path: str, method: str = "GET") -> PaymentRequired:
    resp = seller.request(method, path, json={"x": 1} if method == "POST" else None)
    assert resp.status == 402, (path, resp.status, resp.text)
    assert resp.headers["cache-control"] == "no-store"
    return decode_payment_required(resp.headers["payment-required"])


def nothing_charged(seller: Any, kit: Any, buyer: TestBuyer) -> None:
    assert kit.locked(seller, buyer) == 0
    assert seller.core.guarantees() == []
    assert seller.calls["/items/7"] == 0


# -- bundles on every adapter ------------------------------------------------------------------


def test_a_bundle_of_n_units_is_charged_n_unit_prices(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, ITEMS: BUNDLE})
    required = challenged(seller, "/items/7?count=300")
    (offer,) = required.accepts
    assert offer.amount == str(3 * UNIT) and offer.asset == USDC
    assert {k: offer.extra.get(k) for k in ("units", "unitPrice", "unit", "minAmount")} == {
        "units": 3,
        "unitPrice": str(UNIT),
        "unit": "100 records",
        "minAmount": None,
    }
    assert required.resource is not None
    assert required.resource.description == "Records — 3 × 100 records at $0.01"
    v1 = seller.request("GET", "/items/7?count=300").json()["accepts"][0]  # the v1 body says it too
    assert v1["maxAmountRequired"] == str(3 * UNIT) and v1["extra"]["units"] == 3
    buyer = kit.funded(seller)
    served = 0
    for count, units in (("300", 3), ("250", 3), ("50", 1), ("1000", 10)):
        resp = kit.pay(seller, buyer, f"/items/7?count={count}")
        assert resp.status == 200, resp.text
        assert resp.json() == {"item": "7"}
        served += units * UNIT
        assert kit.locked(seller, buyer) == served
    assert seller.calls["/items/7"] == 4
    assert served == 17 * UNIT
    amounts = sorted(int(g.amount) for g in seller.core.guarantees())
    assert amounts == [UNIT, 3 * UNIT, 3 * UNIT, 10 * UNIT]


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "no count: the units callable raises KeyError"),
        ("?count=many", "not a number: ValueError"),
        ("?count=0", "zero units"),
        ("?count=-500", "negative units"),
        ("?count=1001", "11 units, over max_units=10"),
    ],
)
def test_units_the_route_refuses_are_400_invalid_units_and_nothing_is_charged(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, query: str, why: str
) -> None:
    seller = make_seller(routes={**base_routes, ITEMS: BUNDLE})
    buyer = kit.funded(seller)
    paid_for_three = kit.header(seller, buyer, "/items/7?count=300")
    for headers in ({}, paid_for_three):  # unpaid, and with a valid payment for other units
        resp = seller.request("GET", f"/items/7{query}", headers=headers)
        assert resp.status == 400, (why, resp.status, resp.text)
        assert resp.json()["error"] == Reason.INVALID_UNITS == "invalid_units"
        assert resp.headers["cache-control"] == "no-store"
        assert "payment-required" not in resp.headers and "payment-response" not in resp.headers
    nothing_charged(seller, kit, buyer)
    resp = seller.request("GET", "/items/7?count=300", headers=paid_for_three)
    assert resp.status == 200 and kit.locked(seller, buyer) == 3 * UNIT  # the payment was intact


def test_a_units_callable_answering_anything_but_a_whole_number_is_400(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    answers: dict[str, Any] = {
        "bool": True,
        "text": "3",
        "float": 3.0,
        "none": None,
        "huge": 10**80,  # no max_units here, but no payment can carry 10**80 × $0.01
        # past 2**63 - 1 atomic units: no Core keeps it, so no buyer could pay it
        "unpayable": 2**63 // 10_000 + 1,
    }

    def odd(request: RequestView) -> Any:
        return answers[parse_qs(request.query)["v"][0]]

    seller = make_seller(routes={**base_routes, ITEMS: {"price": "$0.01", "units": odd}})
    for name in answers:
        resp = seller.request("GET", f"/items/7?v={name}")
        assert resp.status == 400, (name, resp.status, resp.text)
        assert resp.json()["error"] == "invalid_units"
    assert seller.calls["/items/7"] == 0 and seller.core.guarantees() == []


def test_an_async_units_callable_counts_on_every_driver(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """Sync drivers (WSGI, sync Django) run its coroutine to completion, async ones await it;
    what it raises is answered like a sync callable's."""

    async def counted(request: RequestView) -> int:
        return hundreds(request)

    seller = make_seller(routes={**base_routes, ITEMS: {**BUNDLE, "units": counted}})
    assert challenged(seller, "/items/7?count=420").accepts[0].extra["units"] == 5
    refused = seller.request("GET", "/items/7?count=x")
    assert refused.status == 400 and refused.json()["error"] == "invalid_units"
    buyer = kit.funded(seller)
    assert kit.pay(seller, buyer, "/items/7?count=420").status == 200
    assert kit.locked(seller, buyer) == 5 * UNIT


def test_a_minimum_raises_a_small_bundle(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seller = make_seller(routes={**base_routes, ITEMS: {**BUNDLE, "min_amount": "$0.05"}})
    small = challenged(seller, "/items/7?count=200")
    (offer,) = small.accepts
    assert offer.amount == str(5 * UNIT)  # 2 × $0.01 raised to $0.05
    assert offer.extra["units"] == 2 and offer.extra["minAmount"] == str(5 * UNIT)
    assert small.resource is not None
    assert small.resource.description == "Records — 2 × 100 records at $0.01, minimum $0.05"
    large = challenged(seller, "/items/7?count=700")
    assert large.accepts[0].amount == str(7 * UNIT)  # over the minimum: units × unit price
    assert large.resource is not None
    assert large.resource.description == "Records — 7 × 100 records at $0.01"
    buyer = kit.funded(seller)
    assert kit.pay(seller, buyer, "/items/7?count=200").status == 200
    assert kit.locked(seller, buyer) == 5 * UNIT
    assert kit.pay(seller, buyer, "/items/7?count=700").status == 200
    assert kit.locked(seller, buyer) == 12 * UNIT


def test_a_minimum_raises_a_price_set_per_request(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    asked: list[str] = []

    def quote(request: RequestView) -> str:
        asked.append(request.path)
        return "$0.001"

    def elsewhere(request: RequestView) -> TokenAmount:  # a seller bug: another asset
        return TokenAmount(5, "0x" + "11" * 20)

    routes = {
        **base_routes,
        ITEMS: {"price": quote, "min_amount": "$0.01"},
        "GET /stored": {"price": elsewhere, "min_amount": "$0.01"},
    }
    seller = make_seller(routes=routes)
    (offer,) = challenged(seller, "/items/7").accepts
    assert offer.amount == str(UNIT) and offer.extra["minAmount"] == str(UNIT)
    buyer = kit.funded(seller)
    assert kit.pay(seller, buyer, "/items/7").status == 200
    assert kit.locked(seller, buyer) == UNIT
    assert asked and set(asked) == {"/items/7"}
    # a minimum cannot be compared with an amount in another asset: not priced, not charged
    failed = seller.request("GET", "/stored")
    assert failed.status == 500 and failed.json()["error"] == "pricing_failed"
    assert "0x1111" not in failed.text  # the seller's error stays in its log, not the answer
    assert seller.calls["/stored"] == 0 and kit.locked(seller, buyer) == UNIT


@pytest.mark.parametrize("version", [2, 1])
def test_a_retry_counting_other_units_than_its_payment_is_refused(
    make_seller: Any, base_routes: dict[str, Any], kit: Any, version: int
) -> None:
    """The buyer signs for 3 units, then asks for 5: the requirements are rebuilt for the
    retry, its payment matches none of them (v2) or its claims do not (v1): 402, no lock."""
    seller = make_seller(routes={**base_routes, ITEMS: BUNDLE})
    buyer = kit.funded(seller)
    three = kit.header(seller, buyer, "/items/7?count=300", version=version)
    resp = seller.request("GET", "/items/7?count=500", headers=three)
    assert resp.status == 402, resp.text
    # v2: its accepted terms are no longer offered; v1: the Core refuses its claims' amount
    expected = "No matching payment requirements" if version == 2 else Reason.AMOUNT_MISMATCH
    assert kit.error_of(resp) == expected
    assert decode_payment_required(resp.headers["payment-required"]).accepts[0].amount == str(
        5 * UNIT
    )  # the refusal restates the terms of the request it answers
    nothing_charged(seller, kit, buyer)
    resp = seller.request("GET", "/items/7?count=300", headers=three)
    assert resp.status == 200, resp.text
    assert kit.locked(seller, buyer) == 3 * UNIT


def test_a_prepaid_cap_is_what_the_route_charges(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    seen: list[Payment] = []
    routes = {
        **base_routes,
        "GET /stream": {"price": "$0.01", "cap": "$0.50", "description": "Long job"},
    }
    seller = make_seller(
        routes=routes, after_delivery=lambda payment, outcome: seen.append(payment)
    )
    required = challenged(seller, "/stream")
    (offer,) = required.accepts
    assert offer.amount == "500000" and offer.extra["cap"] == "500000"
    assert "units" not in offer.extra and "unitPrice" not in offer.extra
    assert required.resource is not None
    assert required.resource.description == "Long job — prepaid up to $0.50"
    buyer = kit.funded(seller)
    resp = kit.pay(seller, buyer, "/stream")
    assert resp.status == 200 and resp.body == b"chunk-0\nchunk-1\nchunk-2\n"
    assert kit.locked(seller, buyer) == 500_000
    (payment,) = seen  # the Payment the handler was given
    assert (payment.cap, payment.amount, payment.units, payment.unit_price) == (
        500_000,
        500_000,
        None,
        None,
    )


def test_a_plain_route_payment_carries_no_bundle_fields(make_seller: Any, kit: Any) -> None:
    seen: list[Payment] = []
    seller = make_seller(after_delivery=lambda payment, outcome: seen.append(payment))
    buyer = kit.funded(seller)
    assert kit.pay(seller, buyer, "/items/7").status == 200
    (payment,) = seen
    assert (payment.units, payment.unit_price, payment.cap) == (None, None, None)
    assert payment.amount == 20_000
    (offer,) = challenged(seller, "/items/7").accepts
    assert not {"units", "unitPrice", "unit", "minAmount", "cap"} & set(offer.extra)


def test_the_listing_shows_a_bundle_per_unit_and_a_cap_exactly(
    make_seller: Any, base_routes: dict[str, Any]
) -> None:
    routes = {
        **base_routes,
        ITEMS: {**BUNDLE, "min_amount": "$0.05"},
        "GET /stream": {"price": "$0.01", "cap": "$0.50", "description": "Long job"},
    }
    asked: list[RequestView] = []
    counting = {**routes[ITEMS], "units": lambda r: asked.append(r) or hundreds(r)}
    seller = make_seller(routes={**routes, ITEMS: counting})
    resp = seller.request("GET", "/.well-known/x402")
    assert resp.status == 200
    items = next(r for r in resp.json()["resources"] if "/items/" in r["resource"])
    stream = next(r for r in resp.json()["resources"] if r["resource"].endswith("/stream"))
    assert asked == []  # the listing never counts a request's units
    (listed,) = items["accepts"]
    assert listed["perRequest"] == ["amount"] and "amount" not in listed
    assert listed["asset"] == USDC and listed["payTo"] == seller.options["pay_to"]
    assert {k: listed["extra"].get(k) for k in ("unitPrice", "unit", "minAmount", "units")} == {
        "unitPrice": str(UNIT),
        "unit": "100 records",
        "minAmount": str(5 * UNIT),
        "units": None,
    }
    assert items["description"] == "Records — $0.01 per 100 records, minimum $0.05"
    # the cap route is static: listed exactly as its challenge carries it
    required = challenged(seller, "/stream")
    assert stream["accepts"] == [r.to_dict() for r in required.accepts]
    assert stream["accepts"][0]["amount"] == "500000" and "perRequest" not in stream["accepts"][0]
    assert required.resource is not None
    assert stream["description"] == required.resource.description
    # and the buyer's listing reader sees an offer priced per request
    with harness.plain(seller) as http:
        found = discover(harness.BASE, client=http)
    (offer,) = next(r for r in found if "/items/" in r.url).accepts
    assert offer.amount is None and offer.per_request == ("amount",)
    assert offer.price == "set per request" and offer.extra["unitPrice"] == str(UNIT)
    assert challenged(seller, "/items/7?count=100").accepts[0].amount == str(5 * UNIT)
    assert len(asked) == 1  # a request's challenge counts its units (once)


# -- the handler's view, through the buyer client ------------------------------------------------


#: The routes of the apps below: GET /records in bundles of 100 (at least $0.03, at most 50
#: bundles), POST /jobs prepaid up to $2; by config (Starlette) or by marker (FastAPI, Flask).
RECORDS: dict[str, Any] = {
    "price": "$0.01",
    "units": hundreds,
    "unit": "100 records",
    "max_units": 50,
    "min_amount": "$0.03",
}
JOBS: dict[str, Any] = {"price": "$0.10", "cap": "$2"}


def _records(payment: Payment, count: str | None) -> dict[str, Any]:
    return {
        "count": count,
        "units": payment.units,
        "unit_price": payment.unit_price,
        "amount": payment.amount,
        "cap": payment.cap,
    }


def starlette_app(core: Core, pay_to: str) -> tuple[Any, str]:
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def records(request: Request) -> JSONResponse:
        payment = request.state.payment
        return JSONResponse(_records(payment, request.query_params.get("count")))

    async def jobs(request: Request) -> JSONResponse:
        return JSONResponse({"cap": request.state.payment.cap})

    routes = {"GET /records": RECORDS, "POST /jobs": JOBS}
    config = PaymentConfig(pay_to=pay_to, network=NETWORK, core=core, routes=routes)
    app = Starlette(
        routes=[Route("/records", records), Route("/jobs", jobs, methods=["POST"])],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    return app, "asgi"


def fastapi_app(core: Core, pay_to: str) -> tuple[Any, str]:
    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

    app = FastAPI()
    FourmicaX402(app, pay_to=pay_to, network=NETWORK, core=core)
    records_paid = Paid(**RECORDS)
    jobs_paid = Paid(**JOBS)

    @app.get("/records")
    def records(count: str, payment: Payment = records_paid) -> dict[str, Any]:
        return _records(payment, count)

    @app.post("/jobs")
    def jobs(payment: Payment = jobs_paid) -> dict[str, Any]:
        return {"cap": payment.cap}

    return app, "asgi"


def flask_app(core: Core, pay_to: str) -> tuple[Any, str]:
    from flask import Flask, g, request
    from fourmica_x402.adapters.flask import FourmicaX402, paid

    app = Flask(__name__)
    app.config.update(
        FOURMICA_X402_PAY_TO=pay_to, FOURMICA_X402_NETWORK=NETWORK, FOURMICA_X402_CORE=core
    )
    payments = FourmicaX402(app)

    @app.get("/records")
    @paid(**RECORDS)
    def records() -> Any:
        return _records(g.payment, request.args.get("count"))

    @app.post("/jobs")
    @paid(**JOBS)
    def jobs() -> Any:
        return {"cap": g.payment.cap}

    payments.check()
    return app, "wsgi"


APPS = {"starlette": starlette_app, "fastapi": fastapi_app, "flask": flask_app}


@pytest.mark.parametrize("framework", sorted(APPS))
def test_the_handler_reads_units_and_cap_off_its_payment(framework: str, tmp_path: Path) -> None:
    core = Core(str(tmp_path / "core.db"))
    pay_to = TestBuyer.new().address
    app, interface = APPS[framework](core, pay_to)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 5_000_000, network=NETWORK)
    inner = harness._inner(
        SimpleNamespace(client=SimpleNamespace(app=app, interface=interface)), is_async=False
    )
    try:
        with httpx.Client(
            transport=PaymentTransport(buyer.key, transport=inner), base_url=harness.BASE
        ) as client:
            bundle = client.get("/records", params={"count": "420"})
            assert bundle.status_code == 200, bundle.text
            assert bundle.json() == {
                "count": "420",
                "units": 5,
                "unit_price": UNIT,
                "amount": 5 * UNIT,
                "cap": None,
            }
            small = client.get("/records", params={"count": "10"})  # 1 unit, raised to $0.03
            assert small.status_code == 200, small.text
            assert small.json()["units"] == 1 and small.json()["amount"] == 3 * UNIT
            job = client.post("/jobs", json={"task": "render"})
            assert job.status_code == 200, job.text
            assert job.json() == {"cap": 2_000_000}
            refused = client.get("/records", params={"count": "9000"})  # 90 units > 50
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_units"
        locked = core.position(buyer.address, network=NETWORK).locked
        assert locked == 5 * UNIT + 3 * UNIT + 2_000_000
    finally:
        core.close()


# -- start-up checks -----------------------------------------------------------------------------

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # a throwaway test address


def table(value: Any, key: str = "GET /records") -> Any:
    return RouteTable({key: value}, network=NETWORK, pay_to=SELLER).routes[0]


def test_route_fields_are_resolved_per_offer_in_atomic_units() -> None:
    route = table({"price": "$0.001", "min_amount": "$0.001"})  # the dict form takes them
    assert [(t.minimum, t.unit_price, t.cap) for t in route.terms] == [(1000, None, None)]
    bundle = table(RouteConfig(price="$0.01", units=hundreds, min_amount=TokenAmount(30_000, USDC)))
    assert [(t.minimum, t.unit_price, t.cap, t.asset) for t in bundle.terms] == [
        (30_000, UNIT, None, USDC)
    ]
    capped = table(RouteConfig(price="$0.10", cap={"amount": "2000000", "asset": USDC}))
    assert [(t.minimum, t.unit_price, t.cap) for t in capped.terms] == [(None, None, 2_000_000)]
    assert table("$0.01").terms is None  # a plain route has no terms: nothing extra per request


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"price": "$0.001", "min_amount": "$0.01"},
            "price $0.001 (1000 units) is below min_amount",
        ),
        (RouteConfig(price=lambda r: "$0.01", units=hundreds), "cannot be combined with units"),
        (RouteConfig(price=lambda r: "$0.01", cap="$1"), "cannot be combined with a cap"),
        (RouteConfig(price="$0.01", cap="$1", units=hundreds), "units and cap cannot be combined"),
        (RouteConfig(price="$0.10", cap="$0.05"), "cap $0.05 (50000 units) is below the price"),
        (RouteConfig(price="$0.01", cap="$0.05", min_amount="$0.10"), "cap $0.05"),
        (RouteConfig(price="$0.01", units=3), "units must be a callable"),  # type: ignore[arg-type]
        (RouteConfig(price="$0.01", units=hundreds, max_units=0), "max_units must be"),
        (RouteConfig(price="$0.01", units=hundreds, max_units=True), "max_units must be"),
        (RouteConfig(price="$0.01", max_units=5), "set units"),
        (RouteConfig(price="$0.01", unit="100 records"), "set units"),
        (RouteConfig(price="$0.01", min_amount=TokenAmount(1, "0x" + "11" * 20)), "in asset"),
        (RouteConfig(price="$0.01", min_amount="$0.0000001"), "min_amount: price"),
        (RouteConfig(price="$0.01", min_amount=0.01), "floats are inexact"),  # type: ignore[arg-type]
        (RouteConfig(price="$0.01", cap=lambda r: "$1"), "cap must be an amount"),
    ],
)
def test_what_cannot_be_charged_right_fails_at_start_up_naming_the_route(
    value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        table(value, "GET /reports/:id")
    assert "route 'GET /reports/:id'" in caught.value.message
    assert message in caught.value.message, caught.value.message


def test_a_marker_is_checked_where_it_is_declared() -> None:
    ok = RouteConfig(price="$0.01", units=hundreds, unit="100 records", min_amount="$0.02")
    assert validate_marker(ok, "@paid on records") is ok
    with pytest.raises(ConfigurationError, match="@paid on jobs: cap"):
        validate_marker(RouteConfig(price="$0.10", cap="$0.01"), "@paid on jobs")
    from fourmica_x402.adapters.fastapi import Paid

    with pytest.raises(ConfigurationError, match="cannot be combined with units"):
        Paid(lambda r: "$0.01", units=hundreds)
    # priced on the app's network (an asset only), its price is checked when the app prices
    # it: the rest of it is checked now, and the stand-in price is not taken for a callable
    later = RouteConfig(price="$0.01", asset=USDC, units=hundreds, min_amount="$0.05")
    assert validate_marker(later) is later


def test_an_app_with_a_bad_table_fails_when_it_starts(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from flask import Flask
    from fourmica_x402.adapters.fastapi import FourmicaX402 as FastPayments
    from fourmica_x402.adapters.flask import FourmicaX402 as FlaskPayments

    core = Core(str(tmp_path / "core.db"))
    bad = {"GET /records": {"price": "$0.001", "min_amount": "$0.01"}}
    try:
        with pytest.raises(ConfigurationError, match="route 'GET /records': price"):
            FastPayments(FastAPI(), pay_to=SELLER, network=NETWORK, core=core, routes=bad)
        app = Flask(__name__)
        app.config.update(FOURMICA_X402_PAY_TO=SELLER, FOURMICA_X402_CORE=core)
        app.config["FOURMICA_X402_ROUTES"] = bad
        with pytest.raises(ConfigurationError, match="route 'GET /records': price"):
            FlaskPayments(app)
    finally:
        core.close()


def test_a_units_count_that_fails_for_a_granted_request_is_pricing_failed(
    make_seller: Any, base_routes: dict[str, Any]
) -> None:
    """``GRANT`` on a bundled route counts the units its handler serves: a ``units`` callable
    failing there (its database down) escaped the gate, the framework's bare 500 with a
    traceback, where an unpaid or paying request gets 500 ``pricing_failed``."""
    from fourmica_x402.gate import GRANT

    def broken(request: RequestView) -> int:
        raise RuntimeError("the catalogue is down")

    routes = {**base_routes, ITEMS: {**BUNDLE, "units": broken}}
    seller = make_seller(routes=routes, on_protected_request=lambda request, route: GRANT)
    resp = seller.request("GET", "/items/7?count=300")
    assert (resp.status, resp.json()["error"]) == (500, "pricing_failed")
    assert seller.calls["/items/7"] == 0 and seller.core.guarantees() == []
