"""The buyer keeps and checks the Core's certificate for what it paid (docs/buyer.md,
"Certificates"): a real WSGI seller whose handler asks for the certificate (so the result header
carries it), paid through the httpx transport and the requests adapter; a certificate changed on
the way is kept but marked unverified; one the seller did not pass on is fetched from the Core
API read (``GET /core/tabs/{tab}/guarantees/{req}``), served here by its neutral handler."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fourmica_x402.client import (
    RECEIPT_KEY,
    PaymentTransport,
    ReceiptLedger,
    SpendingPolicy,
    fetch_certificate,
    fetch_public_key,
)
from fourmica_x402.core import Core
from fourmica_x402.networks import default_asset
from fourmica_x402.server.base import Call
from fourmica_x402.server.context import Service
from fourmica_x402.server.core_api import guarantee, public_params
from fourmica_x402.testing import NETWORK, TestBuyer

PAY_TO = "0x" + "33" * 20


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(f"sqlite:///{tmp_path / 'core.db'}")
    yield made
    made.close()


def seller_app(core: Core) -> Any:
    """/premium reads the payment's certificate (the result header then carries it);
    /plain does not (the Core makes it later, when asked)."""
    from fourmica_x402.adapters.wsgi import PAYMENT_KEY, PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        payment = environ[PAYMENT_KEY]
        body: dict[str, Any] = {"paid": payment.guarantee_id}
        if environ["PATH_INFO"] == "/premium":
            body["certified"] = payment.certificate is not None
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps(body).encode()]

    routes = {"GET /premium": "$0.01", "GET /plain": "$0.01"}
    return PaymentMiddleware(app, config=PaymentConfig(pay_to=PAY_TO, routes=routes, core=core))


class ChangeCertificate(httpx.BaseTransport):
    """Passes traffic through, swapping the certificate's signature for another one's."""

    def __init__(self, inner: httpx.BaseTransport, signature: str) -> None:
        self.inner, self.signature = inner, signature

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        content = response.read()
        headers = []
        for name, value in response.headers.multi_items():
            if name.lower() == "payment-response":
                settle = json.loads(base64.b64decode(value))
                settle["extra"]["certificate"]["signature"] = self.signature
                value = base64.b64encode(json.dumps(settle).encode()).decode()
            if name.lower() != "content-length":
                headers.append((name, value))
        return httpx.Response(response.status_code, headers=headers, content=content)


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def pay(transport: str, core: Core, path: str, ledger: ReceiptLedger) -> Any:
    """GET ``path`` as a funded buyer through ``transport``; the receipt."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    app = seller_app(core)
    if transport == "httpx":
        payer = PaymentTransport(buyer.key, ledger=ledger, transport=httpx.WSGITransport(app=app))
        with httpx.Client(transport=payer, base_url="http://seller.test") as client:
            response = client.get(path)
        assert response.status_code == 200, response.text
        return response.extensions[RECEIPT_KEY]
    import requests

    from fourmica_x402.client.requests_adapter import PaymentAdapter

    with served(app) as base, requests.Session() as session:
        session.mount("http://", PaymentAdapter(buyer.key, ledger=ledger))
        got = session.get(base + path, timeout=30)
    assert got.status_code == 200, got.text
    return got.fourmica_receipt


@pytest.mark.parametrize("transport", ["httpx", "requests"])
def test_a_certificate_the_seller_passes_on_is_checked_and_kept(
    core: Core, transport: str, tmp_path: Path
) -> None:
    ledger = ReceiptLedger(tmp_path / "receipts.db")
    receipt = pay(transport, core, "/premium", ledger)
    assert receipt.outcome == "paid" and receipt.certificate is not None
    assert receipt.certificate_verified is True
    assert receipt.certificate == core.certify(receipt.guarantee_id).to_json()
    assert receipt.verify_certificate(core.operator.public_key)
    assert re.fullmatch(r"http://[^/]+/x402", receipt.core_url)
    [kept] = list(ReceiptLedger(tmp_path / "receipts.db"))  # another connection to the file
    assert kept == receipt


def test_a_changed_certificate_is_kept_but_not_verified(core: Core) -> None:
    buyer, other = TestBuyer.new(), TestBuyer.new()
    for who in (buyer, other):
        core.deposit(who.address, 1_000_000, network=NETWORK)
    # a genuine signature of the Core's, over another guarantee
    signed, expected = other.pay(core, PAY_TO, 10_000)
    foreign = core.certify(core.accept(signed, expected).guarantee_id).to_json()["signature"]
    inner = ChangeCertificate(httpx.WSGITransport(app=seller_app(core)), foreign)
    with httpx.Client(
        transport=PaymentTransport(buyer.key, transport=inner), base_url="http://seller.test"
    ) as client:
        response = client.get("/premium")
    receipt = response.extensions[RECEIPT_KEY]
    assert response.status_code == 200 and receipt.outcome == "paid"
    assert receipt.certificate["signature"] == foreign and receipt.certificate_verified is False
    assert not receipt.verify_certificate(core.operator.public_key)


def test_a_certificate_not_passed_on_is_fetched_from_the_core_api(core: Core) -> None:
    receipt = pay("httpx", core, "/plain", ReceiptLedger())
    assert receipt.outcome == "paid" and receipt.certificate is None
    assert receipt.certificate_verified is None and receipt.claims

    service = Service(core)

    def core_api(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        found = re.fullmatch(r"/core/tabs/([^/]+)/guarantees/([^/]+)", path)
        if found:
            call = Call(path={"tab_id": found[1], "req_id": found[2]})
            status, body = guarantee(service, call)
        else:
            status, body = public_params(service, Call(origin="http://core.test"))
        start_response(f"{status} X", [("content-type", "application/json")])
        return [json.dumps(body).encode()]

    with httpx.Client(transport=httpx.WSGITransport(app=core_api)) as client:
        certificate = fetch_certificate(receipt, core_url="http://core.test", client=client)
        key = fetch_public_key("http://core.test", client=client)
        assert key == core.operator.public_key
        missing = type(receipt)(
            outcome="paid", url="u", tab_id=receipt.tab_id, request_id="0x999", core_url="http://x"
        )
        assert fetch_certificate(missing, core_url="http://core.test", client=client) is None
    assert certificate is not None
    from dataclasses import replace

    assert replace(receipt, certificate=certificate).verify_certificate(key)
    with pytest.raises(ValueError, match="names no Core"):
        fetch_certificate(type(receipt)(outcome="paid", url="u"))


def test_a_core_answering_too_much_or_not_an_object_is_a_clean_error() -> None:
    """The Core a seller named may answer anything: a huge body was read whole, and a JSON
    list raised AttributeError or TypeError instead of an error naming the problem."""
    import httpx as _httpx

    from fourmica_x402.client import fetch_public_key

    def core(request: _httpx.Request) -> _httpx.Response:
        if request.url.host == "huge.test":
            return _httpx.Response(200, content=b"[" + b"0," * (2 * 1024 * 1024) + b"0]")
        return _httpx.Response(200, json=[1, 2, 3])

    with _httpx.Client(transport=_httpx.MockTransport(core)) as http:
        with pytest.raises(ValueError, match="too large"):
            fetch_public_key("http://huge.test", client=http)
        with pytest.raises(ValueError, match="no public_key"):
            fetch_public_key("http://list.test", client=http)


def test_the_core_reads_never_pay_through_a_paying_client(core: Core) -> None:
    """docs/buyer.md, "Certificates": ``fetch_public_key`` and ``fetch_certificate`` only
    read. Given the buyer's paying client, a Core URL (the seller names it: ``rpcUrl``) that
    answered 402 got a guarantee signed for each read, then served its answer."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps({"public_key": "0x" + "11" * 48}).encode()]

    routes = {
        "GET /paid/core/public-params": "$0.01",
        "GET /paid/core/tabs/:t/guarantees/:r": "$0.01",
    }
    seller = PaymentMiddleware(app, config=PaymentConfig(pay_to=PAY_TO, routes=routes, core=core))
    buyer, ledger = TestBuyer.new(), ReceiptLedger()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    policy = SpendingPolicy(max_per_request="$0.05")
    inner = httpx.WSGITransport(app=seller)
    payer = PaymentTransport(buyer.key, policy=policy, ledger=ledger, transport=inner)
    with httpx.Client(transport=payer) as client:
        with pytest.raises(httpx.HTTPStatusError, match="402"):
            fetch_public_key("http://seller.test/paid", client=client)
        paid = pay("httpx", core, "/plain", ReceiptLedger())
        with pytest.raises(httpx.HTTPStatusError, match="402"):
            fetch_certificate(paid, core_url="http://seller.test/paid", client=client)
    assert list(ledger) == [] and policy.spent(default_asset(NETWORK).address) == 0
