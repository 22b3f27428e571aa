"""Flask-only behaviour: app.config settings, g.payment, @paid with converters, init_app, and
pricing the rule Flask's own router resolves (docs/architecture.md, "Which route is priced").

What every adapter does (challenges, payments, refunds…) lives in tests/conformance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask import Blueprint, Flask, abort, current_app, g, request, session
from flask.views import MethodView
from fourmica_x402.adapters.flask import FourmicaX402, paid
from werkzeug.routing import BaseConverter, ValidationError

from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PARTNER = TestBuyer.new().address


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


def funded(core: Core) -> TestBuyer:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    return buyer


def _items_behind(app: Flask, wrapper: Any, runs: list[str]) -> Any:
    """A test client of ``app`` selling /items/<n> (GET, PUT), ``wrapper`` installed on
    ``app.wsgi_app`` inside the extension; each run's method goes to ``runs``."""
    app.wsgi_app = wrapper(app.wsgi_app)  # type: ignore[method-assign]
    FourmicaX402(app)

    @app.route("/items/<n>", methods=["GET", "PUT"])
    def item(n: str) -> dict[str, str]:
        runs.append(request.method)
        return {"item": n}

    return app.test_client()


def payment_for(client: Any, buyer: TestBuyer, path: str, method: str = "GET") -> dict[str, str]:
    """A payment header for ``path``, from its challenge and the seller's tab endpoint."""
    resp = client.open(path, method=method)
    assert resp.status_code == 402, (path, resp.status_code, resp.get_data())
    req = decode_payment_required(resp.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = client.post("/x402/tab", json=body)
    assert tab.status_code == 200, tab.get_data()
    name, value = payment_header(buyer, req, tab.get_json())
    return {name: value}


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
    app.add_url_rule("/report", "report", lambda: {"report": True})
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


def test_with_no_core_setting_fourmica_x402_db_names_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI and the examples read FOURMICA_X402_DB, the library did not: a seller who
    exported it served from ./fourmica_x402.db while its buyers were funded in the other."""
    path = tmp_path / "from-env.db"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("FOURMICA_X402_DB", f"sqlite:///{path}")
    ext = FourmicaX402(make_app(pay_to=SELLER))
    assert ext.gate is not None and ext.gate.core is not None
    assert path.exists() and list((tmp_path / "cwd").iterdir()) == []
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
    FourmicaX402(app)

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
    resp = client.get("/orders/7")
    assert resp.status_code == 402
    challenge = decode_payment_required(resp.headers["payment-required"])
    assert challenge.resource is not None and challenge.resource.description == "one order"
    assert challenge.accepts[0].amount == "20000"
    assert client.post("/orders/7").status_code == 402
    assert client.head("/orders/7").status_code == 402  # HEAD is priced as GET
    assert client.get("/orders/seven").status_code == 404  # Flask's int converter: not ours
    assert amount_of(client, "/files/a/b/c.txt") == "40000"
    assert amount_of(client, "/users/-3/ada") == "60000"


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
    buyer = funded(core)
    resp = client.get("/premium/3", headers=payment_for(client, buyer, "/premium/3"))
    assert resp.status_code == 200 and resp.get_json() == {"payer": buyer.address, "n": 3}
    payment = seen[-1]
    assert (payment.payer, payment.amount) == (buyer.address, 10_000)
    assert payment.route.endswith(" /premium/<int:n>")  # the rule as Flask writes it
    assert "payment-response" in resp.headers


def test_a_limit_per_payer_from_a_limiter_set_up_before_the_extension(core: Core) -> None:
    """Flask-Limiter, set up before ``FourmicaX402(app)``, checks its default limits in a
    ``before_request`` hook that runs before the extension's: a ``key_func`` limiting each
    buyer by ``g.payment.payer`` raised AttributeError there, and every paid request was
    answered 500 (refunded): the API could not be bought. ``g.payment`` is now set as Flask
    starts the request, before any hook."""
    from flask_limiter import Limiter

    app = make_app(pay_to=SELLER, network=NETWORK, core=core)

    def payer() -> str:
        return g.payment.payer if g.payment else request.remote_addr or "?"

    Limiter(payer, app=app, default_limits=["1 per minute"], storage_uri="memory://")
    FourmicaX402(app)
    app.add_url_rule("/report", "report", paid("$0.01")(lambda: {"payer": g.payment.payer}))
    client, buyer, other = app.test_client(), funded(core), funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"payer": buyer.address}
    assert client.get("/report", headers=payment_for(client, buyer, "/report")).status_code == 429
    resp = client.get("/report", headers=payment_for(client, other, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"payer": other.address}
    app.extensions["fourmica_x402"].gate.flush()
    assert core.position(buyer.address, network=NETWORK).locked == 10_000  # the 429 refunded
    assert core.position(other.address, network=NETWORK).locked == 10_000


class DocConverter(BaseConverter):
    regex = "[a-z0-9/]+"  # a custom converter whose regex matches "/"


def test_paid_rule_with_a_custom_converter_matching_slashes_is_charged(core: Core) -> None:
    """The rule Flask resolved is priced, whatever its converters accept."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    app.url_map.converters["doc"] = DocConverter
    FourmicaX402(app)
    runs: list[Any] = []

    @app.get("/docs/<doc:value>")
    @paid("$0.03")
    def docs(value: str) -> Any:
        runs.append(g.payment)
        return {"doc": value, "payer": g.payment.payer}

    client = app.test_client()
    assert amount_of(client, "/docs/a/b/c") == "30000" and runs == []
    buyer = funded(core)
    resp = client.get("/docs/a/b/c", headers=payment_for(client, buyer, "/docs/a/b/c"))
    assert resp.status_code == 200 and resp.get_json() == {"doc": "a/b/c", "payer": buyer.address}
    assert len(runs) == 1 and runs[0].payer == buyer.address
    assert core.position(buyer.address, network=NETWORK).locked == 30_000


def test_a_path_flask_does_not_serve_on_a_paid_rule_is_never_charged(core: Core) -> None:
    """Strict slashes: /premium/ is a 404 and /reports a redirect in Flask; neither is charged."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"GET /reports/": "$0.01"})
    ext = FourmicaX402(app)

    @app.get("/premium")
    @paid("$0.01")
    def premium() -> Any:
        return {"ok": True}

    @app.get("/reports/")
    def reports() -> Any:
        return {"reports": True}

    client = app.test_client()
    buyer = funded(core)
    headers = payment_for(client, buyer, "/premium")
    resp = client.get("/premium/", headers=headers)
    assert resp.status_code == 404 and "payment-response" not in resp.headers
    resp = client.get("/reports", headers=payment_for(client, buyer, "/reports/"))
    assert resp.status_code == 308 and "payment-response" not in resp.headers
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert ext.gate is not None and ext.gate.records.query(payer=buyer.address) == []
    assert client.get("/premium", headers=headers).status_code == 200  # still good for its rule


def test_a_proxyfix_installed_before_the_extension_routes_the_gate_too(core: Core) -> None:
    """``app.wsgi_app = ProxyFix(...)`` right after ``Flask()`` sits inside the gate: with
    subdomain matching Flask routes by the forwarded host, and so does the gate now (it
    resolved on the raw Host and served the priced subdomain's view free)."""
    from flask import Blueprint
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"GET /report": "$0.50"})
    app.subdomain_matching, app.config["SERVER_NAME"] = True, "example.com"
    app.url_map.host_matching = False
    app.wsgi_app = ProxyFix(app.wsgi_app, x_host=1)  # type: ignore[method-assign]
    premium = Blueprint("premium", __name__, subdomain="premium")
    served: list[str] = []

    @premium.get("/report")
    def report() -> Any:
        served.append(request.host)
        return {"report": True}

    app.register_blueprint(premium)
    FourmicaX402(app).check()
    client = app.test_client()
    forwarded = {"Host": "example.com", "X-Forwarded-Host": "premium.example.com"}
    for headers in ({"Host": "premium.example.com"}, forwarded):
        resp = client.get("/report", headers=headers)
        assert resp.status_code == 402, (headers, resp.status_code)
    assert served == []
    buyer = funded(core)
    challenge = client.get("/report", headers=forwarded)
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    assert req.amount == "500000"  # the resource as the buyer addressed it, forwarded host
    assert challenge.get_json()["accepts"][0]["resource"] == "http://premium.example.com/report"
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = client.post("/x402/tab", json=body, headers=forwarded).get_json()
    name, value = payment_header(buyer, req, tab)
    paid_resp = client.get("/report", headers={**forwarded, name: value})
    assert paid_resp.status_code == 200 and served == ["premium.example.com"]


@pytest.mark.parametrize("methods", ["GET", ["GET,POST"], [], ["GET", 1]])
def test_paid_methods_naming_no_request_method_fail_where_declared(methods: Any) -> None:
    """``@paid(..., methods="GET")`` took the string's letters (G, E, T) for methods, and
    ``["GET,POST"]`` or ``[]`` named none a request has: the view answered every request 405,
    paid or not, with nothing said at start-up. Refused where it is declared (FastAPI's
    ``Paid`` and Django's ``@paid`` share the check)."""
    from fourmica_x402.adapters.fastapi import Paid

    with pytest.raises(ConfigurationError, match="methods must be a list"):
        paid("$0.01", methods=methods)
    with pytest.raises(ConfigurationError, match="methods must be a list"):
        Paid("$0.01", methods=methods)


def test_paid_methods_answers_405_for_the_others_without_running_the_view(core: Core) -> None:
    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    FourmicaX402(app)
    runs: list[str] = []

    @app.route("/limited", methods=["GET", "POST"])
    @paid("$0.01", methods=["GET"])
    def limited() -> Any:
        runs.append(request.method)
        return {"method": request.method}

    @app.route("/multi", methods=["GET", "PUT", "DELETE"])
    @paid("$0.01")  # every method the rule serves
    def multi() -> Any:
        runs.append(request.method)
        return {"method": request.method}

    client = app.test_client()
    resp = client.post("/limited")
    assert resp.status_code == 405 and runs == []
    assert set(resp.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert client.get("/limited").status_code == 402
    for method in ("GET", "PUT", "DELETE", "HEAD"):
        assert client.open("/multi", method=method).status_code == 402, method
    buyer = funded(core)
    resp = client.put("/multi", headers=payment_for(client, buyer, "/multi", "PUT"))
    assert resp.status_code == 200 and runs == ["PUT"]


@pytest.mark.parametrize(
    "mark",
    [
        {"price": "ten dollars"},
        {"price": "$0.01", "pay_to": "0x1234"},
        {"price": "$0.01", "network": "eip155:0"},
        {"price": None},
        {"price": "$0.01", "max_timeout_seconds": 0},
    ],
)
def test_a_bad_paid_fails_at_decoration(mark: dict[str, Any]) -> None:
    """At import, not on the first paying request."""
    price = mark.pop("price")
    with pytest.raises(ConfigurationError, match=r"@paid on .*view"):

        @paid(price, **mark)
        def view() -> Any:
            return {}


def test_a_route_entry_naming_no_route_fails_check_and_every_request(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request is refused 500 configuration_error, naming the bad entry; the app's
    routes, which the refusal listed to any client, are in the log only."""
    app = make_app(pay_to=SELLER, core=core, routes={"GET /reprot": "$0.01"})
    ext = FourmicaX402(app)
    runs: list[str] = []

    @app.get("/report")
    def report() -> Any:
        runs.append("report")
        return {"report": True}

    with pytest.raises(ConfigurationError, match="'GET /reprot' name no route"):
        ext.check()
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="fourmica_x402"):
        for path in ("/report", "/reprot", "/x402/tab"):
            resp = client.get(path)
            assert resp.status_code == 500, path
            assert resp.get_json()["error"] == "configuration_error"
            assert "GET /reprot" in resp.get_json()["message"]
            assert "/report" not in resp.get_json()["message"].replace("/reprot", "")
    assert runs == [] and "GET /reprot" in caplog.text
    assert "the app's routes: /report" in caplog.text  # the app's routes: for its operator only


class TenantConverter(BaseConverter):
    """A tenant of the app's (``current_app``) or the session's: Flask matches inside the
    request context, so its converters may read them. Its directory may be down; it may
    answer a banned tenant itself."""

    def to_python(self, value: str) -> str:
        if value == "broken":
            raise LookupError("the tenant directory is down")
        if value == "banned":
            abort(403)
        if value not in current_app.config["TENANTS"] and value != session.get("tenant"):
            raise ValidationError()
        return value


def test_a_converter_reading_the_request_context_is_matched_as_flask_matches(
    core: Core,
) -> None:
    """The gate asked Flask's router outside any context: a converter reading current_app or
    the session raised RuntimeError out of the WSGI app, a bare 500 on every route using it,
    free ones too. A converter that fails on its own is 400 unroutable_path, as on Starlette;
    an HTTP answer of its own on a path no entry prices is still the app's."""
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /t/:t/report": "$0.01"})
    app.config["TENANTS"], app.secret_key = {"acme"}, "tests"
    app.url_map.converters["tenant"] = TenantConverter
    FourmicaX402(app)
    app.add_url_rule("/t/<tenant:t>/free", "free", lambda t: {"tenant": t})
    app.add_url_rule("/t/<tenant:t>/report", "report", lambda t: {"report": t})
    client = app.test_client()
    assert client.get("/t/acme/free").get_json() == {"tenant": "acme"}
    assert client.get("/t/own/free").status_code == 404
    with client.session_transaction() as held:
        held["tenant"] = "own"
    assert client.get("/t/own/free").get_json() == {"tenant": "own"}
    assert amount_of(client, "/t/own/report") == "10000"
    paid_get = client.get(
        "/t/acme/report", headers=payment_for(client, funded(core), "/t/acme/report")
    )
    assert paid_get.get_json() == {"report": "acme"}
    broken = client.get("/t/broken/free")
    assert (broken.status_code, broken.get_json()["error"]) == (400, "unroutable_path")
    assert client.get("/t/banned/free").status_code == 403


def test_the_second_match_in_context_leaves_the_apps_teardown_out_of_the_answer(
    core: Core,
) -> None:
    """The gate's match in a request context of its own ends with the app's request teardown,
    for a request its before_request never saw: a teardown reading what before_request set
    raised, and the gate answered 400 unroutable_path to every request on those routes."""
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /t/:t/report": "$0.01"})
    app.config["TENANTS"] = {"acme"}
    app.url_map.converters["tenant"] = TenantConverter
    app.before_request(lambda: setattr(g, "started", 1.0))
    app.teardown_request(lambda exc: g.started)  # raises when before_request did not run
    FourmicaX402(app)
    app.add_url_rule("/t/<tenant:t>/free", "free", lambda t: {"tenant": t})
    app.add_url_rule("/t/<tenant:t>/report", "report", lambda t: {"report": t})
    client = app.test_client()
    assert client.get("/t/acme/free").get_json() == {"tenant": "acme"}
    assert amount_of(client, "/t/acme/report") == "10000"


def test_check_warns_of_a_handler_the_table_prices_on_one_rule_only(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """``defaults=`` gives one view a second rule: /page/1 redirects to /page/, which the
    table did not price, so page 1 was served free and nothing said so."""
    routes = {"GET /page/<int:n>": "$0.01", "POST /users/": "$0.01"}
    app = make_app(pay_to=SELLER, core=core, routes=routes)
    ext = FourmicaX402(app)

    class Users(MethodView):  # POST /users/ priced; /users/<id> serves no POST: nothing free
        def get(self, user_id: int | None = None) -> Any:
            return {"user": user_id}

        def post(self) -> Any:
            return {"made": True}

        def delete(self, user_id: int) -> Any:
            return {"gone": user_id}

    users = Users.as_view("users")
    app.add_url_rule("/users/", view_func=users, methods=["GET", "POST"])
    app.add_url_rule("/users/<int:user_id>", view_func=users, methods=["GET", "DELETE"])

    @app.get("/page/", defaults={"n": 1})
    @app.get("/page/<int:n>")
    def page(n: int) -> Any:
        return {"n": n}

    @app.get("/marked/", defaults={"n": 1})
    @app.get("/marked/<int:n>")
    @paid(price="$0.01")
    def marked(n: int) -> Any:  # a marker prices every rule of its view: nothing to say
        return {"n": n}

    with caplog.at_level(logging.WARNING, logger="fourmica_x402"):
        ext.check()
    (said,) = [r.getMessage() for r in caplog.records if "same handler" in r.getMessage()]
    assert said.startswith("the route table prices /page/<int:n> but not /page/,")
    client = app.test_client()
    assert client.get("/page/2").status_code == 402 and client.get("/page/").status_code == 200


def test_check_warns_of_a_view_the_table_prices_under_one_endpoint_name_only(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """One view under two endpoint names (a blueprint registered twice, the usual way to
    version an API; ``add_url_rule`` twice): the table priced /v1/report, /v2/report served
    it free, and nothing said so (the warning knew a Flask view by its endpoint's name)."""
    routes = {"GET /v1/report": "$0.01", "GET /a": "$0.01"}
    app = make_app(pay_to=SELLER, core=core, routes=routes)
    ext = FourmicaX402(app)
    api = Blueprint("api", __name__)
    api.add_url_rule("/report", "report", lambda: {"report": True})
    app.register_blueprint(api, url_prefix="/v1")
    app.register_blueprint(api, url_prefix="/v2", name="api_v2")

    def same() -> Any:
        return {"same": True}

    app.add_url_rule("/a", "a", same)
    app.add_url_rule("/b", "b", same)
    with caplog.at_level(logging.WARNING, logger="fourmica_x402"):
        ext.check()
    said = sorted(r.getMessage() for r in caplog.records if "same handler" in r.getMessage())
    assert [m.partition(",")[0] for m in said] == [
        "the route table prices /a but not /b",
        "the route table prices /v1/report but not /v2/report",
    ]


def test_paid_above_the_route_decorator_fails_check_and_every_request(core: Core) -> None:
    """@paid over @app.get priced a function Flask never serves: the view ran for free."""
    app = make_app(pay_to=SELLER, core=core)
    ext = FourmicaX402(app)
    runs: list[str] = []

    @paid(price="$0.01")
    @app.get("/report")
    def report() -> Any:
        runs.append("report")
        return {"report": True}

    @app.get("/both")  # the same function served unpriced on one rule and priced on another
    def both() -> Any:
        return {"both": True}

    app.add_url_rule("/both-paid", "both_paid", paid(price="$0.02")(both))
    with pytest.raises(ConfigurationError, match="report is routed without its @paid price"):
        ext.check()
    resp = app.test_client().get("/report")
    assert resp.status_code == 500 and resp.get_json()["error"] == "configuration_error"
    assert runs == []


def shared_view() -> Any:
    return {"shared": True}


def test_one_function_priced_in_one_app_and_free_in_another_passes_check(core: Core) -> None:
    """Not the decorator-order mistake: the priced form of the function is served somewhere."""

    def factory(priced: bool) -> tuple[Flask, FourmicaX402]:
        app = make_app(pay_to=SELLER, core=core)
        ext = FourmicaX402(app)
        app.add_url_rule("/free", "free", shared_view)
        if priced:
            app.add_url_rule("/paid", "paid", paid(price="$0.01")(shared_view))
        return app, ext

    apps = [factory(True), factory(True), factory(False)]  # a factory called again, an admin app
    for _, ext in apps:
        ext.check()

    @dataclasses.dataclass
    class Callable:  # unhashable (eq=True): priced, though not checked
        def __call__(self) -> Any:
            return {"callable": True}

    assert paid(price="$0.01")(Callable()) is not None


def test_check_passes_and_runs_once_routes_exist(core: Core) -> None:
    ext = FourmicaX402(pay_to=SELLER, core=core, routes={"GET /items/:id": "$0.02"})
    with pytest.raises(ConfigurationError, match="init_app"):
        ext.check()
    app = Flask(__name__)
    ext.init_app(app)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return {"item": item_id}

    ext.check()
    assert amount_of(app.test_client(), "/items/4") == "20000"


def test_check_prices_paid_views_on_the_app_settings(core: Core) -> None:
    """A @paid view without a payTo anywhere fails check(), before any buyer sees it."""
    app = make_app(core=core)
    ext = FourmicaX402(app)

    @app.get("/premium")
    @paid("$0.01")
    def premium() -> Any:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match="payTo"):
        ext.check()


def _undecorated(view: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # no functools.wraps: the mark is hidden
        return view(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("installed", [False, True])
def test_paid_view_without_a_payment_for_it_is_refused(
    core: Core, installed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """No extension (or a decorator hiding the mark): the view never runs unpaid (503)."""
    app = make_app(pay_to=SELLER, core=core)
    if installed:
        FourmicaX402(app)
    runs: list[str] = []

    @app.get("/premium")
    @_undecorated
    @paid("$0.01")
    def premium() -> Any:
        runs.append("premium")
        return {"ok": True}

    with caplog.at_level(logging.ERROR, logger="fourmica_x402"):
        resp = app.test_client().get("/premium")
    assert resp.status_code == 503 and runs == []
    assert resp.get_json()["error"] == "payment_not_enforced"
    assert resp.headers["cache-control"] == "no-store"
    assert "without a payment" in caplog.text


def test_a_content_length_of_digits_int_refuses_is_served_or_refunded_never_a_500(
    core: Core,
) -> None:
    """'²' is a digit to ``str.isdigit`` but not to ``int``: the body's size is unknown then,
    and whatever fails after the settle is refunded."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"POST /premium": "$0.01"})
    FourmicaX402(app)

    @app.post("/premium")
    def premium() -> dict[str, int]:
        return {"secret": 42}

    client, buyer = app.test_client(), funded(core)
    headers = payment_for(client, buyer, "/premium", "POST")
    resp = client.post("/premium", headers=headers, environ_overrides={"CONTENT_LENGTH": "\xb2"})
    assert resp.status_code == 200 and resp.get_json() == {"secret": 42}
    assert core.position(buyer.address, network=NETWORK).locked == 10_000
    assert client.get("/nothing", environ_overrides={"CONTENT_LENGTH": "\xb2"}).status_code == 404


def test_two_prices_on_one_view_fail_where_it_is_decorated() -> None:
    """``@paid`` twice: the outer price was charged and the inner one accepted it."""

    def view() -> str:
        return "ok"

    with pytest.raises(ConfigurationError, match="more than one price"):
        paid(price="$0.01")(paid(price="$1.00")(view))
    same = paid(price="$0.01")
    assert same(same(view)) is not None  # the same price twice is one price


def test_paid_async_view(core: Core) -> None:
    pytest.importorskip("asgiref")  # Flask's async views: flask[async]
    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    FourmicaX402(app)

    @app.get("/slow")
    @paid("$0.01")
    async def slow() -> Any:
        await asyncio.sleep(0)
        return {"payer": g.payment.payer}

    client = app.test_client()
    buyer = funded(core)
    resp = client.get("/slow", headers=payment_for(client, buyer, "/slow"))
    assert resp.status_code == 200 and resp.get_json() == {"payer": buyer.address}


def test_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "fourmica_x402.adapters.flask")
    with pytest.raises(ImportError, match=r'pip install "fourmica-x402\[flask\]"'):
        importlib.import_module("fourmica_x402.adapters.flask")


def test_a_paid_rule_serving_options_answers_it_without_running_the_view(core: Core) -> None:
    """OPTIONS is never priced; a @paid rule listing it refused 503 even with a payment."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    FourmicaX402(app)
    runs: list[str] = []

    @app.route("/any", methods=["GET", "POST", "OPTIONS"])
    @paid(price="$0.01")
    def any_method() -> dict[str, str]:
        runs.append(request.method)
        return {"method": request.method}

    client = app.test_client()
    headers = payment_for(client, funded(core), "/any")
    for sent in ({}, headers):
        resp = client.options("/any", headers=sent)
        assert resp.status_code == 200 and resp.get_data() == b""
        assert resp.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert runs == [] and core.guarantees() == []
    assert client.get("/any", headers=headers).status_code == 200 and runs == ["GET"]


@pytest.mark.parametrize("entry", ["GET /report", "* /report"])
def test_a_table_priced_rule_serving_options_answers_it_without_running_the_view(
    core: Core, entry: str
) -> None:
    """A view listing OPTIONS beside a priced method ran for OPTIONS, unpaid, and served
    what the GET sells. Flask's own OPTIONS (added by itself) still answers as before."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={entry: "$0.01"})
    FourmicaX402(app)
    runs: list[str] = []

    @app.route("/report", methods=["GET", "POST", "OPTIONS"])
    def report() -> dict[str, str]:
        runs.append(request.method)
        return {"report": "paid content"}

    @app.get("/auto")  # Flask adds OPTIONS and answers it itself
    def auto() -> dict[str, str]:
        runs.append("auto")
        return {"auto": "free"}

    client = app.test_client()
    resp = client.options("/report")
    assert resp.status_code == 200 and resp.get_data() == b""
    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    resp = client.options("/auto")
    assert resp.status_code == 200 and "GET" in resp.headers["Allow"]
    assert runs == [] and core.guarantees() == []
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and runs == ["GET"]


@pytest.mark.parametrize(
    ("methods", "priced", "free"),
    [(["GET", "OPTIONS"], None, "OPTIONS"), (["GET", "POST"], ["GET"], "POST")],
)
@pytest.mark.parametrize("paid_first", [True, False])
def test_what_paid_answers_unpaid_is_answered_before_a_cache_decorator_above_it(
    core: Core, methods: list[str], priced: list[str] | None, free: str, paid_first: bool
) -> None:
    """Flask-Caching's ``@cache.cached`` goes right below the route decorator, above
    ``@paid``, and keys its entries by path, not method. ``@paid`` answered an OPTIONS its rule
    lists, and a method it does not price, inside the view: the paid GET's cached answer went
    to them, free; or the cache kept that empty 200 (or 405) and the next paid GET got it,
    charged for a view that never ran."""
    from flask_caching import Cache

    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    cache = Cache(app, config={"CACHE_TYPE": "SimpleCache"})
    FourmicaX402(app)
    runs: list[str] = []

    @app.route("/report", methods=methods)
    @cache.cached(timeout=60)
    @paid("$0.01", methods=priced)
    def report() -> dict[str, str]:
        runs.append(request.method)
        return {"report": "paid content"}

    client, buyer = app.test_client(), funded(core)
    headers = payment_for(client, buyer, "/report")
    if paid_first:
        resp = client.get("/report", headers=headers)
        assert resp.status_code == 200 and resp.get_json() == {"report": "paid content"}
    unpaid = client.open("/report", method=free)
    assert unpaid.status_code == (200 if free == "OPTIONS" else 405)
    assert b"paid content" not in unpaid.get_data()
    assert "GET" in unpaid.headers["Allow"] and "POST" not in unpaid.headers["Allow"]
    if not paid_first:
        resp = client.get("/report", headers=headers)
        assert resp.status_code == 200 and resp.get_json() == {"report": "paid content"}
    assert runs == ["GET"]
    app.extensions["fourmica_x402"].gate.flush()
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


def test_a_body_short_of_its_content_length_is_refunded(core: Core) -> None:
    """WSGI servers do not check that a body is as long as its Content-Length: a body that
    ended short (a file truncated after it was measured, a generator that stopped early) was
    charged, the client getting an incomplete read. A whole body is still charged."""
    from flask import Response

    app = make_app(pay_to=SELLER, core=core, routes={"GET /short": "$0.01", "GET /whole": "$0.01"})
    FourmicaX402(app)

    @app.get("/short")
    def short() -> Any:
        return Response(iter([b"0123456789"]), headers={"Content-Length": "100000"})

    @app.get("/whole")
    def whole() -> Any:
        return Response(iter([b"01234", b"56789"]), headers={"Content-Length": "10"})

    client = app.test_client()
    buyer = funded(core)
    for path in ("/short", "/whole"):
        resp = client.get(path, headers=payment_for(client, buyer, path))
        assert resp.status_code == 200 and resp.get_data() == b"0123456789"
    app.extensions["fourmica_x402"].gate.flush()
    states = sorted(g.state for g in core.guarantees(address=buyer.address))
    assert states == ["payable", "voided"]
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


def test_a_body_that_fails_after_its_last_declared_byte_is_delivered(core: Core) -> None:
    """The generator raised once its whole Content-Length had gone out (closing an upstream
    connection, say): the client read the whole answer, and was refunded all the same."""
    from flask import Response

    app = make_app(pay_to=SELLER, core=core, routes={"GET /lingers": "$0.01"})
    FourmicaX402(app)

    @app.get("/lingers")
    def lingers() -> Any:
        def body() -> Any:
            yield b"0123456789"
            raise RuntimeError("closing an upstream connection failed")

        return Response(body(), headers={"Content-Length": "10"})

    client = app.test_client()
    buyer = funded(core)
    resp = client.get("/lingers", headers=payment_for(client, buyer, "/lingers"), buffered=False)
    chunks = iter(resp.response)
    assert resp.status_code == 200 and next(chunks) == b"0123456789"
    with pytest.raises(RuntimeError):
        next(chunks)
    app.extensions["fourmica_x402"].gate.flush()
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["payable"]


@pytest.mark.parametrize(("written", "sold"), [(b"0123456789", True), (b"01234", False)])
def test_a_wsgi_app_that_fails_after_writing_its_whole_body_is_charged(
    core: Core, written: bytes, sold: bool
) -> None:
    """A WSGI app writing its answer through ``start_response``'s ``write()`` (PEP 3333's
    imperative form), then failing (closing an upstream connection): the server had taken
    every declared byte, the client read the whole answer, and was refunded all the same. An
    app that fails before its last declared byte is still refunded."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware
    from werkzeug.test import Client

    def report(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "10")])
        write(written)
        raise RuntimeError("closing an upstream connection failed")

    middleware = PaymentMiddleware(report, pay_to=SELLER, core=core, routes={"GET /r": "$0.01"})
    client = Client(middleware)
    buyer = funded(core)
    headers = payment_for(client, buyer, "/r")
    with pytest.raises(RuntimeError):  # the server logs it; the client has the whole body
        client.get("/r", headers=headers)
    middleware.gate.flush()
    [record] = middleware.gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == (
        ("delivered", "delivered") if sold else ("failed", "refunded")
    )
    [guarantee] = core.guarantees(address=buyer.address)
    assert guarantee.state == ("payable" if sold else "voided")


def test_a_body_closed_before_the_server_asked_past_its_last_chunk_is_refunded(
    core: Core,
) -> None:
    """The server took the whole body's one chunk, failed to write it (the client reset the
    connection) and closed the body: every byte was handed out, none is known received."""
    from flask import Response

    app = make_app(pay_to=SELLER, core=core, routes={"GET /once": "$0.01"})
    FourmicaX402(app)

    @app.get("/once")
    def once() -> Any:
        return Response(iter([b"0123456789"]), headers={"Content-Length": "10"})

    client = app.test_client()
    buyer = funded(core)
    resp = client.get("/once", headers=payment_for(client, buyer, "/once"), buffered=False)
    assert resp.status_code == 200 and next(iter(resp.response)) == b"0123456789"
    resp.close()  # the write failed: the server closes the body without asking for more
    app.extensions["fourmica_x402"].gate.flush()
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]


def test_a_layer_inside_the_gate_that_reroutes_a_request_never_runs_a_priced_view_unpaid(
    core: Core,
) -> None:
    """A WSGI wrapper installed on ``app.wsgi_app`` before the extension (a method override,
    a script-name rewrite) changes the request after the gate priced it: the rule Flask then
    dispatches is checked against what the gate priced, and a priced one the request did not
    pay for is refused (503) rather than served free. Paid requests still go through."""
    runs: list[str] = []
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /items/<n>": "$0.01"})

    def rewrite(inner: Any) -> Any:
        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            method = environ.pop("HTTP_X_HTTP_METHOD_OVERRIDE", "")
            if method:
                environ["REQUEST_METHOD"] = method.upper()
            prefix = environ.pop("HTTP_X_SCRIPT_NAME", "")
            if prefix and environ["PATH_INFO"].startswith(prefix):
                environ["SCRIPT_NAME"] = prefix
                environ["PATH_INFO"] = environ["PATH_INFO"][len(prefix) :]
            return inner(environ, start_response)

        return wsgi

    client = _items_behind(app, rewrite, runs)
    overridden = client.post("/items/1", headers={"X-HTTP-Method-Override": "GET"})
    assert (overridden.status_code, overridden.get_json()["error"]) == (
        503,
        "payment_not_enforced",
    )
    rewritten = client.get("/shop/items/1", headers={"X-Script-Name": "/shop"})
    assert rewritten.status_code == 503 and runs == []
    assert client.put("/items/1").status_code == 200 and runs == ["PUT"]  # free: unchanged
    buyer = funded(core)
    paid_get = client.get("/items/2", headers=payment_for(client, buyer, "/items/2"))
    assert paid_get.status_code == 200 and runs == ["PUT", "GET"]
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


def test_a_method_override_inside_the_gate_never_serves_a_method_priced_higher(
    core: Core,
) -> None:
    """A GET paid at its price, turned into a PUT the table prices higher by a WSGI wrapper
    inside the extension: the payment was taken for the rule, whatever its method."""
    runs: list[str] = []
    routes = {"GET /items/<n>": "$0.01", "PUT /items/<n>": "$1.00"}
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes=routes)

    def override(inner: Any) -> Any:
        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            environ["REQUEST_METHOD"] = environ.pop("HTTP_X_HTTP_METHOD_OVERRIDE", "GET")
            return inner(environ, start_response)

        return wsgi

    client = _items_behind(app, override, runs)
    paying = payment_for(client, funded(core), "/items/1")
    put = client.get("/items/1", headers={**paying, "X-HTTP-Method-Override": "PUT"})
    assert (put.status_code, put.get_json()["error"]) == (503, "payment_not_enforced")
    assert runs == []


def test_a_payment_is_not_kept_for_a_free_method_a_wrapper_inside_the_gate_turns_it_into(
    core: Core,
) -> None:
    """A GET paid at its price, turned into the free PUT by a WSGI wrapper inside the
    extension: the free view answered 200 and the buyer was charged for a GET that never
    ran. Refused now (503), and the payment is not kept."""
    runs: list[str] = []
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /items/<n>": "$0.01"})

    def override(inner: Any) -> Any:
        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            method = environ.pop("HTTP_X_HTTP_METHOD_OVERRIDE", environ["REQUEST_METHOD"])
            environ["REQUEST_METHOD"] = method
            return inner(environ, start_response)

        return wsgi

    client = _items_behind(app, override, runs)
    buyer = funded(core)
    paying = payment_for(client, buyer, "/items/1")
    put = client.get("/items/1", headers={**paying, "X-HTTP-Method-Override": "PUT"})
    assert (put.status_code, put.get_json()["error"]) == (503, "payment_not_enforced")
    assert runs == [] and [g.state for g in core.guarantees()] in (["voided"], ["cancelled"])
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert client.put("/items/1").status_code == 200 and runs == ["PUT"]  # free: unchanged


@pytest.mark.parametrize("proxied", [False, True], ids=["plain", "proxyfix"])
def test_a_request_the_gate_let_through_runs_behind_proxyfix_too(core: Core, proxied: bool) -> None:
    """The gate's own decisions stand at the router's check: a priced route an
    ``on_protected_request`` hook granted runs, ProxyFix inside the extension or not (the
    gate reads a forwarded copy of the request there)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    from fourmica_x402.gate import GRANT

    def grant(request: Any, route: Any) -> Any:
        return GRANT if request.header("x-subscriber") == "yes" else None

    app = make_app()
    if proxied:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_host=1)  # type: ignore[method-assign]
    FourmicaX402(
        app,
        pay_to=SELLER,
        network=NETWORK,
        core=core,
        routes={"GET /report": "$0.01"},
        on_protected_request=grant,
    )
    app.add_url_rule("/report", "report", lambda: {"report": "full"})
    client = app.test_client()
    assert client.get("/report").status_code == 402
    granted = client.get("/report", headers={"X-Subscriber": "yes"})
    assert granted.status_code == 200 and granted.get_json() == {"report": "full"}


def test_a_wsgi_app_inside_two_gates_is_paid_once(core: Core) -> None:
    """Two WSGI gates around one app (a mounted app with its own): the inner one saw the
    outer one's guarantee again and refused it, so the outer refunded and nothing was ever
    sold. A request an outer gate settled goes through the inner one now."""
    from fourmica_x402.adapters.wsgi import PAYMENT_KEY, PaymentMiddleware
    from werkzeug.test import Client

    from fourmica_x402 import PaymentConfig

    runs: list[str] = []

    def report(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(environ[PAYMENT_KEY].guarantee_id)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"report"]

    def gate(app: Any) -> Any:
        config = PaymentConfig(pay_to=SELLER, routes={"GET /report": "$0.01"}, core=core)
        return PaymentMiddleware(app, config=config)

    client = Client(gate(gate(report)))
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_data() == b"report" and len(runs) == 1
    [paid] = core.guarantees(address=buyer.address)
    assert (paid.guarantee_id, paid.state) == (runs[0], "payable")


@pytest.mark.parametrize("inner", ["wsgi", "flask"])
@pytest.mark.parametrize(
    ("outer_price", "inner_pay_to", "sold"),
    [("$0.001", SELLER, False), ("$0.02", PARTNER, False), ("$0.02", SELLER, True)],
)
def test_an_outer_wsgi_gate_never_sells_an_inner_gates_route_on_other_terms(
    core: Core, inner: str, outer_price: str, inner_pay_to: str, sold: bool
) -> None:
    """Two apps behind Werkzeug's dispatcher, the outer gate pricing ``/sub/*`` as a whole
    and the inner one ``/premium``: a plain WSGI app ran on the outer payment whatever the
    inner price and payee, a Flask app never ran. On the inner gate's terms (its network,
    asset and payTo, at least its price) it runs, once; on others 503, refunded."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    from fourmica_x402 import PaymentConfig

    runs: list[str] = []
    table = {"GET /premium": "$0.01"}
    if inner == "wsgi":

        def premium(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            runs.append(environ["PATH_INFO"])
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"premium"]

        config = PaymentConfig(pay_to=inner_pay_to, routes=table, core=core, network=NETWORK)
        sub: Any = PaymentMiddleware(premium, config=config)
    else:
        sub = make_app(pay_to=inner_pay_to, routes=table, core=core, network=NETWORK)
        FourmicaX402(sub)
        sub.add_url_rule("/premium", "premium", lambda: runs.append("/premium") or "premium")
    front = make_app()
    outer = PaymentConfig(pay_to=SELLER, routes={"GET /sub/*": outer_price}, core=core)
    client = Client(PaymentMiddleware(DispatcherMiddleware(front, {"/sub": sub}), config=outer))
    buyer = funded(core)
    resp = client.get("/sub/premium", headers=payment_for(client, buyer, "/sub/premium"))
    body = resp.get_data()  # delivered (a 503's is the gate's)
    [charged] = core.guarantees(address=buyer.address)
    if sold:
        assert (resp.status_code, body, runs) == (200, b"premium", ["/premium"])
        assert (charged.state, charged.amount) == ("payable", 20_000)
    else:
        assert (resp.status_code, resp.get_json()["error"]) == (503, "payment_not_enforced")
        assert runs == [] and charged.state in ("voided", "cancelled")
        assert core.position(buyer.address, network=NETWORK).locked == 0


def test_paid_on_a_method_view_method_prices_that_method(core: Core) -> None:
    """``@paid`` on a MethodView's ``get``: the route was never priced, so every GET answered
    503 payment_not_enforced and the report could not be bought. Now the route is priced for
    the methods marked (HEAD with GET); the others stay the class's own."""

    class Report(MethodView):
        @paid("$0.02")
        def get(self) -> Any:
            return {"report": g.payment.payer}

        def post(self) -> Any:
            return {"posted": True}

    app = make_app(pay_to=SELLER, core=core, network=NETWORK)
    FourmicaX402(app)
    app.add_url_rule("/report", view_func=Report.as_view("report"))
    client = app.test_client()
    assert amount_of(client, "/report") == "20000"
    assert client.head("/report").status_code == 402
    assert client.post("/report").get_json() == {"posted": True}  # not marked: free
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"report": buyer.address}
    assert core.position(buyer.address, network=NETWORK).locked == 20_000


def test_paid_on_a_plain_view_dispatch_request_prices_every_method(core: Core) -> None:
    """``@paid`` on a plain ``View``'s ``dispatch_request`` (its one handler): ``check()``
    passed, the route was listed nowhere and every request answered 503
    payment_not_enforced — a route that could never be bought. It prices the rule's methods,
    as ``@paid`` on Django's ``dispatch`` does."""
    from flask.views import View

    class Report(View):
        methods: ClassVar[list[str]] = ["GET", "POST"]

        @paid("$0.02")
        def dispatch_request(self) -> Any:
            return {"report": g.payment.payer}

    app = make_app(pay_to=SELLER, core=core, network=NETWORK)
    ext = FourmicaX402(app)
    app.add_url_rule("/report", view_func=Report.as_view("report"))
    ext.check()
    client = app.test_client()
    assert amount_of(client, "/report") == "20000"
    assert client.post("/report").status_code == 402  # both methods the rule serves
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"report": buyer.address}
    assert core.position(buyer.address, network=NETWORK).locked == 20_000


@pytest.mark.parametrize("package", ["flask_restful", "flask_restx"])
def test_paid_in_a_resources_method_decorators_prices_its_methods(core: Core, package: str) -> None:
    """Flask-RESTful's and flask-restx's ``Resource.method_decorators`` (a list for every
    method; Flask-RESTful's dict names methods) is how their users decorate a resource's
    handlers: ``@paid`` there was never seen, ``check()`` passed, and every request to the
    resource answered 503 payment_not_enforced, a resource that could never be bought."""
    restful = pytest.importorskip(package)

    class Report(restful.Resource):
        method_decorators: ClassVar[Any] = [paid("$0.03")]

        def get(self) -> Any:
            return {"report": g.payment.payer}

    class Notes(restful.Resource):
        method_decorators: ClassVar[Any] = {"post": [paid("$0.05")]}

        def get(self) -> Any:
            return {"notes": "free"}

        def post(self) -> Any:
            return {"posted": g.payment.payer}

    app = make_app(pay_to=SELLER, core=core, network=NETWORK)
    ext = FourmicaX402(app)
    api = restful.Api(app)
    api.add_resource(Report, "/report")
    if package == "flask_restful":  # a dict: Flask-RESTful only
        api.add_resource(Notes, "/notes")
    ext.check()
    client = app.test_client()
    assert amount_of(client, "/report") == "30000"
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"report": buyer.address}
    locked = 30_000
    if package == "flask_restful":
        assert client.get("/notes").get_json() == {"notes": "free"}
        headers = payment_for(client, buyer, "/notes", "POST")
        resp = client.post("/notes", headers=headers)
        assert resp.status_code == 200 and resp.get_json() == {"posted": buyer.address}
        locked += 50_000
    ext.gate.flush()
    assert core.position(buyer.address, network=NETWORK).locked == locked


def test_two_prices_on_the_methods_of_one_view_fail_at_start_up(core: Core) -> None:
    class Report(MethodView):
        @paid("$0.02")
        def get(self) -> Any:
            return {}

        @paid("$0.05")
        def post(self) -> Any:
            return {}

    app = make_app(pay_to=SELLER, core=core, network=NETWORK)
    ext = FourmicaX402(app)
    app.add_url_rule("/report", view_func=Report.as_view("report"))
    with pytest.raises(ConfigurationError, match="Report"):
        ext.check()


def test_a_table_entry_prices_a_method_view_method_its_marker_leaves_out(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """``@paid`` on ``get`` and a table entry for POST: the marker was taken for the whole
    route, POST ran free and the start-up log said the entry never applies."""

    class Report(MethodView):
        @paid("$0.02")
        def get(self) -> Any:
            return {"read": True}

        def post(self) -> Any:
            return {"posted": g.payment.payer}

    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"POST /report": "$0.05"})
    ext = FourmicaX402(app)
    app.add_url_rule("/report", view_func=Report.as_view("report"))
    with caplog.at_level("WARNING", logger="fourmica_x402"):
        ext.check()
    assert not any("own price" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    assert amount_of(client, "/report") == "20000"
    unpaid = client.post("/report")
    assert unpaid.status_code == 402
    offer = decode_payment_required(unpaid.headers["payment-required"]).accepts[0]
    assert offer.amount == "50000"
    buyer = funded(core)
    resp = client.post("/report", headers=payment_for(client, buyer, "/report", "POST"))
    assert resp.status_code == 200 and resp.get_json() == {"posted": buyer.address}
    assert core.position(buyer.address, network=NETWORK).locked == 50_000


def test_a_view_priced_apart_from_its_methods_at_another_price_fails_at_start_up(
    core: Core,
) -> None:
    """``decorators = [paid("$0.01")]`` on the class and ``@paid("$1")`` on ``get``: the
    view's price was charged and the $1 method served for it."""

    class Report(MethodView):
        decorators = [paid("$0.01")]  # noqa: RUF012 (Flask's own attribute)

        @paid("$1")
        def get(self) -> Any:
            return {}

    app = make_app(pay_to=SELLER, core=core, network=NETWORK)
    ext = FourmicaX402(app)
    app.add_url_rule("/report", view_func=Report.as_view("report"))
    with pytest.raises(ConfigurationError, match="more than one price"):
        ext.check()


def test_a_view_markers_left_out_method_stays_refused_not_sold(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """A function view's ``@paid(methods=["GET"])`` refuses the other methods itself (405):
    a table entry for POST there must not sell POST (a challenge, a payment, then 405)."""
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"POST /report": "$0.05"})
    ext = FourmicaX402(app)

    @app.route("/report", methods=["GET", "POST"])
    @paid("$0.02", methods=["GET"])
    def report() -> Any:
        return {"read": True}

    with caplog.at_level("WARNING", logger="fourmica_x402"):
        ext.check()
    assert any("'POST /report'" in r.getMessage() for r in caplog.records)  # never applies
    client = app.test_client()
    assert amount_of(client, "/report") == "20000"
    assert client.post("/report").status_code == 405 and core.guarantees() == []


def _premium_files(tmp_path: Path) -> Path:
    """A directory holding ``premium/a.txt``: the file a priced rule sells."""
    root = tmp_path / "files"
    (root / "premium").mkdir(parents=True)
    (root / "premium" / "a.txt").write_text("PAID CONTENT")
    return root


def _table_priced_files(core: Core, tmp_path: Path) -> Any:
    """An app selling ``/premium/<path:p>`` (a table entry in Flask's notation) beside a free
    ``send_from_directory`` catch-all over the same files."""
    from flask import send_from_directory

    root = _premium_files(tmp_path)
    app = make_app(pay_to=SELLER, core=core, routes={"GET /premium/<path:p>": "$0.01"})
    FourmicaX402(app)
    app.add_url_rule(
        "/premium/<path:p>", "premium", lambda p: send_from_directory(root / "premium", p)
    )
    app.add_url_rule("/<path:p>", "files", lambda p: send_from_directory(root, p))
    return app


@pytest.mark.parametrize("path", ["/./premium/a.txt", "/x/../premium/a.txt"])
def test_a_free_file_server_never_serves_a_rule_the_table_prices_in_flask_notation(
    core: Core, tmp_path: Path, path: str
) -> None:
    """A free ``send_from_directory`` at ``/<path:p>`` holding the files of a priced
    ``/premium/<path:p>``: Flask routes ``/./premium/a.txt`` to the free rule, which resolves
    the dot segments itself. The entry, written as Flask writes the rule, did not match the
    path read that way, and the priced file went out free (docs/architecture.md, "Which
    route is priced": ambiguous encodings)."""
    from werkzeug.test import Client

    app = _table_priced_files(core, tmp_path)
    raw = {"PATH_INFO": path, "REQUEST_URI": path, "RAW_URI": path}  # as a server passes it
    resp = Client(app).get(path, environ_overrides=raw)
    assert resp.status_code == 400 and resp.get_json()["error"] == "ambiguous_path"
    assert app.test_client().get("/premium/a.txt").status_code == 402
    assert core.guarantees() == []


def test_a_free_file_server_never_serves_a_rule_paid_prices(core: Core, tmp_path: Path) -> None:
    """As above, the rule priced by ``@paid`` instead of a table entry: the check for a path
    a file server reads as a priced one knew only the table, and ``/./premium/a.txt`` went
    out free through the free catch-all (docs/architecture.md, "Which route is priced")."""
    from flask import send_from_directory
    from werkzeug.test import Client

    root = _premium_files(tmp_path)
    app = make_app(pay_to=SELLER, core=core)
    FourmicaX402(app)

    @app.get("/premium/<path:p>")
    @paid("$0.01")
    def premium(p: str) -> Any:
        return send_from_directory(root / "premium", p)

    app.add_url_rule("/<path:p>", "files", lambda p: send_from_directory(root, p))
    for path in ("/./premium/a.txt", "/x/../premium/a.txt"):
        raw = {"PATH_INFO": path, "REQUEST_URI": path, "RAW_URI": path}  # as a server passes it
        resp = Client(app).get(path, environ_overrides=raw)
        assert resp.status_code == 400 and resp.get_json()["error"] == "ambiguous_path", path
    assert app.test_client().get("/premium/a.txt").status_code == 402
    raw = {"PATH_INFO": "/./free.txt", "REQUEST_URI": "/./free.txt"}
    assert Client(app).get("/", environ_overrides=raw).status_code == 404  # near nothing priced
    assert core.guarantees() == []


def test_an_absolute_form_target_never_serves_a_priced_file_free(
    core: Core, tmp_path: Path
) -> None:
    """``GET http://host/./premium/a.txt``: the server hands the target over whole as the raw
    path; read alone, its dot segments resolved to no priced path, and the free catch-all
    served the priced file (docs/architecture.md, "Which route is priced")."""
    from werkzeug.test import Client

    app = _table_priced_files(core, tmp_path)
    uri = "http://localhost/./premium/a.txt"
    raw = {"PATH_INFO": "/./premium/a.txt", "REQUEST_URI": uri, "RAW_URI": uri}
    resp = Client(app).get("/", environ_overrides=raw)
    assert resp.status_code == 400 and resp.get_json()["error"] == "ambiguous_path"
    assert core.guarantees() == []


def test_a_paid_response_never_tells_a_cdn_to_store_it(core: Core) -> None:
    """``Cache-Control: private, no-store`` replaced the view's, but a CDN reads its own
    header first (``CDN-Cache-Control``, RFC 9213; ``Surrogate-Control``): one an
    ``after_request`` sets on every answer made the CDN store the paid response and hand it
    to unpaid clients (docs/protocol.md, "Paid responses"). A free answer keeps them."""
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /report": "$0.01"})
    FourmicaX402(app, idempotent_replay=True)
    app.add_url_rule("/report", "report", lambda: {"report": True})
    app.add_url_rule("/free", "free", lambda: {"free": True})
    cdn = {"CDN-Cache-Control": "max-age=600", "Cloudflare-CDN-Cache-Control": "max-age=600"}

    @app.after_request
    def cached(response: Any) -> Any:
        response.headers.update({**cdn, "Surrogate-Control": "max-age=600"})
        return response

    client = app.test_client()
    buyer = funded(core)
    headers = payment_for(client, buyer, "/report")
    for _ in range(2):  # the second: replayed
        resp = client.get("/report", headers=headers, buffered=True)
        app.extensions["fourmica_x402"].gate.flush()
        assert resp.status_code == 200 and resp.headers["cache-control"] == "private, no-store"
        sent = {k.lower() for k, _ in resp.headers.items()}
        assert not {"surrogate-control", *map(str.lower, cdn)} & sent, sent
    assert client.get("/free").headers["surrogate-control"] == "max-age=600"


def test_a_free_file_server_never_serves_a_rule_whose_converter_spans_segments(
    core: Core, tmp_path: Path
) -> None:
    """As above, the priced rule's converter matching ``/`` (``DocConverter``): the table
    entry, read as one path segment, never matched ``/docs/a/b.txt``, and ``/./docs/a/b.txt``
    went out free; the rule is read as Flask shapes it (docs/architecture.md, "Which route
    is priced")."""
    from flask import send_from_directory
    from werkzeug.test import Client

    root = tmp_path / "files"
    (root / "docs" / "a").mkdir(parents=True)
    (root / "docs" / "a" / "b.txt").write_text("PAID CONTENT")
    app = make_app(pay_to=SELLER, core=core, routes={"GET /docs/<doc:value>": "$0.01"})
    app.url_map.converters["doc"] = DocConverter
    FourmicaX402(app)
    app.add_url_rule(
        "/docs/<doc:value>", "docs", lambda value: send_from_directory(root / "docs", value)
    )
    app.add_url_rule("/<path:p>", "files", lambda p: send_from_directory(root, p))
    path = "/./docs/a/b.txt"
    raw = {"PATH_INFO": path, "REQUEST_URI": path, "RAW_URI": path}  # as a server passes it
    resp = Client(app).get(path, environ_overrides=raw)
    assert resp.status_code == 400 and resp.get_json()["error"] == "ambiguous_path"
    assert core.guarantees() == []


def test_a_file_a_front_server_sends_through_x_sendfile_is_charged(
    core: Core, tmp_path: Path
) -> None:
    """``USE_X_SENDFILE``: Flask answers with the file's size as Content-Length and no body,
    and the front server (Apache, nginx) sends the file itself. The gate took the empty body
    for one cut short and refunded every file it sold."""
    from flask import send_file

    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF" + b"x" * 5000)
    app = make_app(pay_to=SELLER, core=core, routes={"GET /report": "$0.01"})
    app.config["USE_X_SENDFILE"] = True
    FourmicaX402(app)

    @app.get("/report")
    def pdf() -> Any:
        return send_file(report)

    client = app.test_client()
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.headers["X-Sendfile"] == str(report)
    assert resp.headers["Content-Length"] == "5004" and resp.get_data() == b""
    app.extensions["fourmica_x402"].gate.flush()
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["payable"]


@pytest.mark.parametrize("settle", ["before", "after"])
def test_a_wsgi_app_that_turns_its_2xx_into_an_error_page_says_refunded(
    core: Core, settle: str
) -> None:
    """PEP 3333: an app that fails before its body may call ``start_response`` again with
    ``exc_info`` and an error page. The buyer was refunded, yet the 500 carried the header
    made for the 2xx: ``success: true``, as if charged. Served by wsgiref, which takes a new
    status until the headers went out."""
    import base64
    import http.client
    import json
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from fourmica_x402.adapters.wsgi import PaymentMiddleware
    from werkzeug.test import Client

    def report(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("the template failed")
        except RuntimeError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error page"]

    routes = {"GET /r": "$0.01"}
    middleware = PaymentMiddleware(report, pay_to=SELLER, core=core, routes=routes, settle=settle)
    buyer = funded(core)
    headers = payment_for(Client(middleware), buyer, "/r")
    quiet = type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None})
    server = make_server("127.0.0.1", 0, middleware, handler_class=quiet)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/r", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 500 and resp.read() == b"error page"
        result = json.loads(base64.b64decode(resp.headers["payment-response"]))
        conn.close()
    finally:
        server.server_close()
    assert (result["success"], result.get("errorReason")) == (False, "refunded")
    middleware.gate.flush()
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]


def test_the_gates_own_options_answer_sends_one_content_length(core: Core) -> None:
    """The gate answered an OPTIONS on a priced rule with its own ``Content-Length: 0`` and
    the WSGI middleware added another: two Content-Length lines, which nginx (1.23+) refuses
    from an upstream (a 502), failing every CORS preflight of a paid route behind it."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"GET /report": "$0.01"})
    FourmicaX402(app)

    @app.route("/report", methods=["GET", "OPTIONS"])
    def report() -> dict[str, str]:
        return {"report": "paid content"}

    resp = app.test_client().options("/report")
    assert resp.status_code == 200 and resp.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert resp.headers.getlist("Content-Length") == ["0"]


def _failing_after_its_body(core: Core) -> tuple[Any, TestBuyer, dict[str, str]]:
    """A gate selling ``GET /r`` whose app fails after its whole 6-byte body, werkzeug's
    ``DebuggedApplication`` inside the gate then starting its error page; a funded buyer and
    its payment headers for it."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware
    from werkzeug.debug import DebuggedApplication
    from werkzeug.test import Client

    def report(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        yield b"report"
        raise RuntimeError("the cleanup after the last chunk failed")

    inner = DebuggedApplication(report, evalex=False)
    middleware = PaymentMiddleware(inner, pay_to=SELLER, core=core, routes={"GET /r": "$0.01"})
    buyer = funded(core)
    return middleware, buyer, payment_for(Client(middleware), buyer, "/r")


def _on_wsgiref(app: Any, headers: dict[str, str]) -> tuple[int, bytes]:
    """``GET /r`` with ``headers`` answered by ``app`` under wsgiref on 127.0.0.1."""
    import http.client
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    quiet = type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None})
    server = make_server("127.0.0.1", 0, app, handler_class=quiet)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/r", headers=headers)
        resp = conn.getresponse()
        answer = resp.status, resp.read()
        conn.close()
        return answer
    finally:
        server.server_close()


def _judged(middleware: Any, core: Core, buyer: TestBuyer) -> list[str]:
    """The buyer's guarantees once the gate has judged the response (which ends in the
    server's thread: waited for, bounded)."""
    for _ in range(500):
        middleware.gate.flush()
        states = [g.state for g in core.guarantees(address=buyer.address)]
        if states != ["pending_validation"]:
            return states
        time.sleep(0.01)
    return states


def test_a_wsgi_body_taken_whole_stays_charged_when_an_error_page_follows(core: Core) -> None:
    """A 2xx body the server took to the last byte of its Content-Length was delivered,
    whatever follows (docs/protocol.md, "Delivery"). Here the app fails after its last chunk
    and werkzeug's ``DebuggedApplication`` inside the gate tries to start its error page (the
    server refuses: the headers went out). The gate took that late 500 for the answer: the
    buyer, holding the whole body, was refunded."""
    middleware, buyer, headers = _failing_after_its_body(core)
    assert _on_wsgiref(middleware, headers) == (200, b"report")
    assert _judged(middleware, core, buyer) == ["payable"]


def _guide(environ: dict[str, Any], start_response: Any) -> Any:  # starts as it is read
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    yield b"guide"


@pytest.mark.parametrize("kind", ["flask", "generator"])
def test_a_paid_request_a_dispatcher_inside_the_gate_sends_to_another_app_is_not_charged(
    core: Core, kind: str
) -> None:
    """A ``DispatcherMiddleware`` on ``app.wsgi_app`` before the extension mounts a free docs
    app under a path the table prices (``GET /files/*``). The gate priced the request by the
    Flask app's rule, the dispatcher sent it to the docs app, which Flask's router check never
    sees: the buyer was charged $0.50 for a free page no priced route served. Withheld now
    (503), and refunded; the Flask app's own rule is still sold."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    docs: Any = Flask(__name__) if kind == "flask" else _guide
    if kind == "flask":
        docs.add_url_rule("/guide", "guide", lambda: {"guide": "free"})
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"GET /files/*": "$0.50"})
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/files/docs": docs})  # type: ignore[method-assign]
    ext = FourmicaX402(app)
    app.add_url_rule("/files/<path:name>", "files", lambda name: {"file": name})
    client = app.test_client()
    buyer = funded(core)
    resp = client.get("/files/docs/guide", headers=payment_for(client, buyer, "/files/docs/guide"))
    assert (resp.status_code, resp.get_json()["error"]) == (503, "payment_not_enforced")
    assert ext.gate is not None
    ext.gate.flush()
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    assert core.position(buyer.address, network=NETWORK).locked == 0
    sold = client.get("/files/a.txt", headers=payment_for(client, buyer, "/files/a.txt"))
    assert sold.status_code == 200 and sold.get_json() == {"file": "a.txt"}
    assert core.position(buyer.address, network=NETWORK).locked == 500_000


def test_a_paid_request_through_a_layer_copying_the_environ_is_still_sold(core: Core) -> None:
    """A WSGI layer inside the extension that hands Flask a copy of the environ (as some
    error trackers do) still reaches the Flask app: its paid answer is sold, not withheld."""
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"GET /report": "$0.01"})
    inner = app.wsgi_app
    app.wsgi_app = lambda environ, start: inner(dict(environ), start)  # type: ignore[method-assign]
    FourmicaX402(app)
    app.add_url_rule("/report", "report", lambda: {"report": "paid content"})
    client = app.test_client()
    buyer = funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"report": "paid content"}
    assert core.position(buyer.address, network=NETWORK).locked == 10_000


@pytest.mark.parametrize("where", ["app", "blueprint"])
def test_a_method_override_in_a_later_before_request_never_delivers_a_method_priced_higher(
    core: Core, where: str
) -> None:
    """A ``before_request`` hook run after the extension's (registered after
    ``FourmicaX402(app)``, or a blueprint's) takes the method from ``X-HTTP-Method-Override``:
    the router check had passed the paid GET ($0.01), then the MethodView ran its PUT priced
    $1.00, charged at the GET's price. Its answer is withheld now (503), and refunded."""
    runs: list[str] = []
    routes = {"GET /items/<n>": "$0.01", "PUT /items/<n>": "$1.00"}
    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes=routes)
    FourmicaX402(app)
    hooks: Any = app if where == "app" else Blueprint("shop", __name__)

    @hooks.before_request
    def override() -> None:
        if method := request.headers.get("X-HTTP-Method-Override"):
            request.method = method.upper()

    class Item(MethodView):
        def get(self, n: str) -> dict[str, str]:
            runs.append("GET")
            return {"get": n}

        def put(self, n: str) -> dict[str, str]:
            runs.append("PUT")
            return {"put": n}

    hooks.add_url_rule("/items/<n>", view_func=Item.as_view("item"))
    if where == "blueprint":
        app.register_blueprint(hooks)
    client = app.test_client()
    buyer = funded(core)
    paying = payment_for(client, buyer, "/items/1")
    put = client.get("/items/1", headers={**paying, "X-HTTP-Method-Override": "PUT"})
    assert (put.status_code, put.get_json()["error"]) == (503, "payment_not_enforced")
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    assert core.position(buyer.address, network=NETWORK).locked == 0
    got = client.get("/items/2", headers=payment_for(client, buyer, "/items/2"))
    assert got.status_code == 200 and got.get_json() == {"get": "2"}
    assert runs == ["PUT", "GET"]  # the view ran: register such a hook before the extension


def test_an_error_page_a_buffering_layer_sends_instead_of_a_body_taken_whole_is_refunded(
    core: Core,
) -> None:
    """A WSGI layer outside the gate that buffers the answer (to compress it, say) takes the
    body to its last byte, then the app fails and ``DebuggedApplication`` inside the gate starts
    its error page. Nothing went out yet, so that layer accepts the new start (PEP 3333) and
    the buyer gets the 500 page: the body was never delivered. The gate took the start for one
    after a delivered body, ignored it, and charged the buyer for an error page."""
    middleware, buyer, headers = _failing_after_its_body(core)

    def buffering(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        started: list[Any] = []
        chunks: list[bytes] = []

        def start(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            started[:] = [status, headers]  # nothing sent yet: a later start replaces it all
            chunks.clear()
            return chunks.append

        body = middleware(environ, start)
        try:
            for chunk in body:
                chunks.append(chunk)
        finally:
            getattr(body, "close", lambda: None)()
        data = b"".join(chunks)
        headers = [(k, v) for k, v in started[1] if k.lower() != "content-length"]
        start_response(started[0], [*headers, ("Content-Length", str(len(data)))])
        return [data]

    status, body = _on_wsgiref(buffering, headers)
    assert status == 500 and not body.startswith(b"report")
    assert _judged(middleware, core, buyer) != ["payable"]


def test_an_error_page_a_server_ignores_after_a_body_it_sent_whole_still_charges(
    core: Core,
) -> None:
    """Starlette's ``WSGIMiddleware`` (a WSGI app mounted in an ASGI one; uvicorn's
    ``--interface wsgi`` is alike) sends the head at the first start and ignores a later one
    (returning no ``write``): the body went out whole, then ``DebuggedApplication`` inside
    the gate started its error page. The buyer had the whole body, yet the gate took the
    ignored start for a buffering layer's and refunded it (docs/protocol.md, "Delivery")."""
    import warnings

    from starlette.testclient import TestClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated: only its import warns
        from starlette.middleware.wsgi import WSGIMiddleware

    middleware, buyer, headers = _failing_after_its_body(core)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        served = TestClient(WSGIMiddleware(middleware), raise_server_exceptions=False)
        got = served.get("/r", headers=headers)
    assert got.status_code == 200 and got.content.startswith(b"report")  # the buyer has it all
    assert _judged(middleware, core, buyer) == ["payable"]


def test_a_chunked_request_body_reaches_the_tab_endpoint(core: Core) -> None:
    """A buyer's client that streams its body (``Transfer-Encoding: chunked``, no
    ``Content-Length``: httpx with a generator, a browser's streamed ``fetch``) opened no
    tab: the gate read the body by its ``Content-Length`` alone, so under gunicorn (which
    marks such a body ``wsgi.input_terminated``, as PEP 3333's extension says) the tab
    endpoint read nothing and answered 400, while the app's own views read the same body."""
    import io
    import json

    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /report": "$0.01"})
    FourmicaX402(app)
    app.add_url_rule("/report", "report", lambda: {"report": True})
    client = app.test_client()
    req = decode_payment_required(client.get("/report").headers["payment-required"]).accepts[0]
    buyer = funded(core)
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    environ = EnvironBuilder("/x402/tab", method="POST", content_type="application/json")
    chunked = environ.get_environ()
    chunked.pop("CONTENT_LENGTH", None)  # as gunicorn hands a chunked body over
    chunked.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    chunked["wsgi.input"] = io.BytesIO(json.dumps(body).encode())
    answer, status, _ = run_wsgi_app(app, chunked, buffered=True)
    assert status.startswith("200"), (status, b"".join(answer))
    name, value = payment_header(buyer, req, json.loads(b"".join(answer)))
    paid = client.get("/report", headers={name: value})
    assert paid.status_code == 200 and paid.get_json() == {"report": True}


def test_send_file_answers_a_range_charged_and_a_304_refunded(core: Core, tmp_path: Path) -> None:
    """``send_file`` is conditional (docs/protocol.md, "Paid responses"): a ``Range`` it
    answers 206 is delivered and charged; an ``If-None-Match`` naming the file's ETag is a
    304, refunded (the buyer already holds the content), and so is a 416."""
    from flask import send_file

    served = tmp_path / "paid.bin"
    served.write_bytes(bytes(range(256)) * 16)
    app = make_app(pay_to=SELLER, core=core, network=NETWORK, routes={"GET /file": "$0.01"})
    FourmicaX402(app)
    app.add_url_rule("/file", "file", lambda: send_file(served))
    client, buyer = app.test_client(), funded(core)
    whole = client.get("/file", headers=payment_for(client, buyer, "/file"), buffered=True)
    assert whole.status_code == 200 and len(whole.get_data()) == 4096
    asked = {206: {"Range": "bytes=0-0"}, 304: {"If-None-Match": whole.headers["etag"]}}
    asked[416] = {"Range": "bytes=999999-"}
    for status, extra in asked.items():
        paid = {**payment_for(client, buyer, "/file"), **extra}
        resp = client.get("/file", headers=paid, buffered=True)
        assert resp.status_code == status and resp.headers["cache-control"] == "private, no-store"
    app.extensions["fourmica_x402"].gate.flush()
    states = [g.state for g in reversed(core.guarantees())]
    assert states == ["payable", "payable", "voided", "voided"], states


@pytest.mark.parametrize("proxied", [False, True], ids=["host", "forwarded-host"])
def test_a_host_trusted_hosts_refuses_gets_flasks_400_not_the_gates_answers(
    core: Core, proxied: bool
) -> None:
    """Flask refuses a Host outside ``TRUSTED_HOSTS`` (400) on every path, its rules too; the
    gate's own endpoints answered it first: a discovery listing whose resources named that
    host, and a tab opened through it (behind ``ProxyFix`` too, by the forwarded host)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = make_app(pay_to=SELLER, network=NETWORK, core=core)
    app.config["TRUSTED_HOSTS"] = ["shop.example.com"]
    if proxied:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_host=1)  # type: ignore[method-assign]

    @app.get("/premium")
    @paid(price="$0.01")
    def premium() -> Any:
        return {"paid": True}

    FourmicaX402(app).check()
    client = app.test_client()

    def host(name: str) -> dict[str, str]:
        return {"Host": "shop.example.com", "X-Forwarded-Host": name} if proxied else {"Host": name}

    challenge = client.get("/premium", headers=host("shop.example.com"))
    assert challenge.status_code == 402
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": TestBuyer.new().address}
    body["paymentRequirements"] = req.to_dict()
    evil = host("evil.example.net")
    refused = [
        client.get("/premium", headers=evil),
        client.get("/.well-known/x402", headers=evil),
        client.post("/x402/tab", json=body, headers=evil),
    ]
    assert [r.status_code for r in refused] == [400, 400, 400]
    assert all(b"evil.example.net/" not in r.get_data() for r in refused)
    assert b"tabId" not in refused[2].get_data()
    assert "tabId" in client.post("/x402/tab", json=body, headers=host("shop.example.com")).json


@pytest.mark.parametrize("per_method", [False, True])
def test_a_cache_keyed_by_path_serves_a_table_priced_answer_to_a_free_method(
    core: Core, per_method: bool
) -> None:
    """A table entry prices GET on a view that serves POST free: Flask-Caching, keyed by path,
    answers the free POST with the paid GET's entry (docs/architecture.md, "Flask: auth,
    limits, CORS and caches around `@paid`"); a key per method, as the docs say, keeps them
    apart."""
    from flask_caching import Cache

    app = make_app(pay_to=SELLER, network=NETWORK, core=core, routes={"GET /report": "$0.01"})
    cache = Cache(app, config={"CACHE_TYPE": "SimpleCache"})
    FourmicaX402(app)
    key = (lambda: f"{request.method} {request.path}") if per_method else "view/%s"

    @app.route("/report", methods=["GET", "POST"])
    @cache.cached(timeout=60, key_prefix=key)
    def report() -> dict[str, str]:
        return {"report": "paid content" if request.method == "GET" else "free"}

    client, buyer = app.test_client(), funded(core)
    resp = client.get("/report", headers=payment_for(client, buyer, "/report"))
    assert resp.status_code == 200 and resp.get_json() == {"report": "paid content"}
    free = client.post("/report").get_json()
    assert free == ({"report": "free"} if per_method else {"report": "paid content"})
