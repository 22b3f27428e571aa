"""``fourmica-x402 reprice``, run as its own process against a seller's database while the seller
serves: the seller charges the new price from its next price read, records keep what each
payment paid, and a reset goes back (docs/operations.md, "Repricing"). Real SQLite file, real
subprocesses, the buyer client paying through Starlette's test client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.client import PaymentTransport
from fourmica_x402.core import Core
from fourmica_x402.records import Records
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import decode_payment_required

PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # Hardhat account #1 (public test key)


def reprice(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOURMICA_X402_")}
    command = [sys.executable, "-m", "fourmica_x402", "reprice", "--db", db, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def seller(core: Core) -> TestClient:
    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"paid": request.state.payment.amount})

    config = PaymentConfig(
        pay_to=PAY_TO, network=NETWORK, routes={"GET /premium": "$0.01"}, core=core, price_poll=0.0
    )
    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    return TestClient(app)


def charged(client: TestClient) -> int:
    resp = client.get("/premium")
    assert resp.status_code == 402
    return int(decode_payment_required(resp.headers["payment-required"]).accepts[0].amount)


def test_reprice_from_another_process_reaches_a_serving_seller(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    core = Core(db)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with seller(core) as client:
        payer = httpx.Client(
            transport=PaymentTransport(buyer.key, transport=client._transport),
            base_url="http://testserver",
        )
        assert charged(client) == 10_000
        assert payer.get("/premium").json() == {"paid": 10_000}
        done = reprice(db, "get /premium=$0.03")
        assert done.returncode == 0, done.stderr
        assert "GET /premium  $0.03" in done.stdout
        assert "a route key no seller prices changes nothing" in done.stderr  # a typo's fate
        assert charged(client) == 30_000
        assert payer.get("/premium").json() == {"paid": 30_000}
        listing = json.loads(reprice(db, "--json").stdout)
        assert listing["prices"] == {"GET /premium": "$0.03"}
        assert [c["source"] for c in listing["changes"]] == ["cli"]
        assert reprice(db, "--reset", "GET /premium").returncode == 0
        assert charged(client) == 10_000
        assert payer.get("/premium").json() == {"paid": 10_000}
    records = sorted(Records(core.store).query(route="GET /premium"), key=lambda r: r.record_id)
    assert [r.amount for r in records] == [10_000, 30_000, 10_000]
    assert core.position(buyer.address, network=NETWORK).locked == 50_000
    core.close()


def test_reprice_refuses_what_it_cannot_take(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    Core(db).close()
    cases: list[tuple[list[str], str]] = [
        (["GET /premium"], "is not ROUTE=PRICE"),
        (["GET /premium=lots"], "lots"),
        (["=$0.02"], "is not ROUTE=PRICE"),
        (["GET /premium=$99999999999999999999999"], "more than the most a Core keeps"),
    ]
    for args, needle in cases:
        done = reprice(db, *args)
        assert done.returncode == 2 and needle in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    missing = reprice(f"sqlite:///{tmp_path / 'nope.db'}", "GET /premium=$0.02")
    assert missing.returncode == 1 and "no Core database" in missing.stderr
    assert json.loads(reprice(db, "--json").stdout) == {"prices": {}, "changes": []}


def test_a_misspelled_route_is_logged_by_the_seller_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``reprice 'GET /premiun=…'`` is a change no seller of this app can apply: it used to
    be dropped without a word (docs/operations.md, "Repricing": an error log line)."""
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    core = Core(db)
    with seller(core) as client:
        assert charged(client) == 10_000
        assert reprice(db, "GET /premiun=$0.02").returncode == 0
        for _ in range(3):
            assert charged(client) == 10_000
    said = [r for r in caplog.records if "GET /premiun" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"
    assert "prices no such route" in said[0].getMessage()
    core.close()


def test_a_table_entry_a_marker_overrides_is_named_and_cannot_be_repriced(
    audited_core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``Paid`` price and a table entry on one route: the marker prices it. The entry was
    silent, and a reprice of it answered 200 and changed nothing that was charged."""
    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

    app = FastAPI()
    options = {"pay_to": PAY_TO, "network": NETWORK, "core": audited_core, "admin_token": "t"}
    FourmicaX402(app, routes={"GET /premium": "$1"}, **options)

    @app.get("/premium")
    def premium(payment: object = Paid("$0.01")) -> dict[str, str]:
        return {}

    with caplog.at_level("WARNING", logger="fourmica_x402"), TestClient(app) as client:
        assert charged(client) == 10_000  # the marker's price
        assert any("'GET /premium'" in r.getMessage() for r in caplog.records)
        auth = {"authorization": "Bearer t"}
        moot = client.post(
            "/x402/admin/prices", headers=auth, json={"prices": {"GET /premium": "$5"}}
        )
        assert moot.status_code == 400 and moot.json()["error"] == "unknown_route"
        assert "own price" in moot.json()["message"] and charged(client) == 10_000
        own = client.post(
            "/x402/admin/prices", headers=auth, json={"prices": {"* /premium": "$0.02"}}
        )
        assert own.status_code == 200 and charged(client) == 20_000


def test_two_markers_at_one_path_are_two_keys_and_a_reprice_of_one_leaves_the_other(
    audited_core: Core,
) -> None:
    """``GET /report`` at $0.01 and ``POST /report`` at $0.50, each priced by its own ``Paid``,
    shared the key ``* /report``: the listing showed the cheap one only, and repricing it sold
    the $0.50 POST at $0.02. The later one is keyed by its route's methods."""
    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

    app = FastAPI()
    options = {"pay_to": PAY_TO, "network": NETWORK, "core": audited_core, "admin_token": "t"}
    FourmicaX402(app, **options)

    @app.get("/report")
    def read(payment: object = Paid("$0.01")) -> dict[str, str]:
        return {}

    @app.post("/report")
    def write(payment: object = Paid("$0.50")) -> dict[str, str]:
        return {}

    def amount(client: TestClient, method: str) -> int:
        resp = client.request(method, "/report")
        assert resp.status_code == 402
        return int(decode_payment_required(resp.headers["payment-required"]).accepts[0].amount)

    auth = {"authorization": "Bearer t"}
    with TestClient(app) as client:
        listing = client.get("/x402/admin/prices", headers=auth).json()["routes"]
        assert sorted((row["route"], row["price"]) for row in listing) == [
            ("* /report", "$0.01"),
            ("POST /report", "$0.50"),
        ]
        resp = client.post(
            "/x402/admin/prices", headers=auth, json={"prices": {"* /report": "$0.02"}}
        )
        assert resp.status_code == 200
        assert (amount(client, "GET"), amount(client, "POST")) == (20_000, 500_000)
        resp = client.post(
            "/x402/admin/prices", headers=auth, json={"prices": {"POST /report": "$1"}}
        )
        assert resp.status_code == 200
        assert (amount(client, "GET"), amount(client, "POST")) == (20_000, 1_000_000)


def test_a_payment_for_one_marked_handler_does_not_pay_its_twin_at_the_same_price(
    audited_core: Core,
) -> None:
    """``GET /doc/{id}`` and ``DELETE /doc/{id}``, each with ``Paid("$0.01")``: one key, so one
    job hash, and a G-v2 payment signed for the GET ran the DELETE. The routes priced by table
    entries refuse that (``validation_policy_mismatch``); the markers' keys do now too."""
    from fastapi import FastAPI
    from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

    from fourmica_x402.testing import paid_headers

    app = FastAPI()
    options = {"pay_to": PAY_TO, "network": NETWORK, "core": audited_core, "admin_token": "t"}
    FourmicaX402(app, **options)
    ran: list[str] = []

    @app.get("/doc/{id}")
    def read(id: int, payment: object = Paid("$0.01")) -> dict[str, str]:
        ran.append("read")
        return {}

    @app.delete("/doc/{id}")
    def delete(id: int, payment: object = Paid("$0.01")) -> dict[str, str]:
        ran.append("delete")
        return {}

    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        listing = client.get("/x402/admin/prices", headers={"authorization": "Bearer t"}).json()
        keys = sorted(row["route"] for row in listing["routes"])
        assert keys == ["* /doc/{id}", "DELETE /doc/{id}"]
        headers = paid_headers(client, buyer, client.get("/doc/1"))
        refused = client.delete("/doc/1", headers=headers)
        assert refused.status_code == 402 and ran == []
        assert refused.json()["error"] == "validation_policy_mismatch"
        assert client.get("/doc/1", headers=headers).status_code == 200 and ran == ["read"]


def test_an_entry_spelled_as_the_markers_own_key_is_that_key_and_reprices_it(
    audited_core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """``@paid(methods=["GET"])`` on /x has the key "GET /x", the table entry's own spelling:
    a reprice of it is the handler's reprice (the only key the listing shows), not refused."""
    from flask import Flask
    from fourmica_x402.adapters.flask import FourmicaX402, paid

    app = Flask(__name__)

    @app.get("/x")
    @paid("$0.01", methods=["GET"])
    def x() -> str:
        return "paid"

    options = {"pay_to": PAY_TO, "network": NETWORK, "core": audited_core, "admin_token": "t"}
    with caplog.at_level("WARNING", logger="fourmica_x402"):
        FourmicaX402(app, routes={"GET /x": "$1"}, **options)
        client = app.test_client()

        def amount() -> int:
            resp = client.get("/x")
            assert resp.status_code == 402
            offer = decode_payment_required(resp.headers["payment-required"]).accepts[0]
            return int(offer.amount)

        assert amount() == 10_000
    assert not any("own price" in r.getMessage() for r in caplog.records)
    auth = {"authorization": "Bearer t"}
    listing = client.get("/x402/admin/prices", headers=auth).get_json()
    assert [row["route"] for row in listing["routes"]] == ["GET /x"]
    resp = client.post("/x402/admin/prices", headers=auth, json={"prices": {"GET /x": "$0.02"}})
    assert resp.status_code == 200 and amount() == 20_000


def test_a_route_both_priced_and_reset_in_one_call_is_refused(tmp_path: Path) -> None:
    """``reprice 'GET /x=$1' --reset 'GET /x'`` stored the reset and dropped the price without
    a word: which one was meant is not for the CLI to guess."""
    db = f"sqlite:///{tmp_path / 'seller.db'}"
    Core(db).close()
    done = reprice(db, "--reset", "GET /x", "get /x=$1")
    assert done.returncode == 2 and "both given a price and reset" in done.stderr
    assert json.loads(reprice(db, "--json").stdout)["prices"] == {}  # nothing was changed
