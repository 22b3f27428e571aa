"""Starlette's own layers that answer a request themselves (``HTTPSRedirectMiddleware``,
``TrustedHostMiddleware``), with a valid payment, below or above the gate (docs/protocol.md,
"Paid responses": they belong outside it). Below it, what they answer comes after the payment
and is refunded, and a payment is never taken twice; the gate warns at start-up."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.fastapi import FourmicaX402
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.httpsredirect import HTTPSRedirectMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers

SELLER = TestBuyer.new().address
TABLE = {"GET /doc": "$0.01"}
WARNING = "runs below the payment middleware: a request it redirects or refuses"


def _starlette(core: Core, layer: Middleware, below: bool, runs: list[str]) -> Starlette:
    async def doc(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        return JSONResponse({"doc": "paid content"})

    gate = Middleware(PaymentMiddleware, pay_to=SELLER, core=core, network=NETWORK, routes=TABLE)
    stack = [gate, layer] if below else [layer, gate]  # first: outermost
    return Starlette(routes=[Route("/doc", doc)], middleware=stack)


def _outcomes(app: Any, buyer: TestBuyer) -> list[str | None]:
    layer = app.middleware_stack
    while not isinstance(layer, PaymentMiddleware):
        layer = layer.app
    layer.gate.flush()
    return [r.outcome for r in layer.gate.records.query(payer=buyer.address)]


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split()[0] for r in caplog.records if WARNING in r.getMessage()]


def test_an_https_redirect_below_the_gate_is_refunded_and_its_payment_not_taken_again(
    audited_core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []
    app = _starlette(audited_core, Middleware(HTTPSRedirectMiddleware), True, runs)
    with caplog.at_level(logging.WARNING), TestClient(app, follow_redirects=False) as client:
        assert _warned(caplog) == ["HTTPSRedirectMiddleware"]
        buyer = TestBuyer.new()
        audited_core.deposit(buyer.address, 10**7, network=NETWORK)
        header = paid_headers(client, buyer, client.get("/doc"))
        moved = client.get("/doc", headers=header)
        assert moved.status_code == 307 and _outcomes(app, buyer) == ["refunded"]
        again = client.get(moved.headers["location"], headers=header)
        assert again.status_code == 402 and again.json()["error"] == "replayed_request_id"
        assert runs == [] and _outcomes(app, buyer) == ["refunded"]
    caplog.clear()
    app = _starlette(audited_core, Middleware(HTTPSRedirectMiddleware), False, runs)
    with caplog.at_level(logging.WARNING), TestClient(app, follow_redirects=False) as client:
        assert _warned(caplog) == []
        assert client.get("/doc").status_code == 307  # before any challenge


def test_a_bad_host_below_the_gate_is_refunded_and_above_it_never_challenged(
    audited_core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []
    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=["testserver"])
    app = _starlette(audited_core, hosts, True, runs)
    with caplog.at_level(logging.WARNING), TestClient(app) as client:
        assert _warned(caplog) == ["TrustedHostMiddleware"]
        buyer = TestBuyer.new()
        audited_core.deposit(buyer.address, 10**7, network=NETWORK)
        header = paid_headers(client, buyer, client.get("/doc"))
        bad = client.get("/doc", headers={**header, "host": "evil.example"})
        assert bad.status_code == 400 and _outcomes(app, buyer) == ["refunded"]
        assert runs == []
    caplog.clear()
    app = _starlette(audited_core, hosts, False, runs)
    with caplog.at_level(logging.WARNING), TestClient(app) as client:
        assert _warned(caplog) == []
        assert client.get("/doc", headers={"host": "evil.example"}).status_code == 400


@pytest.mark.parametrize("order", ["before", "after"])
def test_fastapi_warns_of_a_host_check_added_before_the_gate(
    audited_core: Core, caplog: pytest.LogCaptureFixture, order: str
) -> None:
    """``add_middleware`` puts each new layer outside the earlier ones: one added before
    ``FourmicaX402(app)`` is below the gate."""
    app = FastAPI()
    if order == "before":
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["testserver"])
    FourmicaX402(app, pay_to=SELLER, core=audited_core, network=NETWORK, routes=TABLE)
    if order == "after":
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["testserver"])

    @app.get("/doc")
    def doc() -> dict[str, str]:
        return {"doc": "paid content"}

    with caplog.at_level(logging.WARNING), TestClient(app) as client:
        assert client.get("/doc").status_code == 402
    assert _warned(caplog) == (["TrustedHostMiddleware"] if order == "before" else [])


def test_a_page_on_another_origin_pays_through_a_cors_layer_outside_the_gate(
    audited_core: Core,
) -> None:
    """A browser sends the payment header only after a preflight, which CORS outside the gate
    answers (one from a refused origin is 400 and never reaches it); the challenge and the
    receipt are readable there only when the layer exposes the payment headers."""
    from starlette.middleware.cors import CORSMiddleware

    runs: list[str] = []
    exposed = ["PAYMENT-REQUIRED", "PAYMENT-RESPONSE"]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["https://shop.example"],
        allow_headers=["*"],
        expose_headers=exposed,
    )
    app = _starlette(audited_core, cors, False, runs)
    preflight = {"access-control-request-method": "GET"}
    with TestClient(app) as client:
        for origin, status in (("https://shop.example", 200), ("https://evil.example", 400)):
            asked = {
                **preflight,
                "origin": origin,
                "access-control-request-headers": "payment-signature",
            }
            assert client.options("/doc", headers=asked).status_code == status
        page = {"origin": "https://shop.example"}
        challenge = client.get("/doc", headers=page)
        assert challenge.status_code == 402
        assert challenge.headers["access-control-expose-headers"] == ", ".join(exposed)
        buyer = TestBuyer.new()
        audited_core.deposit(buyer.address, 10**7, network=NETWORK)
        paid = client.get("/doc", headers={**page, **paid_headers(client, buyer, challenge)})
        assert paid.status_code == 200 and "payment-response" in paid.headers
        assert paid.headers["access-control-allow-origin"] == "https://shop.example"
    assert runs == ["/doc"] and _outcomes(app, buyer) == ["delivered"]
