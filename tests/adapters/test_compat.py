"""Sellers migrating from the official 4Mica package keep their route dict and function names."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from fourmica_x402.errors import ConfigurationError
from fourmica_x402.http import compat_config, fastapi_payment_middleware_from_config
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OFFICIAL_ROUTES = {
    "GET /premium": {
        "accepts": {
            "scheme": "4mica-credit",
            "price": "$0.01",
            "network": NETWORK,
            "payTo": SELLER,
        },
        "description": "Premium content",
    }
}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)  # the embedded Core's default file lands here
    app = FastAPI()
    middleware = fastapi_payment_middleware_from_config(
        OFFICIAL_ROUTES, tab_endpoint="http://testserver/payment/tab"
    )
    app.middleware("http")(middleware)

    @app.get("/premium")
    def premium(request: Request) -> dict[str, Any]:
        return {"payer": request.state.payment.payer}

    app.state.gate = middleware.gate
    return app


def test_official_route_dict_and_fastapi_function_name(app: Any, tmp_path: Path) -> None:
    client = TestClient(app)
    resp = client.get("/premium")
    assert resp.status_code == 402
    req = decode_payment_required(resp.headers["payment-required"]).accepts[0]
    assert req.amount == "10000" and req.pay_to == SELLER
    assert req.extra["tabEndpoint"] == "http://testserver/payment/tab"  # advertised verbatim
    assert (
        decode_payment_required(resp.headers["payment-required"]).resource.description
        == "Premium content"
    )

    buyer = TestBuyer.new()
    app.state.gate.core.deposit(buyer.address, 100_000, network=NETWORK)
    tab = client.post(
        "/payment/tab",
        json={
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": req.to_dict(),
        },
    ).json()
    name, value = payment_header(buyer, req, tab)
    paid = client.get("/premium", headers={name: value})
    assert paid.status_code == 200 and paid.json() == {"payer": buyer.address}
    result = json.loads(base64.b64decode(paid.headers["payment-response"]))
    assert result["success"] is True and result["payer"] == buyer.address
    assert (tmp_path / "fourmica_x402.db").exists()


def test_accepts_may_be_a_list_and_bad_prices_fail_at_start() -> None:
    routes = {"GET /a": {"accepts": [{"price": "$1", "network": NETWORK, "payTo": SELLER}]}}
    assert compat_config(routes, "http://x/tab").routes == routes
    with pytest.raises(ConfigurationError):
        fastapi_payment_middleware_from_config(
            {"GET /a": {"accepts": {"price": "$0.0000001", "network": NETWORK, "payTo": SELLER}}},
            tab_endpoint="http://x/tab",
        )
    with pytest.raises(ConfigurationError):
        compat_config(routes, "http://x/tab", facilitator_client=object())
