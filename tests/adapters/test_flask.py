"""Flask-only behaviour: app.config settings, g.payment, @paid with converters, init_app.

What every adapter does (challenges, payments, refunds…) lives in tests/conformance.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from fourmica_x402.adapters.flask import FourmicaX402, paid

from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
def core(tmp_path: Path) -> Any:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update({f"FOURMICA_X402_{name.upper()}": v for name, v in config.items()})
    return app


def amount_of(client: Any, path: str) -> str:
    resp = client.get(path)
    assert resp.status_code == 402, (path, resp.status_code)
    return decode_payment_required(resp.headers["payment-required"]).accepts[0].amount


def test_settings_come_from_app_config_and_options_win(core: Core) -> None:
    app = make_app(
        pay_to=SELLER,
        network=NETWORK,
        core=core,
        routes={"GET /report": "$0.03"},
        prefix="/pay",
        settle="after",
        idempotent_replay=True,
        delivery_policy=False,
    )
    ext = FourmicaX402(app, prefix="/payments")
    assert ext.gate is not None and app.extensions["fourmica_x402"] is ext
    config = ext.gate.config
    assert (config.settle, config.idempotent_replay, config.delivery_policy) == (
        "after",
        True,
        False,
    )
    assert config.prefix == "/payments" and ext.gate.core is core
    assert amount_of(app.test_client(), "/report") == "30000"


def test_core_setting_takes_a_database_url(tmp_path: Path) -> None:
    path = tmp_path / "from-settings.db"
    ext = FourmicaX402(make_app(pay_to=SELLER, core=str(path)))
    assert ext.gate is not None and ext.gate.core is not None and path.exists()
    ext.gate.core.close()


def test_unknown_settings_are_named(core: Core) -> None:
    app = make_app(pay_to=SELLER, core=core, pay_too=SELLER, rootes={})
    with pytest.raises(ConfigurationError, match="FOURMICA_X402_PAY_TOO, FOURMICA_X402_ROOTES"):
        FourmicaX402(app)


@pytest.mark.parametrize(
    "settings",
    [
        {"pay_to": "not-an-address"},
        {"pay_to": SELLER, "routes": {"GET /x": "ten dollars"}},
        {"pay_to": SELLER, "settle": "later"},
        {"pay_to": SELLER, "network": "eip155:0"},
    ],
)
def test_bad_config_fails_at_init(core: Core, settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        FourmicaX402(make_app(core=core, **settings))


def test_init_app_factory_pattern(core: Core) -> None:
    ext = FourmicaX402(pay_to=SELLER, core=core)
    assert ext.gate is None

    def create_app() -> Flask:
        app = Flask(__name__)
        ext.init_app(app)

        @app.get("/premium")
        @paid(price="$0.05")
        def premium() -> Any:
            return {"ok": True}

        return app

    app = create_app()
    assert app.extensions["fourmica_x402"] is ext
    assert amount_of(app.test_client(), "/premium") == "50000"


def test_paid_converts_rule_converters(core: Core) -> None:
    app = make_app(pay_to=SELLER, core=core)
    ext = FourmicaX402(app)

    @app.route("/orders/<int:order_id>", methods=["GET", "POST"])
    @paid(price="$0.02", description="one order")
    def order(order_id: int) -> Any:
        return {"order": order_id}

    @app.get("/files/<path:name>")
    @paid("$0.04")
    def files(name: str) -> Any:
        return {"file": name}

    @app.get("/users/<int(signed=True):uid>/<slug>")
    @paid("$0.06")
    def user(uid: int, slug: str) -> Any:
        return {"user": uid}

    client = app.test_client()
    assert client.get("/orders/7").status_code == 402  # the first request finds the marks
    assert ext.gate is not None
    keys = {route.key for route in ext.gate.routes.routes}
    assert keys == {
        "GET /orders/:order_id",
        "POST /orders/:order_id",
        "GET /files/*",
        "GET /users/:uid/:slug",
    }
    assert client.post("/orders/7").status_code == 402
    assert client.head("/orders/7").status_code == 402  # HEAD is priced as GET
    assert amount_of(client, "/files/a/b/c.txt") == "40000"
    assert amount_of(client, "/users/-3/ada") == "60000"
    route = ext.gate.routes.match("GET", "/orders/7")
    assert route is not None and route.config.description == "one order"


def test_g_payment_in_a_paid_view(core: Core) -> None:
    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    FourmicaX402(app)
    seen: list[Any] = []

    @app.get("/free")
    def free() -> Any:
        seen.append(g.payment)
        return {"free": True}

    @app.get("/premium/<int:n>")
    @paid(price="$0.01")
    def premium(n: int) -> Any:
        seen.append(g.payment)
        return {"payer": g.payment.payer, "n": n}

    client = app.test_client()
    assert client.get("/free").status_code == 200 and seen == [None]
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    resp = client.get("/premium/3")
    req = decode_payment_required(resp.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = client.post("/x402/tab", json=body).get_json()
    name, value = payment_header(buyer, req, tab)
    resp = client.get("/premium/3", headers={name: value})
    assert resp.status_code == 200 and resp.get_json() == {"payer": buyer.address, "n": 3}
    payment = seen[-1]
    assert (payment.payer, payment.amount, payment.route) == (
        buyer.address,
        10_000,
        "GET /premium/:n",
    )
    assert "payment-response" in resp.headers


def test_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "fourmica_x402.adapters.flask")
    with pytest.raises(ImportError, match=r'pip install "fourmica-x402\[flask\]"'):
        importlib.import_module("fourmica_x402.adapters.flask")
