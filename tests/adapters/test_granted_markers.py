"""``on_protected_request`` answering ``GRANT`` on a route a per-handler marker prices
(docs/operations.md, "Seller options and hooks"): the handler runs free, handed a ``Payment``
marked ``granted`` (amount 0, no guarantee); nothing is charged or recorded. The grant is bound
to the route it was made for, as a payment is: it never opens another marked route.

Django's ``@paid`` is in tests/adapters/test_django.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from flask import Flask, g
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid, http_middleware
from fourmica_x402.adapters.flask import FourmicaX402 as FlaskX402
from fourmica_x402.adapters.flask import paid
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.gate import GRANT, Payment, RequestView
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers

SELLER = TestBuyer.new().address
KEY = {"x-api-key": "subscriber-1"}


@pytest.fixture
def core(tmp_path: Path) -> Any:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


def subscribers(request: RequestView, route: Any) -> Any:
    """Free for subscribers, on /report only (never on /other)."""
    if request.header("x-api-key") == "subscriber-1" and route.key.endswith("/report"):
        return GRANT
    return None


def nothing_charged(core: Core, gate: Any) -> None:
    gate.flush()
    assert core.guarantees() == [] and gate.records.query() == []


def reroute_asgi(app: Any) -> Any:
    """A layer below the gate that sends /report to /other when asked (a path rewrite)."""

    async def layer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"x-reroute", b"1") in scope["headers"]:
            scope = {**scope, "path": "/other", "raw_path": b"/other"}
        await app(scope, receive, send)

    return layer


def reroute_wsgi(app: Any) -> Any:
    def layer(environ: Any, start_response: Any) -> Any:
        if environ.get("HTTP_X_REROUTE") == "1":
            environ["PATH_INFO"] = "/other"
        return app(environ, start_response)

    return layer


@pytest.fixture(params=["asgi", "http"])
def fastapi_form(request: Any) -> str:
    return str(request.param)


def test_a_grant_serves_a_fastapi_paid_route_free(core: Core, fastapi_form: str) -> None:
    app = FastAPI()
    app.add_middleware(reroute_asgi)  # below the gate
    seen: list[Payment] = []
    if fastapi_form == "asgi":
        gate = FourmicaX402(
            app, pay_to=SELLER, network=NETWORK, core=core, on_protected_request=subscribers
        ).gate
    else:
        config = PaymentConfig(
            pay_to=SELLER, network=NETWORK, core=core, on_protected_request=subscribers
        )
        app.middleware("http")(middleware := http_middleware(config))
        gate = middleware.gate

    @app.get("/report")
    def report(payment: Payment = Paid("$0.01")) -> dict[str, Any]:  # noqa: B008
        seen.append(payment)
        return {"payer": payment.payer, "granted": payment.granted}

    @app.get("/other")
    def other(payment: Payment = Paid("$0.02")) -> dict[str, Any]:  # noqa: B008
        seen.append(payment)
        return {"payer": payment.payer}

    with TestClient(app) as client:
        assert client.get("/report").status_code == 402  # ungranted: asked to pay
        granted = client.get("/report", headers=KEY)
        assert granted.status_code == 200, granted.text
        assert granted.json() == {"payer": "", "granted": True}
        assert "payment-response" not in granted.headers
        assert seen[-1].amount == 0 and seen[-1].guarantee_id is None
        assert client.get("/other", headers=KEY).status_code == 402  # bound to /report
        moved = client.get("/report", headers={**KEY, "x-reroute": "1"})
        assert moved.status_code == 503 and len(seen) == 1  # granted /report, not /other
        assert moved.json()["error"] == "payment_not_enforced"
    nothing_charged(core, gate)


def test_a_grant_on_a_fastapi_table_route_and_a_paid_one_still_pays(
    core: Core, fastapi_form: str
) -> None:
    app = FastAPI()
    seen: list[Any] = []
    routes = {"GET /report": "$0.01"}
    options: dict[str, Any] = {"pay_to": SELLER, "network": NETWORK, "core": core}
    if fastapi_form == "asgi":
        gate = FourmicaX402(app, routes=routes, on_protected_request=subscribers, **options).gate
    else:
        config = PaymentConfig(routes=routes, on_protected_request=subscribers, **options)
        app.middleware("http")(middleware := http_middleware(config))
        gate = middleware.gate

    @app.get("/report")
    def report(request: Request) -> dict[str, Any]:
        return {"granted": request.state.payment.granted}  # as a marked route's

    @app.get("/other")
    def other(payment: Payment = Paid("$0.02")) -> dict[str, Any]:  # noqa: B008
        seen.append(payment)
        return {"payer": payment.payer}

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    with TestClient(app) as client:
        assert client.get("/report").status_code == 402
        assert client.get("/report", headers=KEY).json() == {"granted": True}
        challenge = client.get("/other", headers=KEY)
        assert challenge.status_code == 402  # the grant is /report's alone
        bought = client.get("/other", headers=paid_headers(client, buyer, challenge))
    assert bought.status_code == 200 and bought.json() == {"payer": buyer.address}
    assert seen[-1].amount == 20_000 and not seen[-1].granted
    gate.flush()
    assert [g.state for g in core.guarantees()] == ["payable"]


def test_a_grant_serves_a_flask_paid_view_free(core: Core) -> None:
    app = Flask(__name__)
    app.wsgi_app = reroute_wsgi(app.wsgi_app)  # type: ignore[method-assign]  # below the gate
    payments = FlaskX402(
        app,
        pay_to=SELLER,
        network=NETWORK,
        core=core,
        routes={"GET /table": "$0.01"},
        on_protected_request=subscribers,
    )

    @app.get("/report")
    @paid(price="$0.01")
    def report() -> Any:
        return {"payer": g.payment.payer, "granted": g.payment.granted}

    @app.get("/other")
    @paid(price="$0.02")
    def other() -> Any:
        return {"payer": g.payment.payer}

    app.add_url_rule("/table", "table", lambda: {"table": "ok"})
    client = app.test_client()
    assert client.get("/report").status_code == 402
    granted = client.get("/report", headers=KEY)
    assert granted.status_code == 200, granted.text
    assert granted.get_json() == {"payer": "", "granted": True}
    assert client.get("/other", headers=KEY).status_code == 402  # bound to /report
    moved = client.get("/report", headers={**KEY, "x-reroute": "1"})
    assert moved.status_code == 503 and moved.get_json()["error"] == "payment_not_enforced"
    assert client.get("/table").status_code == 402  # a table route: as before
    assert client.get("/table", headers=KEY).status_code == 402  # not granted there
    nothing_charged(core, payments.gate)


def test_a_grant_on_a_metered_stream_route_streams_it_free(core: Core) -> None:
    """A metered route's handler sends its events through ``payment.stream`` (docs/protocol.md,
    "Metered streams"); a granted request's payment had no stream, so the handler, written as
    the docs show it, raised and the subscriber got a 500 instead of the free stream."""
    from starlette.responses import StreamingResponse

    from fourmica_x402 import RouteConfig, Slices

    app = FastAPI()
    routes = {"GET /report": RouteConfig(price="$0.01", slices=Slices(units=2))}
    gate = FourmicaX402(
        app,
        pay_to=SELLER,
        network=NETWORK,
        core=core,
        routes=routes,
        on_protected_request=subscribers,
    ).gate

    @app.get("/report")
    def report(request: Request) -> Any:
        body = request.state.payment.stream.events(["a", ("note", {"n": 2}), "c", "d", "e"])
        return StreamingResponse(body, media_type="text/event-stream")

    @app.get("/other")
    def other(payment: Payment = Paid("$0.02", slices=Slices(units=1))) -> Any:  # noqa: B008
        async def source() -> Any:
            for item in ("x", "y"):
                yield item

        return StreamingResponse(payment.stream.events(source()), media_type="text/event-stream")

    with TestClient(app) as client:
        assert client.get("/report").status_code == 402
        granted = client.get("/report", headers=KEY)
        assert granted.status_code == 200, granted.text
        assert granted.text == (
            'data: a\n\nevent: note\ndata: {"n":2}\n\ndata: c\n\ndata: d\n\ndata: e\n\n'
            'event: end\ndata: {"reason":"complete","slices":0}\n\n'
        )  # every event at once: no slice is asked for
        assert client.get("/other", headers=KEY).status_code == 402  # the grant is /report's
    nothing_charged(core, gate)


def test_a_grant_on_a_bundled_route_hands_the_handler_its_units(core: Core) -> None:
    """On a route sold by the unit the handler reads how many to serve off the payment
    (``payment.units``; docs/protocol.md says None only on a route without units). A granted
    request's payment said None there, so a handler serving ``payment.units`` records raised
    and the subscriber got a 500; a count the request gets wrong is its 400, as unpaid."""
    from fourmica_x402 import RouteConfig

    app = Flask(__name__)
    route = RouteConfig(
        price="$0.01", units=lambda request: int(request.query.removeprefix("n=")), unit="row"
    )
    payments = FlaskX402(
        app,
        pay_to=SELLER,
        network=NETWORK,
        core=core,
        routes={"GET /report": route},
        on_protected_request=subscribers,
    )

    @app.get("/report")
    def report() -> Any:
        return {"rows": list(range(g.payment.units)), "granted": g.payment.granted}

    client = app.test_client()
    assert client.get("/report?n=3").status_code == 402
    granted = client.get("/report?n=3", headers=KEY)
    assert granted.status_code == 200, granted.text
    assert granted.get_json() == {"rows": [0, 1, 2], "granted": True}
    bad = client.get("/report?n=x", headers=KEY)
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_units"
    nothing_charged(core, payments.gate)
