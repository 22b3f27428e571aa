"""A paid answer's cookies are the first caller's: idempotent replay neither stores nor
replays them (docs/operations.md, ``idempotent_replay``)."""

from __future__ import annotations

import json
from typing import Any

import flask
import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.flask import FourmicaX402
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer

SELLER = TestBuyer.new().address
OPTIONS: dict[str, Any] = dict(
    pay_to=SELLER, network=NETWORK, routes={"GET /premium": "$0.01"}, idempotent_replay=True
)


def _starlette(core: Core) -> Any:
    async def premium(request: Any) -> JSONResponse:
        answer = JSONResponse({"report": "paid"})
        answer.set_cookie("session", "s3cret-of-the-first-caller", httponly=True)
        return answer

    return PaymentMiddleware(Starlette(routes=[Route("/premium", premium)]), core=core, **OPTIONS)


def _flask(core: Core) -> Any:
    app = flask.Flask(__name__)

    @app.get("/premium")
    def premium() -> Any:
        answer = flask.jsonify(report="paid")
        answer.set_cookie("session", "s3cret-of-the-first-caller", httponly=True)
        return answer

    FourmicaX402(app, core=core, **OPTIONS)
    return app


@pytest.mark.parametrize("make", [_starlette, _flask], ids=["starlette", "flask"])
def test_a_replayed_answer_carries_no_cookie_and_none_is_stored(
    audited_core: Core, make: Any
) -> None:
    """Whoever held a used payment header got the first caller's session cookie back with
    the replayed answer, and the cookie sat in the records' stored headers."""
    app = make(audited_core)
    flask_app = make is _flask
    client = app.test_client() if flask_app else TestClient(app)
    gate = app.extensions["fourmica_x402"].gate if flask_app else app.gate

    def get(headers: dict[str, str] | None = None) -> Any:
        extra = {"buffered": True} if flask_app else {}  # a Flask body read whole
        return client.get("/premium", headers=headers, **extra)

    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    name, value = buyer.pay_challenge(audited_core, get().headers["payment-required"])
    first = get({name: value})
    gate.flush()  # the record written: the replay answers a delivered answer only
    assert first.status_code == 200 and "s3cret" in first.headers["set-cookie"]
    again = get({name: value})
    assert again.status_code == 200
    assert json.loads(again.data if flask_app else again.content) == {"report": "paid"}
    assert "set-cookie" not in again.headers and "Set-Cookie" not in again.headers
    with audited_core.store.transaction(write=False) as tx:
        stored = tx.all("SELECT response_headers FROM fx_records")
    assert stored and all("s3cret" not in (row[0] or "") for row in stored)


def test_a_cookie_an_older_release_stored_is_not_replayed(audited_core: Core) -> None:
    """A record an older release wrote kept the paid answer's Set-Cookie: replayed from it,
    the first caller's session went to whoever sent the used payment header again."""
    app = _starlette(audited_core)
    client = TestClient(app)
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    name, value = buyer.pay_challenge(
        audited_core, client.get("/premium").headers["payment-required"]
    )
    assert client.get("/premium", headers={name: value}).status_code == 200
    app.gate.flush()
    kept = [["content-type", "application/json"], ["set-cookie", "session=s3cret; HttpOnly"]]
    with audited_core.store.transaction() as tx:  # as the older release stored it
        tx.execute("UPDATE fx_records SET response_headers = ?", (json.dumps(kept),))
    again = client.get("/premium", headers={name: value})
    assert again.status_code == 200 and again.json() == {"report": "paid"}
    assert "set-cookie" not in again.headers
