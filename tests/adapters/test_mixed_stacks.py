"""One framework mounted in another, each with a gate of its own: a WSGI app (Flask, plain
WSGI) mounted in an ASGI one through a bridge, the outer gate pricing the mount as a whole
(docs/architecture.md, "What an adapter does")."""

from __future__ import annotations

import json
import warnings
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask, g
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.flask import FourmicaX402
from fourmica_x402.adapters.wsgi import PAYMENT_KEY
from fourmica_x402.adapters.wsgi import PaymentMiddleware as WsgiPayments
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


def bridge(name: str, app: Any) -> Any:
    if name == "a2wsgi":
        from a2wsgi import WSGIMiddleware
    else:
        with warnings.catch_warnings():  # deprecated in favour of a2wsgi, still in use
            warnings.simplefilter("ignore")
            from starlette.middleware.wsgi import WSGIMiddleware
    return WSGIMiddleware(app)


def wsgi_app(inner: str, core: Core, runs: list[Any]) -> Any:
    """A WSGI app selling ``GET /premium`` at $0.01 to SELLER through a gate of its own."""
    table = {"GET /premium": "$0.01"}
    if inner == "flask":
        app = Flask(__name__)
        app.config.update(
            FOURMICA_X402_PAY_TO=SELLER,
            FOURMICA_X402_CORE=core,
            FOURMICA_X402_NETWORK=NETWORK,
            FOURMICA_X402_ROUTES=table,
        )
        FourmicaX402(app)
        app.add_url_rule("/premium", "premium", lambda: runs.append(g.payment) or "premium")
        return app

    def premium(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(environ[PAYMENT_KEY])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"premium"]

    config = PaymentConfig(pay_to=SELLER, routes=table, core=core, network=NETWORK)
    return WsgiPayments(premium, config=config)


def paid_headers(client: TestClient, core: Core, path: str) -> tuple[TestBuyer, dict[str, str]]:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    challenged = client.get(path)
    assert challenged.status_code == 402, challenged.text
    req = decode_payment_required(challenged.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = client.post(urlsplit(req.extra["tabEndpoint"]).path, json=body)  # its gate's
    assert tab.status_code == 200, tab.text
    name, value = payment_header(buyer, req, json.loads(tab.content))
    return buyer, {name: value}


@pytest.mark.parametrize("via", ["a2wsgi", "starlette"])
@pytest.mark.parametrize("inner", ["flask", "wsgi"])
@pytest.mark.parametrize(("outer_price", "sold"), [("$0.02", True), ("$0.001", False)])
def test_a_wsgi_gate_bridged_into_an_asgi_app_sees_the_outer_payment(
    core: Core, via: str, inner: str, outer_price: str, sold: bool
) -> None:
    """A FastAPI/Starlette app mounting a Flask app through a WSGI bridge, the outer gate
    pricing ``/legacy/*`` and the inner one ``/premium``: the bridge builds an environ without
    the scope's payment, so the inner gate read the outer payment's header again, refused it
    (402) and the outer gate refunded: a route paid on the inner gate's terms could never be
    bought, and one the outer gate undersold answered a 402, not the documented 503. Now the
    inner gate sees the outer payment as through any other mount, and judges it."""
    runs: list[Any] = []
    app = Starlette(routes=[Mount("/legacy", bridge(via, wsgi_app(inner, core, runs)))])
    outer = {"GET /legacy/*": outer_price}
    app.add_middleware(PaymentMiddleware, pay_to=SELLER, core=core, network=NETWORK, routes=outer)
    with TestClient(app) as client:
        buyer, headers = paid_headers(client, core, "/legacy/premium")
        resp = client.get("/legacy/premium", headers=headers)
    [charged] = core.guarantees(address=buyer.address)
    if sold:
        assert (resp.status_code, resp.text) == (200, "premium")
        assert [p.guarantee_id for p in runs] == [charged.guarantee_id]
        assert (charged.state, charged.amount) == ("payable", 20_000)
    else:
        assert (resp.status_code, resp.json()["error"]) == (503, "payment_not_enforced")
        assert runs == [] and charged.state in ("voided", "cancelled")
        assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("declared", ["route", "router"])
@pytest.mark.parametrize("install", ["extension", "http_middleware"])
def test_a_mounted_fastapi_app_with_its_own_gate_sells_its_paid_routes_to_its_payee(
    core: Core, declared: str, install: str
) -> None:
    """A platform's FastAPI app with its gate mounting a partner's FastAPI app with a gate of
    its own (payTo the partner's; ``FourmicaX402`` or the http middleware form, which leave
    the mount's routes in sight, unlike a wrapping middleware) and a ``Paid`` route: the platform's gate priced that
    route by its ``Paid`` too, to the platform's payTo, and the partner's gate refused the
    payment (503, refunded): the partner's route could never be bought. It is the partner
    gate's alone now: challenged, paid and charged there, once."""
    from fastapi import APIRouter, FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid, http_middleware

    from fourmica_x402.gate import Payment

    partner, runs = TestBuyer.new().address, []
    sub, router = FastAPI(), APIRouter()

    @(sub if declared == "route" else router).get("/premium")
    def premium(payment: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        runs.append(payment)
        return {"payTo": payment.pay_to}

    sub.include_router(router)
    options = {"pay_to": partner, "core": core, "network": NETWORK}
    if install == "extension":
        FourmicaX402(sub, **options)
    else:
        sub.middleware("http")(http_middleware(PaymentConfig(**options)))
    app = FastAPI()
    app.mount("/partner", sub)
    app.get("/own")(lambda: {"own": True})
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK, routes={"GET /own": "$0.001"})
    with TestClient(app) as client:
        buyer, headers = paid_headers(client, core, "/partner/premium")
        resp = client.get("/partner/premium", headers=headers)
    assert (resp.status_code, resp.json()) == (200, {"payTo": partner})
    [charged] = core.guarantees(address=buyer.address)
    assert [p.guarantee_id for p in runs] == [charged.guarantee_id]
    assert (charged.state, charged.amount, charged.recipient_address) == (
        "payable",
        10_000,
        partner,
    )


def test_a_router_the_platform_includes_too_is_still_priced_by_its_own_gate(core: Core) -> None:
    """One ``APIRouter`` (a shared ``reports`` module) included both in the platform's app and
    in a partner's app mounted with a gate of its own (another payTo): the platform's gate
    left the router's ``Paid`` routes to the partner's everywhere, so its own ``/premium``
    was priced by no gate and answered 503 to every buyer. One route object is one endpoint:
    the platform's gate prices it, and under the partner's mount it is refused uncharged."""
    from fastapi import APIRouter, FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

    from fourmica_x402.gate import Payment

    partner, router = TestBuyer.new().address, APIRouter()

    @router.get("/premium")
    def premium(payment: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        return {"payTo": payment.pay_to}

    sub, app = FastAPI(), FastAPI()
    sub.include_router(router)
    FourmicaX402(sub, pay_to=partner, core=core, network=NETWORK)
    app.include_router(router)
    app.mount("/partner", sub)
    FourmicaX402(app, pay_to=SELLER, core=core, network=NETWORK)
    with TestClient(app) as client:
        _, headers = paid_headers(client, core, "/premium")
        resp = client.get("/premium", headers=headers)
        assert (resp.status_code, resp.json()) == (200, {"payTo": SELLER})
        other, headers = paid_headers(client, core, "/partner/premium")
        resp = client.get("/partner/premium", headers=headers)
        assert (resp.status_code, resp.json()["error"]) == (503, "payment_not_enforced")
    assert core.position(other.address, network=NETWORK).locked == 0
