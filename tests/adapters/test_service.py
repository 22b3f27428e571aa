"""The Core as a service: facilitator API, Core API subset, sandbox, metrics, HttpFacilitator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.client import (
    RECEIPT_KEY,
    PaymentTransport,
    Receipt,
    fetch_certificate,
    fetch_public_key,
    verify_certificate,
)
from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.errors import ConfigurationError, Unavailable
from fourmica_x402.facilitator import HttpFacilitator
from fourmica_x402.gate import Gate
from fourmica_x402.service import create_app
from fourmica_x402.testing import (
    NETWORK,
    FakeClock,
    TestBuyer,
    http_scope,
    payment_header,
    test_policy,
)
from fourmica_x402.wire import (
    PaymentPayload,
    PaymentRequirements,
    ResourceInfo,
    decode_payment_required,
)

SELLER = TestBuyer.from_key(
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
).address  # test key
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


#: The operator's key of the ``client`` fixture's service: a service with keys settles only
#: for a caller holding one.
KEY = {"Authorization": "Bearer s3cret"}


def requirements(policy_extra: dict[str, Any] | None = None) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="4mica-credit",
        network=NETWORK,
        asset=USDC,
        amount="10000",
        pay_to=SELLER,
        extra={"tabEndpoint": "http://seller.test/x402/tab", **(policy_extra or {})},
    )


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    c = Core(str(tmp_path / "service.db"))
    yield c
    assert c.audit() == []
    c.close()


@pytest.fixture
def client(core: Core) -> Iterator[TestClient]:
    with TestClient(create_app(core, sandbox=True, api_key="s3cret", tick_interval=None)) as c:
        yield c


def signed_payload(
    client: TestClient,
    buyer: TestBuyer,
    req: PaymentRequirements,
    *,
    guarantee_version: int = 1,
    **changes: Any,
) -> dict[str, Any]:
    tab = client.post(
        "/tabs",
        json={
            "userAddress": buyer.address,
            "recipientAddress": SELLER,
            "network": NETWORK,
            "erc20Token": USDC,
            "guaranteeVersion": guarantee_version,
        },
    ).json()
    _, header = payment_header(buyer, req, tab, **changes)
    return json.loads(base64.b64decode(header))


def test_facilitator_api_shapes(client: TestClient, core: Core) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    supported = client.get("/supported").json()
    assert {"scheme": "4mica-credit", "network": NETWORK, "x402Version": 2} in supported["kinds"]
    assert supported["extensions"] == [] and supported["signers"] == {}
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = requirements()
    payload = signed_payload(client, buyer, req)
    body = {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req.to_dict()}
    assert client.post("/verify", json=body).json() == {
        "isValid": True,
        "invalidReason": None,
        "payer": buyer.address,
    }
    settled = client.post("/settle", json=body, headers=KEY).json()
    assert settled["success"] is True and settled["error"] is None and settled["txHash"] is None
    assert settled["networkId"] == NETWORK and settled["transaction"].startswith("0x")
    assert len(bytes.fromhex(settled["certificate"]["signature"][2:])) == 96
    again = client.post("/settle", json=body, headers=KEY).json()
    assert again["success"] is False and again["error"] == "replayed_request_id"
    assert client.post("/verify", json=body).json()["invalidReason"] == "replayed_request_id"
    bad = client.post("/verify", json={"paymentPayload": "nope"}).json()
    assert bad == {"isValid": False, "invalidReason": "malformed_payment"}


def settled(client: TestClient, core: Core, buyer: TestBuyer, key: str = "s3cret") -> str:
    """Fund ``buyer``, settle one of its payments to SELLER through /settle (with the operator's
    ``key``); its guarantee id."""
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = requirements()
    body = {
        "x402Version": 2,
        "paymentPayload": signed_payload(client, buyer, req),
        "paymentRequirements": req.to_dict(),
    }
    auth = {"Authorization": f"Bearer {key}"}
    return str(client.post("/settle", json=body, headers=auth).json()["transaction"])


def test_seller_endpoints_need_the_api_key(client: TestClient, core: Core) -> None:
    buyer = TestBuyer.new()
    gid = settled(client, core, buyer)
    assert client.post(f"/guarantees/{gid}/void", json={"by": SELLER}).status_code == 401
    voided = client.post(
        f"/guarantees/{gid}/void", json={"by": SELLER}, headers={"Authorization": "Bearer s3cret"}
    )
    assert voided.status_code == 200 and voided.json()["state"] == "voided"
    assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize(
    "keys", [{"api_key": ""}, {"api_key": "  "}, {"api_key": "op", "seller_keys": {"": SELLER}}]
)
def test_a_blank_token_is_refused_at_start_up(core: Core, keys: dict[str, Any]) -> None:
    """A request without an Authorization header presents the empty token: a blank key
    would make every caller the operator (or that seller)."""
    with pytest.raises(ConfigurationError, match="empty"):
        create_app(core, tick_interval=None, webhooks=False, **keys)


def test_a_seller_key_that_is_the_operators_key_is_refused_at_start_up(core: Core) -> None:
    """The operator's token given to a seller made that seller the operator: it voided,
    scored and settled for every address and managed the webhooks."""
    with pytest.raises(ConfigurationError, match="operator") as info:
        create_app(core, api_key="Op-T0ken", seller_keys={"Op-T0ken": SELLER}, tick_interval=None)
    assert "Op-T0ken" not in str(info.value)


def test_seller_keys_act_for_their_own_seller_only(core: Core) -> None:
    """Sellers sharing one service cannot refund, cancel or pre-settle each other's payments."""
    other = TestBuyer.new().address
    buyer = TestBuyer.new()
    app = create_app(
        core,
        api_key="operator",
        seller_keys={"key-a": SELLER, "key-b": other},
        tick_interval=None,
        webhooks=False,
    )
    mine, theirs = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    with TestClient(app) as client:
        gid = settled(client, core, buyer, "operator")
        # B's key may not void A's guarantee, not even by claiming to be A...
        refused = client.post(f"/guarantees/{gid}/void", json={"by": SELLER}, headers=theirs)
        assert refused.status_code == 403 and refused.json()["error"] == "key_not_for_address"
        # ...and as itself it is not the recipient.
        as_b = client.post(f"/guarantees/{gid}/void", json={"by": other}, headers=theirs)
        assert as_b.status_code == 403 and as_b.json()["error"] == "not_recipient"
        scored = client.post(
            f"/guarantees/{gid}/validation",
            json={"validator": SELLER, "score": 0},
            headers=theirs,
        )
        assert scored.status_code == 403 and scored.json()["error"] == "key_not_for_address"
        assert core.position(buyer.address, network=NETWORK).locked == 10_000  # untouched
        wrong = {"Authorization": "Bearer key-c"}
        assert (
            client.post(f"/guarantees/{gid}/void", json={"by": SELLER}, headers=wrong).status_code
            == 401
        )
        # A's own key, and the operator's, may.
        voided = client.post(f"/guarantees/{gid}/void", json={"by": SELLER}, headers=mine)
        assert voided.status_code == 200 and voided.json()["state"] == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0
        # /core/guarantees: a seller key settles guarantees made out to its own address only.
        tab = core.open_tab(buyer.address, SELLER, network=NETWORK, asset=USDC)
        _, header = payment_header(buyer, requirements(), tab.to_json())
        signed = json.loads(base64.b64decode(header))["payload"]
        refused = client.post("/core/guarantees", json=signed, headers=theirs)
        assert refused.status_code == 403 and refused.json()["reason"] == "key_not_for_address"
        assert client.post("/core/guarantees", json=signed, headers=mine).status_code == 200
        [second] = [g for g in core.guarantees(address=buyer.address) if g.state == "payable"]
        # /settle likewise: with keys, nobody settles a payment for a payTo not their own.
        req = requirements()
        body = {
            "x402Version": 2,
            "paymentPayload": signed_payload(client, buyer, req),
            "paymentRequirements": req.to_dict(),
        }
        assert client.post("/settle", json=body).status_code == 401
        refused = client.post("/settle", json=body, headers=theirs)
        assert refused.status_code == 403 and refused.json()["error"] == "key_not_for_address"
        assert core.position(buyer.address, network=NETWORK).locked == 10_000  # nothing settled
        own = client.post("/settle", json=body, headers=mine).json()
        assert own["success"] is True
        assert core.position(buyer.address, network=NETWORK).locked == 20_000
        gone = client.post(
            f"/guarantees/{own['transaction']}/void", json={"by": SELLER}, headers=mine
        )
        assert gone.json()["state"] == "voided"
        operator = {"Authorization": "Bearer operator"}  # acts for any seller
        by_operator = client.post(
            f"/guarantees/{second.guarantee_id}/void", json={"by": SELLER}, headers=operator
        )
        assert by_operator.status_code == 200 and by_operator.json()["state"] == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0


def test_sandbox_and_read_api(client: TestClient, core: Core, tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    buyer = TestBuyer.new().address
    assert (
        client.post(
            "/sandbox/deposit", json={"address": buyer, "amount": "$2"}, headers=auth
        ).json()["collateral"]
        == 2_000_000
    )
    assert (
        client.post("/sandbox/deposit", json={"address": buyer, "amount": "$2"}).status_code == 401
    )
    closed = client.post("/sandbox/cycles/close", json={}, headers=auth).json()
    assert closed["status"] == "closed"
    assert (
        client.get(f"/api/cycles/{closed['cycle_id']}").json()["cycle"]["cycle_id"]
        == closed["cycle_id"]
    )
    assert any(p["address"] == buyer for p in client.get("/api/positions").json())
    assert client.get("/api/events").json()[0]["type"] == "collateral.deposited"
    with TestClient(create_app(Core(str(tmp_path / "other.db")), tick_interval=None)) as plain:
        assert (
            plain.post("/sandbox/deposit", json={"address": buyer, "amount": 1}).status_code == 403
        )


def test_core_api_subset_and_metrics(client: TestClient, core: Core) -> None:
    params = client.get("/core/public-params").json()
    assert len(params["public_key"]) == 48 and params["ethereum_http_rpc_url"].endswith("/rpc")
    tab = client.post(
        "/core/payment-tabs",
        json={
            "user_address": TestBuyer.new().address,
            "recipient_address": SELLER,
            "erc20_token": USDC,
        },
    ).json()
    assert tab["tab_id"] == tab["id"] and tab["next_req_id"] == "0x0"
    for ttl, lasts in ((0, None), ("3600", 3600), (None, None)):  # the Core API's ttl, as before
        body = {"user_address": TestBuyer.new().address, "recipient_address": SELLER, "ttl": ttl}
        made = client.post("/core/payment-tabs", json=body)
        assert made.status_code == 200, made.text
        assert lasts is None or made.json()["ttl_seconds"] == lasts
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    body = {
        "x402Version": 2,
        "paymentPayload": signed_payload(client, buyer, requirements()),
        "paymentRequirements": requirements().to_dict(),
    }
    # before any settle the success ratio is absent (0.0 would read as every settle failing)
    assert "fourmica_settle_success_ratio" not in client.get("/metrics").text
    client.post("/settle", json=body, headers=KEY)
    client.post("/settle", json=body, headers=KEY)
    text = client.get("/metrics").text
    assert 'fourmica_guarantees_accepted_total{network="eip155:84532"} 1.0' in text
    # per seller and asset too, from the database
    seller = f'asset="{USDC}",network="{NETWORK}",seller="{SELLER}"'
    assert f"fourmica_seller_guarantees_accepted_total{{{seller}}} 1.0" in text
    assert f"fourmica_payment_amount_average_atomic{{{seller}}} 10000.0" in text
    assert 'fourmica_guarantees_rejected_total{reason="replayed_request_id"} 1.0' in text
    assert "fourmica_settle_success_ratio 0.5" in text and "fourmica_request_seconds_bucket" in text
    assert "Clearing cycles" in client.get("/").text


def _settle_at_once(metrics: Any, start: threading.Barrier, ok: bool, errors: list[Any]) -> None:
    start.wait(10)
    try:
        metrics.settled(ok, None if ok else "amount_mismatch")
    except Exception as exc:
        errors.append(exc)


def test_the_first_settles_at_once_are_all_counted(core: Core) -> None:
    """The success ratio was registered at the first settle without a lock: the first settles
    arriving together on a threaded server registered it twice, and one settle that had gone
    through answered an exception. Eight threads count their first settles at once."""
    from fourmica_x402.server.metrics import Metrics

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the race shows within a few hundred
    try:
        for _ in range(400):  # bounded
            metrics, start, errors = Metrics(core), threading.Barrier(8), []
            args = [(metrics, start, i % 4 != 0, errors) for i in range(8)]
            threads = [threading.Thread(target=_settle_at_once, args=a) for a in args]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert errors == []
            assert "fourmica_settle_success_ratio 0.75" in metrics.render().decode()
    finally:
        sys.setswitchinterval(switch)


def test_a_buyer_fetches_the_certificate_of_its_payment(client: TestClient, core: Core) -> None:
    """``GET /core/tabs/{tab_id}/guarantees/{req_id}`` (the Core API's guarantee read, no key
    needed) through the buyer's fetch_certificate; it verifies with the buyer's own claims."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    payload = signed_payload(client, buyer, requirements())
    req = requirements().to_dict()
    body = {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req}
    settled = client.post("/settle", json=body, headers=KEY).json()
    claims = payload["payload"]["claims"]
    receipt = Receipt(
        outcome="paid",
        url="http://seller.test/premium",
        tab_id=claims["tab_id"],
        request_id=claims["req_id"],
        guarantee_id=settled["transaction"],
        claims=json.dumps(claims),
        core_url="http://testserver",
    )
    certificate = fetch_certificate(receipt, client=client)
    assert certificate == settled["certificate"]
    key = fetch_public_key(receipt.core_url, client=client)
    domain = client.get("/core/public-params").json()["active_guarantee_domain_separator"]
    assert verify_certificate(certificate, claims, key, guarantee_domain=bytes.fromhex(domain[2:]))
    other = TestBuyer.new()  # the same certificate does not verify for another buyer's claims
    assert not verify_certificate(certificate, {**claims, "user_address": other.address}, key)
    read = client.get(f"/core/tabs/{claims['tab_id']}/guarantees/{claims['req_id']}").json()
    assert (read["guarantee_id"], read["from_address"]) == (settled["transaction"], buyer.address)
    assert fetch_certificate(replace(receipt, request_id="0x99"), client=client) is None
    assert client.get("/core/tabs/nothex/guarantees/0x0").status_code == 400


def official_extra(**numbers: Any) -> dict[str, Any]:
    """A validation policy as an official seller configures it: its numbers as strings."""
    extra = test_policy().to_extra()
    extra.update({"validationChainId": "84532", "minValidationScore": "80", **numbers})
    return extra


def test_an_official_sellers_numbers_as_strings_verify_and_settle(
    client: TestClient, core: Core
) -> None:
    """An official seller with this service as its facilitator passes its configured ``extra``
    through: canonical numeric strings are read as the official facilitator reads them."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)

    def body(req: PaymentRequirements) -> dict[str, Any]:
        payload = signed_payload(client, buyer, req, guarantee_version=2, policy=test_policy())
        return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req.to_dict()}

    paid = body(requirements(official_extra(validationChainId="0x14a34")))
    assert client.post("/verify", json=paid).json()["isValid"] is True
    settled = client.post("/settle", json=paid, headers=KEY).json()
    assert settled["success"] is True, settled
    record = core.guarantee(settled["transaction"])
    assert (record.version, record.min_score) == (2, 80)
    for bad in (
        {"validationChainId": "084532"},
        {"minValidationScore": " 80"},
        {"minValidationScore": "0x50"},
    ):
        refused = body(requirements(official_extra(**bad)))
        verdict = client.post("/verify", json=refused).json()
        assert (verdict["isValid"], verdict["invalidReason"]) == (False, "malformed_payment")
        answer = client.post("/settle", json=refused, headers=KEY).json()
        assert answer["success"] is False and answer["error"] == "malformed_payment"
    assert core.position(buyer.address, network=NETWORK).locked == 10_000  # the one settled


@pytest.mark.parametrize("version", [1, 2])
def test_a_payment_sent_as_its_header_value_verifies_and_settles(
    client: TestClient, core: Core, version: int
) -> None:
    """sdk-4mica's ``X402Flow.settle_payment`` (and the /verify its README shows) sends the
    buyer's header value as it came, in ``paymentHeader``: it was a ``malformed_payment``, so a
    seller on the official SDK could never be paid through this service."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = requirements()
    tab = client.post(
        "/tabs",
        json={"userAddress": buyer.address, "recipientAddress": SELLER, "guaranteeVersion": 1},
    ).json()
    resource = ResourceInfo(url="http://seller.test/premium")
    _, header = payment_header(buyer, req, tab, version=version, resource=resource)
    wire_req = req.to_dict() if version == 2 else req.to_v1(resource).to_dict()
    body = {"x402Version": version, "paymentHeader": header, "paymentRequirements": wire_req}
    verdict = client.post("/verify", json=body).json()
    assert verdict == {"isValid": True, "invalidReason": None, "payer": buyer.address}
    settled = client.post("/settle", json=body, headers=KEY).json()
    assert settled["success"] is True and settled["payer"] == buyer.address, settled
    again = client.post("/settle", json=body, headers=KEY).json()
    assert again["success"] is False and again["error"] == "replayed_request_id"
    for bad in (5, "", "not base64!", base64.b64encode(b"[1]").decode()):
        refused = client.post("/settle", json={**body, "paymentHeader": bad}, headers=KEY)
        assert refused.status_code == 200 and _reason(refused) == "malformed_payment"
    assert core.position(buyer.address, network=NETWORK).locked == 10_000  # settled once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(core: Core) -> Iterator[tuple[str, uvicorn.Server]]:
    """The service under a real uvicorn server on loopback."""
    yield from _served(create_app(core, tick_interval=None))


def _served(app: Any, port: int | None = None) -> Iterator[tuple[str, uvicorn.Server]]:
    port = port or _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", server
    server.should_exit = True
    thread.join(timeout=10)


def remote_seller(
    facilitator: str | HttpFacilitator, tmp_path: Path, premium: Any = None
) -> TestClient:
    """A seller of ``GET /premium`` on a remote facilitator (a URL, or one built already)."""

    async def answer_payer(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    if isinstance(facilitator, str):
        facilitator = HttpFacilitator(facilitator, retries=1)
    config = PaymentConfig(
        pay_to=SELLER,
        routes={"GET /premium": "$0.01"},
        facilitator=facilitator,
        records=str(tmp_path / "records.db"),
        tab_endpoint="http://testserver/x402/tab",
    )
    app = Starlette(
        routes=[Route("/premium", premium or answer_payer)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    return TestClient(app)


def test_seller_on_a_remote_facilitator_pays_and_fails_closed(
    served: Any, core: Core, tmp_path: Path
) -> None:
    url, server = served
    seller = remote_seller(url, tmp_path)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = decode_payment_required(seller.get("/premium").headers["payment-required"]).accepts[0]
    # the facilitator's Core API (the official buyer reads it); no registry given: no policy
    assert req.extra["rpcUrl"] == f"{url}/chains/84532" and "validatorAddress" not in req.extra
    tab = seller.post(
        "/x402/tab",
        json={"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()},
    ).json()
    name, value = payment_header(buyer, req, tab)
    paid = seller.get("/premium", headers={name: value})
    assert paid.status_code == 200 and paid.json() == {"payer": buyer.address}
    result = json.loads(base64.b64decode(paid.headers["payment-response"]))
    assert result["success"] and result["extra"]["certificate"]["signature"]
    assert core.position(buyer.address, network=NETWORK).locked == 10_000

    tab = seller.post(
        "/x402/tab",
        json={"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()},
    ).json()
    name, value = payment_header(buyer, req, tab)
    server.should_exit = True
    time.sleep(0.5)
    down = seller.get("/premium", headers={name: value})
    assert down.status_code == 503 and down.json()["error"] == "facilitator_unavailable"


def test_a_remote_sellers_payment_sent_twice_at_once_is_told_to_wait(
    core: Core, tmp_path: Path
) -> None:
    """With ``idempotent_replay`` on a remote facilitator, the same header sent again while
    its first request's settle is under way (a client's retry racing its first try) is told
    409 ``payment_in_progress`` (docs/operations.md), as on the embedded Core: not 402
    ``replayed_request_id``, which says the payment went to another request. Charged once."""
    import anyio

    inside, release = threading.Event(), threading.Event()
    service = create_app(core, tick_interval=None)

    async def late_settle(scope: Any, receive: Any, send: Any) -> None:  # answers a settle late
        if scope["type"] == "http" and scope["path"] == "/settle":
            inside.set()
            await anyio.to_thread.run_sync(release.wait, 30)
        await service(scope, receive, send)

    async def answer_payer(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    facilitator = _served(late_settle)
    url, _ = next(facilitator)
    config = PaymentConfig(
        pay_to=SELLER,
        routes={"GET /premium": "$0.01"},
        facilitator=HttpFacilitator(url, retries=0),
        records=str(tmp_path / "records.db"),
        idempotent_replay=True,
    )
    app = Starlette(
        routes=[Route("/premium", answer_payer)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    selling = _served(app)
    seller, _ = next(selling)
    try:
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        challenge = httpx.get(f"{seller}/premium").headers["payment-required"]
        req = decode_payment_required(challenge).accepts[0]
        asked = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": None}
        asked["paymentRequirements"] = req.to_dict()
        tab = httpx.post(str(req.extra["tabEndpoint"]), json=asked).json()
        name, value = payment_header(buyer, req, tab)
        first: list[httpx.Response] = []
        paying = threading.Thread(
            target=lambda: first.append(
                httpx.get(f"{seller}/premium", headers={name: value}, timeout=60)
            )
        )
        paying.start()
        assert inside.wait(30)
        try:
            again = httpx.get(f"{seller}/premium", headers={name: value}, timeout=60)
        finally:
            release.set()
            paying.join(timeout=60)
        assert first[0].status_code == 200, first[0].text
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "payment_in_progress"
        assert core.position(buyer.address, network=NETWORK).locked == 10_000
    finally:
        release.set()
        next(selling, None)
        next(facilitator, None)


def test_a_remote_seller_on_another_network_than_the_services_is_paid_on_its_chain(
    core: Core, tmp_path: Path
) -> None:
    """The service answers its Core API for its own network (84532 here) and, under
    ``/chains/<chain id>/``, for any registered one; a seller on ``HttpFacilitator`` names that
    path as each offer's ``rpcUrl``, whatever the service's network, so a buyer signs for the
    offer's chain and fetches its certificate there (docs/protocol.md, "Endpoints")."""
    other = "eip155:11155111"
    chain = "/chains/11155111"
    service = _served(create_app(core, sandbox=True, tick_interval=None))
    url, _ = next(service)

    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    config = PaymentConfig(
        pay_to=SELLER,
        network=other,
        routes={"GET /premium": "$0.01"},
        facilitator=HttpFacilitator(url),
        records=str(tmp_path / "records.db"),
    )
    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    seller = _served(app)
    base, _ = next(seller)
    try:
        params = httpx.get(f"{url}{chain}/core/public-params").json()
        assert (params["chain_id"], params["ethereum_http_rpc_url"]) == (
            11155111,
            f"{url}{chain}/rpc",
        )
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}
        assert httpx.post(f"{url}{chain}/rpc", json=rpc).json()["result"] == hex(11155111)
        unknown = httpx.get(f"{url}/chains/999999999/core/public-params")
        assert (unknown.status_code, unknown.json()["reason"]) == (404, "unknown_network")

        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=other)
        with httpx.Client(transport=PaymentTransport(buyer.key), timeout=30) as client:
            paid = client.get(f"{base}/premium")
        assert paid.status_code == 200, paid.text
        receipt = paid.extensions[RECEIPT_KEY]
        assert receipt.core_url == f"{url}{chain}"
        certificate = fetch_certificate(receipt)  # the guarantee read for that chain
        assert certificate is not None and certificate == receipt.certificate
        assert replace(receipt, certificate=certificate).verify_certificate(
            fetch_public_key(receipt.core_url)
        )
        assert core.position(buyer.address, network=other).locked == 10_000
    finally:
        next(seller, None)
        next(service, None)


@pytest.fixture
def served_sandbox(core: Core) -> Iterator[tuple[str, uvicorn.Server]]:
    """``fourmica-x402 serve --sandbox``: it takes validation scores without an API key."""
    yield from _served(create_app(core, sandbox=True, tick_interval=None))


def policy_seller(
    url: str, tmp_path: Path, premium: Any, **options: Any
) -> tuple[Gate, TestClient]:
    """A seller of ``GET /premium`` on the remote facilitator at ``url`` with the sandbox's
    validation registry, so its offers carry the delivery policy (G-v2)."""
    from fourmica_x402.core.ledger import SANDBOX_REGISTRY

    facilitator = HttpFacilitator(url, validation_registry=SANDBOX_REGISTRY.lower(), **options)
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=facilitator,
            records=str(tmp_path / "records.db"),
            tab_endpoint="http://testserver/x402/tab",
        )
    )
    app = Starlette(
        routes=[Route("/premium", premium)], middleware=[Middleware(PaymentMiddleware, gate=gate)]
    )
    return gate, TestClient(app)


def pay_premium(seller: TestClient, core: Core, buyer: TestBuyer) -> httpx.Response:
    """Fund ``buyer`` and pay ``GET /premium`` as the seller's challenge asks (a tab from its
    tab endpoint)."""
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = decode_payment_required(seller.get("/premium").headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    name, value = payment_header(buyer, req, seller.post("/x402/tab", json=body).json())
    return seller.get("/premium", headers={name: value})


def test_a_remote_facilitators_registry_brings_the_delivery_policy(
    served_sandbox: Any, core: Core, tmp_path: Path
) -> None:
    """Without a policy the official buyer (which signs G-v2 for x402 v2) could not pay."""
    from fourmica_x402.core.ledger import SANDBOX_REGISTRY

    url, _ = served_sandbox

    async def premium(request: Request) -> JSONResponse:
        return JSONResponse({"payer": request.state.payment.payer})

    gate, seller = policy_seller(url, tmp_path, premium)
    buyer = TestBuyer.new()
    req = decode_payment_required(seller.get("/premium").headers["payment-required"]).accepts[0]
    assert req.extra["validationRegistryAddress"] == SANDBOX_REGISTRY
    assert req.extra["validatorAddress"] == SELLER and req.extra["rpcUrl"] == f"{url}/chains/84532"
    assert pay_premium(seller, core, buyer).status_code == 200
    gate.flush()  # the delivery score goes to the facilitator after the response
    (kept,) = core.guarantees(address=buyer.address)
    assert (kept.version, kept.state) == (2, "payable")


def test_a_remote_facilitator_without_a_registry_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Its v2 challenges carry no policy, which the official buyer refuses: said at once."""
    facilitator = HttpFacilitator("http://f.test")
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            routes={"GET /a": "$0.01", "GET /b": "$0.02"},
            facilitator=facilitator,
            records=str(tmp_path / "records.db"),
            tab_endpoint="http://testserver/x402/tab",
        )
    )
    app = Starlette(
        routes=[Route(p, lambda r: JSONResponse({})) for p in ("/a", "/b")],
        middleware=[Middleware(PaymentMiddleware, gate=gate)],
    )
    with caplog.at_level(logging.WARNING, logger="fourmica_x402"):
        for path in ("/a", "/b", "/a"):
            challenge = TestClient(app).get(path).headers["payment-required"]
            assert (
                "validationRegistryAddress"
                not in decode_payment_required(challenge).accepts[0].extra
            )
    warned = [r for r in caplog.records if "has no validation_registry" in r.getMessage()]
    assert len(warned) == 1 and "validation_registry" in warned[0].getMessage()


def test_a_page_of_another_site_cannot_change_a_keyless_sandbox(core: Core) -> None:
    """``serve --sandbox`` without a key takes every call; a page the developer visits could
    post to it from the browser (a text/plain body is a 'simple' request). A foreign Origin
    is refused; the same origin, and clients without one (not browsers), are served."""
    client = TestClient(create_app(core, sandbox=True, tick_interval=None))
    hook = {"url": "http://evil.example/hook", "events": ["*"]}
    deposit = {"address": TestBuyer.new().address, "amount": 5}
    for path, body in (("/admin/webhooks", hook), ("/sandbox/deposit", deposit)):
        for origin in ("http://evil.example", "null"):
            answer = client.post(
                path,
                content=json.dumps(body),
                headers={"content-type": "text/plain", "origin": origin},
            )
            assert (answer.status_code, answer.json()["error"]) == (403, "cross_origin"), path
    assert client.get("/admin/webhooks").json() == []  # no subscription was made
    assert core.position(deposit["address"], network=NETWORK).collateral == 0
    # a page whose DNS name was rebound to the service: same origin, but not a name it has
    rebound = {"origin": "http://rebound.example:8402", "host": "rebound.example:8402"}
    answer = client.post("/sandbox/deposit", json=deposit, headers=rebound)
    assert (answer.status_code, answer.json()["error"]) == (403, "cross_origin")
    assert core.position(deposit["address"], network=NETWORK).collateral == 0
    local = {"origin": "http://localhost:8402", "host": "localhost:8402"}
    assert client.post("/sandbox/deposit", json=deposit, headers=local).status_code == 200
    assert client.post("/sandbox/deposit", json=deposit).status_code == 200  # not a browser
    assert core.position(deposit["address"], network=NETWORK).collateral == 10
    public = TestClient(
        create_app(core, sandbox=True, tick_interval=None, public_url="https://x402.example")
    )
    named = {"origin": "https://x402.example", "host": "x402.example"}
    assert public.post("/sandbox/deposit", json=deposit, headers=named).status_code == 200
    # a DELETE changes things as much as a POST: a page's (foreign or rebound) is refused too
    sid = client.post("/admin/webhooks", json=hook).json()["subscription_id"]
    for headers in ({"origin": "http://evil.example"}, rebound):
        answer = client.delete(f"/admin/webhooks/{sid}", headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (403, "cross_origin")
    assert [h["subscription_id"] for h in client.get("/admin/webhooks").json()] == [sid]
    assert client.delete(f"/admin/webhooks/{sid}", headers=local).json() == {"removed": True}


@pytest.mark.parametrize("path", ["/tabs", "/core/payment-tabs", "/core/guarantees"])
def test_the_tab_calls_refuse_before_their_handler_in_their_own_shape(
    client: TestClient, path: str
) -> None:
    """The tab calls and the Core API subset refuse as 4Mica's ``/tabs`` does,
    ``{"error": text, "reason": code}`` (docs/protocol.md, "Reason codes"): a body over
    256 KiB and a browser's POST from another site too, refused before the handler runs."""
    big = b'{"pad":"' + b"x" * 300 * 1024 + b'"}'
    too_large = client.post(path, content=big, headers={"content-type": "application/json"})
    assert (too_large.status_code, too_large.json()) == (
        413,
        {"error": "bodies end at 262144 bytes", "reason": "body_too_large"},
    )
    foreign = {"origin": "https://elsewhere.example"}
    cross = client.post(path, json={"userAddress": SELLER}, headers=foreign)
    assert (cross.status_code, cross.json()) == (
        403,
        {"error": "requests from another site's pages are refused", "reason": "cross_origin"},
    )


def test_sandbox_calls_take_their_fields_as_typed_and_refuse_the_rest(core: Core) -> None:
    """A body is read as written or refused (400): a key named twice (parsers differ on which
    wins), "false" for a boolean, a present but falsy finalize/cancel (which made a new
    withdrawal), a body over the limit (413), an unknown delivery state."""
    client = TestClient(create_app(core, sandbox=True, tick_interval=None))
    buyer, other = TestBuyer.new().address, TestBuyer.new().address

    def post(path: str, text: str) -> httpx.Response:
        return client.post(path, content=text, headers={"content-type": "application/json"})

    twice = f'{{"address": "{buyer}", "amount": 1, "amount": 1000000000}}'
    assert post("/sandbox/deposit", twice).status_code == 400
    named_twice = f'{{"address": "{buyer}", "address": "{other}", "amount": 1}}'
    assert post("/sandbox/deposit", named_twice).status_code == 400
    assert core.position(buyer, network=NETWORK).collateral == 0
    assert core.position(other, network=NETWORK).collateral == 0
    assert client.post("/sandbox/deposit", json={"address": buyer, "amount": 5}).status_code == 200
    for value in ("false", "no", [0], {"x": 0}, 0):
        answer = client.post("/sandbox/suspend", json={"address": buyer, "suspended": value})
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), value
    assert client.post("/sandbox/suspend", json={"address": buyer, "suspended": False}).json() == {
        "address": buyer,
        "suspended": False,
    }
    for action in (
        {"finalize": 0},
        {"cancel": False},
        {"finalize": ""},
        {"finalize": 1, "cancel": 1},
    ):
        answer = client.post("/sandbox/withdraw", json={**action, "address": buyer, "amount": 1})
        assert answer.status_code in (400, 404), action
    assert core.position(buyer, network=NETWORK).pending_withdrawal == 0  # none was requested
    from fourmica_x402.server.base import MAX_BODY

    big = json.dumps({"address": buyer, "amount": 1, "pad": "x" * MAX_BODY})
    answer = post("/sandbox/deposit", big)
    assert (answer.status_code, answer.json()["error"]) == (413, "body_too_large")
    answer = client.get("/admin/webhooks/deliveries", params={"status": "bogus"})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")
    assert client.get("/admin/webhooks/deliveries", params={"status": "failed"}).json() == []


@pytest.mark.parametrize(
    "answer",
    [
        {"tabId": "zz"},
        {"startTimestamp": {}},
        {"ttlSeconds": 1e400},
        {"userAddress": 5},
        {"recipientAddress": []},
        {"assetAddress": "nope"},
        {"startTimestamp": 1e300},
        {"startTimestamp": True},
        {"ttlSeconds": -5},
        {"ttlSeconds": 1.5},
    ],
    ids=str,
)
def test_a_malformed_tab_answer_is_a_503_at_the_tab_endpoint(
    tmp_path: Path, answer: dict[str, Any]
) -> None:
    good = {
        "tabId": "0x1",
        "userAddress": _USER,
        "recipientAddress": SELLER,
        "assetAddress": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "startTimestamp": 1,
        "ttlSeconds": 60,
        "nextReqId": "0x0",
    }
    text = json.dumps({**good, **answer}).replace("Infinity", "1e400")
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=text.encode()))
    remote = HttpFacilitator("http://f.test", transport=mock, async_transport=mock, retries=0)
    client = remote_seller(remote, tmp_path)
    req = decode_payment_required(client.get("/premium").headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": _USER, "paymentRequirements": req.to_dict()}
    answered = client.post("/x402/tab", json=body)
    assert answered.status_code == 503, answered.text
    with pytest.raises(Unavailable):
        remote.open_tab(
            user=_USER, recipient=SELLER, network=NETWORK, asset=req.asset, guarantee_version=1
        )


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/supported", [1, 2]),
        ("/supported", "kinds"),
        ("/supported", None),
        ("/supported", {"kinds": 5}),
        ("/supported", {"kinds": "abc"}),
        ("/supported", {"kinds": [1]}),
        ("/verify", {"isValid": "yes"}),
        ("/verify", {"isValid": 1}),
    ],
    ids=str,
)
def test_a_facilitator_answer_of_the_wrong_type_is_unavailable(path: str, answer: Any) -> None:
    """Every answer is read for what it must be: one of another type is the facilitator's
    failure (Unavailable), never an AttributeError, a list of letters or a "yes" read as
    valid."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    remote = HttpFacilitator("http://f.test", transport=transport, async_transport=transport)
    payload = PaymentPayload(
        x402_version=2, accepted=requirements(), payload={"claims": {}, "signature": "0x"}
    )
    calls = {
        "/supported": (remote.supported, remote.asupported),
        "/verify": (
            lambda: remote.verify(payload, requirements()),
            lambda: remote.averify(payload, requirements()),
        ),
    }
    call, acall = calls[path]
    with pytest.raises(Unavailable):
        call()
    with pytest.raises(Unavailable):
        asyncio.run(acall())


def test_http_facilitator_retries_idempotent_calls_only() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, json={"kinds": [{"scheme": "4mica-credit"}]})

    facilitator = HttpFacilitator(
        "http://f.test", transport=httpx.MockTransport(handler), backoff=0.0
    )
    assert facilitator.supported() == [{"scheme": "4mica-credit"}]
    assert calls == ["/supported"] * 3
    calls.clear()
    with pytest.raises(Unavailable):
        facilitator.void("0x01", by=SELLER)  # state-changing: sent once
    assert calls == ["/guarantees/0x01/void"]


class _DropFirst(httpx.BaseTransport):
    """Real HTTP to the service, but the first call to ``path`` loses its connection: before
    the service sees it, or after the service handled it."""

    def __init__(self, path: str, *, after: bool) -> None:
        self.inner, self.path, self.after, self.sent = httpx.HTTPTransport(), path, after, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != self.path:
            return self.inner.handle_request(request)
        self.sent += 1
        if self.sent == 1 and not self.after:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        response = self.inner.handle_request(request)
        response.read()
        if self.sent == 1:
            raise httpx.ReadError("Connection reset by peer", request=request)
        return response


class _LoseVoidAnswers(httpx.HTTPTransport):
    """Real HTTP to the service; the first void's answer is lost after the service applied it."""

    def __init__(self) -> None:
        super().__init__()
        self.voids = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/void"):
            self.voids += 1
            if self.voids == 1:
                response.read()
                raise httpx.ReadTimeout("timed out", request=request)
        return response


def test_a_refund_applied_but_unanswered_is_recorded_refunded(
    served_sandbox: Any, core: Core, tmp_path: Path
) -> None:
    """The handler fails, the void goes through but its answer is lost: the retry meets a
    guarantee voided already, which is the refund done (the record said ``kept``)."""
    from flask import Flask
    from fourmica_x402.adapters.flask import FourmicaX402

    url, _ = served_sandbox
    transport = _LoseVoidAnswers()
    app = Flask(__name__)
    ext = FourmicaX402(
        app,
        pay_to=SELLER,
        routes={"GET /premium": "$0.01"},
        facilitator=HttpFacilitator(url, transport=transport, timeout=5),
        records=str(tmp_path / "records.db"),
    )
    app.add_url_rule("/premium", "premium", lambda: ({"error": "broken"}, 500))
    client = app.test_client()
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    challenge = client.get("/premium")
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    tab = core.open_tab(buyer.address, SELLER, network=NETWORK, asset=req.asset)
    name, value = payment_header(buyer, req, tab.to_json())
    failed = client.get("/premium", headers={name: value})
    failed.close()  # the response is over: the refund starts
    assert failed.status_code == 500 and ext.gate is not None
    ext.gate.flush()
    records = ext.gate.records
    for _ in range(600):  # bounded (30 s): the reconciler retries in the background
        if records.query()[0].outcome == "refunded":
            break
        time.sleep(0.05)
    [record] = records.query()
    assert (record.outcome, transport.voids) == ("refunded", 2)
    assert records.followup(record.guarantee_id)[:1] == ("voided",)  # type: ignore[index]
    assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("after", [False, True], ids=["before-service", "after-service"])
def test_http_facilitator_opens_a_tab_again_when_the_connection_drops(
    core: Core, served: tuple[str, uvicorn.Server], after: bool
) -> None:
    """Opening a tab reuses the active one, so a dropped ``/tabs`` call is safe to send again:
    one tab, and the retry hands out the next request id."""
    url, _ = served
    transport = _DropFirst("/tabs", after=after)
    facilitator = HttpFacilitator(url, transport=transport, backoff=0.0)
    buyer = TestBuyer.new()
    args = dict(user=buyer.address, recipient=SELLER, network=NETWORK, asset=USDC)
    tab = facilitator.open_tab(**args, guarantee_version=2)
    again = facilitator.open_tab(**args, guarantee_version=2)
    assert transport.sent == 3
    assert again.tab_id == tab.tab_id  # the dropped attempt opened no second tab
    assert again.next_req_id == tab.next_req_id + 1
    assert core.open_tab_count(SELLER) == 1


def test_webhooks_are_managed_by_the_operator_and_delivered(core: Core) -> None:
    import http.server

    got: list[tuple[str, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append((self.headers["x-fourmica-event"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(core, api_key="s3cret", tick_interval=None)) as client:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        assert client.post("/admin/webhooks", json={"url": url}).status_code == 401
        sub = client.post(
            "/admin/webhooks", json={"url": url, "events": ["collateral.deposited"]}, headers=auth
        ).json()
        assert sub["secret"] and client.get("/admin/webhooks", headers=auth).json()[0]["url"] == url
        core.deposit(TestBuyer.new().address, 5, network=NETWORK)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = client.delete(f"/admin/webhooks/{sub['subscription_id']}", headers=auth)
        assert gone.status_code == 200 and gone.json() == {"removed": True}
        again = client.delete(f"/admin/webhooks/{sub['subscription_id']}", headers=auth)
        assert again.status_code == 404 and again.json()["error"] == "not_found"
    receiver.shutdown()
    assert (
        got and got[0][0] == "collateral.deposited" and json.loads(got[0][1])["data"]["amount"] == 5
    )


def test_the_operator_redelivers_and_resumes_webhook_deliveries(core: Core) -> None:
    """A receiver back after an outage: its failed deliveries could be queued again only from
    Python (``Webhooks.redeliver``), not through the service that sends them."""
    from fourmica_x402.webhooks import Webhooks

    failing = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(503)))
    worker = Webhooks(core, client=failing, max_attempts=1)
    auth = {"Authorization": "Bearer s3cret"}
    try:  # no lifespan: the service's own worker does not run, ``worker`` sends
        client = TestClient(create_app(core, api_key="s3cret", tick_interval=None))
        sub = client.post(
            "/admin/webhooks", json={"url": "https://hooks.example/in"}, headers=auth
        ).json()
        for _ in range(3):
            core.deposit(TestBuyer.new().address, 5, network=NETWORK)
        worker.run_once()
        failed = client.get("/admin/webhooks/deliveries?status=failed", headers=auth).json()
        assert len(failed) == 3
        one = failed[0]["delivery_id"]
        path = f"/admin/webhooks/deliveries/{one}/redeliver"
        assert client.post(path).status_code == 401
        assert client.post(path, headers=auth).json() == {"redelivered": 1}
        again = client.post(path, headers=auth)  # pending already
        assert (again.status_code, again.json()["error"]) == (404, "not_found")
        for bad in ("x", "-1", "99999999999999999999", "１"):
            answer = client.post(f"/admin/webhooks/deliveries/{bad}/redeliver", headers=auth)
            assert (answer.status_code, answer.json()["error"]) == (404, "not_found"), bad
        bulk = f"/admin/webhooks/{sub['subscription_id']}/redeliver"
        assert client.post(bulk, headers=auth).json() == {"redelivered": 2}
        pending = client.get("/admin/webhooks/deliveries?status=pending", headers=auth).json()
        assert len(pending) == 3
        unknown = client.post("/admin/webhooks/wh_nobody/redeliver", headers=auth)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
        resume = f"/admin/webhooks/{sub['subscription_id']}/resume"
        assert client.post(resume).status_code == 401
        assert client.post(resume, headers=auth).json() == {"resumed": True}
        client.delete(f"/admin/webhooks/{sub['subscription_id']}", headers=auth)
        for removed in (bulk, resume):  # removed: nothing of it is sent again
            gone = client.post(removed, headers=auth)
            assert (gone.status_code, gone.json()["error"]) == (404, "not_found")
    finally:
        worker.close()
        failing.close()


def test_void_and_validation_need_a_key_and_valid_addresses(core: Core, tmp_path: Path) -> None:
    with TestClient(create_app(core, tick_interval=None, webhooks=False)) as open_service:
        refused = open_service.post("/guarantees/0x01/void", json={"by": SELLER})
        assert refused.status_code == 403  # no key, not a sandbox: nobody may void
        assert (
            open_service.post(
                "/guarantees/0x01/validation", json={"validator": SELLER, "score": 0}
            ).status_code
            == 403
        )
        too_long = {"userAddress": SELLER, "recipientAddress": SELLER, "ttlSeconds": 10**9}
        assert open_service.post("/tabs", json=too_long).status_code == 400
    with TestClient(create_app(core, api_key="k", tick_interval=None, webhooks=False)) as keyed:
        auth = {"Authorization": "Bearer k"}
        assert keyed.post("/guarantees/0x01/void", json={"by": ""}, headers=auth).status_code == 400
        assert keyed.post("/guarantees/0x01/validation", json={}, headers=auth).status_code == 400
        assert (
            keyed.post("/guarantees/0x01/void", json={"by": SELLER}, headers=auth).status_code
            == 404
        )


def test_a_facilitator_refusal_in_its_own_shape_is_a_402_not_a_500(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert b"_v1Policy" not in request.content  # nothing internal goes over the wire
        return httpx.Response(400, json={"error": "bad payment", "reason": "amount_mismatch"})

    mock = httpx.MockTransport(handler)
    remote = HttpFacilitator("http://f.test", transport=mock, async_transport=mock)
    runs: list[int] = []

    async def premium(request: Request) -> JSONResponse:
        runs.append(1)
        return JSONResponse({})

    client = remote_seller(remote, tmp_path, premium)
    req = decode_payment_required(client.get("/premium").headers["payment-required"]).accepts[0]
    tab = {"tabId": "0x1", "nextReqId": "0x0"}
    name, value = payment_header(TestBuyer.new(), req, tab)
    resp = client.get("/premium", headers={name: value})
    assert resp.status_code == 402 and not runs
    assert decode_payment_required(resp.headers["payment-required"]).error == "amount_mismatch"


def test_serve_refuses_a_malformed_seller_key(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fourmica_x402.cli import main

    db = str(tmp_path / "core.db")
    for bad in ("no-address", "=0x" + "11" * 20, "token=0xnot-an-address"):
        result = CliRunner().invoke(main, ["serve", "--db", db, "--seller-key", bad])
        assert result.exit_code == 2 and "--seller-key" in result.output, result.output
    swapped = "0x" + "11" * 20 + "=sk_live_9f8e7d6c5b4a"  # the halves swapped: no echo
    result = CliRunner().invoke(main, ["serve", "--db", db, "--seller-key", swapped])
    assert result.exit_code == 2 and "sk_live" not in result.output, result.output


# Bad input: always a 4xx (or a JSON-RPC error) with a stable reason, never a 500.

_AUTH = {"Authorization": "Bearer s3cret"}
_USER = TestBuyer.from_key("0x" + "33" * 32).address
_DEEP = b"[" * 1000 + b"]" * 1000
_HOOK = "http://127.0.0.1:9/hook"
_NOT_ASCII = {"Authorization": "Bearer \xe9".encode("latin-1")}
_OPERATOR_NOT_ASCII = {"Authorization": "Bearer s3cret\xe9".encode("latin-1")}


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _tab(**fields: Any) -> bytes:
    return json.dumps({"userAddress": _USER, "recipientAddress": SELLER, **fields}).encode()


def _core_tab(**fields: Any) -> bytes:
    return json.dumps({"user_address": _USER, "recipient_address": SELLER, **fields}).encode()


def _reason(answer: httpx.Response) -> str:
    """The stable code of any of the service's answers: ``reason`` (/tabs, Core API subset),
    ``error`` (coded errors, /settle), ``invalidReason`` (/verify), a JSON-RPC error code."""
    data = answer.json()
    data = data[0] if isinstance(data, list) else data
    if "jsonrpc" in data:
        return str(data["error"]["code"])
    return str(data.get("reason") or data.get("invalidReason") or data["error"])


@pytest.mark.parametrize(
    ("method", "path", "raw", "headers", "status", "reason"),
    [
        # not JSON: nesting too deep to parse, NaN/Infinity, a float that overflows
        ("POST", "/verify", _DEEP, {}, 200, "malformed_payment"),
        ("POST", "/core/payment-tabs", _DEEP, {}, 400, "invalid_request"),
        ("POST", "/rpc", _DEEP, {}, 200, "-32600"),
        ("POST", "/rpc", b'[{"jsonrpc":"2.0","id":NaN,"method":"x"}]', {}, 200, "-32600"),
        ("POST", "/rpc", b'{"jsonrpc":"2.0","id":1e400,"method":"eth_chainId"}', {}, 200, "-32600"),
        (
            "POST",
            "/tabs",
            _tab()[:-1] + b',"guaranteeVersion":Infinity}',
            {},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/core/payment-tabs",
            _core_tab()[:-1] + b',"ttl":-Infinity}',
            {},
            400,
            "invalid_request",
        ),
        # a bearer token that is not ASCII
        ("POST", "/guarantees/0x01/void", b"{}", _NOT_ASCII, 401, "unauthorized"),
        ("GET", "/admin/webhooks", None, _OPERATOR_NOT_ASCII, 401, "unauthorized"),
        # /tabs: the official {"error", "reason"} shape, an unknown network is the caller's error
        ("POST", "/tabs", _tab(network="bogus"), {}, 400, "invalid_request"),
        ("POST", "/tabs", _tab(network=True), {}, 400, "invalid_request"),
        ("POST", "/tabs", _tab(ttlSeconds=0), {}, 400, "invalid_request"),
        ("POST", "/tabs", _tab(userAddress="nope"), {}, 400, "invalid_user_address"),
        ("POST", "/tabs", b"[]", {}, 400, "invalid_request"),
        # a tab for the zero address, which nobody signs for; a version 0 is not "absent"
        ("POST", "/tabs", _tab(userAddress="0x" + "0" * 40), {}, 400, "invalid_user_address"),
        (
            "POST",
            "/tabs",
            _tab(recipientAddress="0x" + "0" * 40),
            {},
            400,
            "invalid_recipient_address",
        ),
        ("POST", "/tabs", _tab(guaranteeVersion=0, x402Version=2), {}, 400, "invalid_request"),
        (
            "POST",
            "/core/payment-tabs",
            _core_tab(user_address="0x" + "0" * 40),
            {},
            400,
            "invalid_user_address",
        ),
        # /core/payment-tabs: the /tabs rule for ttl (whole seconds 1..MAX_TAB_TTL)
        ("POST", "/core/payment-tabs", _core_tab(ttl=2**63), {}, 400, "invalid_request"),
        ("POST", "/core/payment-tabs", _core_tab(ttl=10**9), {}, 400, "invalid_request"),
        ("POST", "/core/payment-tabs", _core_tab(ttl=1.5), {}, 400, "invalid_request"),
        ("POST", "/core/payment-tabs", _core_tab(ttl="1000000000"), {}, 400, "invalid_request"),
        (
            "POST",
            "/core/payment-tabs",
            _core_tab(guarantee_version=1.5),
            {},
            400,
            "invalid_request",
        ),
        # reads: query strings and ids
        ("GET", "/api/events?after=abc", None, {}, 400, "invalid_request"),
        ("GET", f"/api/events?after={2**64}", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?address=x", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?limit=0", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?limit=201", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?limit=-1", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?before=0xnone", None, {}, 404, "unknown_guarantee"),
        ("GET", "/api/guarantees?limit=1e3", None, {}, 400, "invalid_request"),
        ("GET", f"/api/guarantees?limit={10**30}", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?limit=%EF%BC%95", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?limit=5&limit=0", None, {}, 400, "invalid_request"),
        ("GET", "/api/guarantees?before=0X" + "A" * 64, None, {}, 404, "unknown_guarantee"),
        ("GET", "/api/guarantees?before=%00", None, {}, 404, "unknown_guarantee"),
        ("GET", f"/api/cycles/{2**63}", None, {}, 404, "unknown_cycle"),
        # keyed routes: bodies that are not objects, missing fields, numbers no column holds
        ("POST", "/guarantees/0x01/void", b"[1]", _AUTH, 400, "invalid_request"),
        ("POST", "/guarantees/0x01/validation", b'"s"', _AUTH, 400, "invalid_request"),
        (
            "POST",
            "/guarantees/0x01/validation",
            _body(validator=SELLER, score=100, tag=7),
            _AUTH,
            400,
            "invalid_request",
        ),
        ("POST", "/guarantees/0x01/void", b'{"by":"x"}', _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/deposit", b"{}", _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/deposit", b"[]", _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/deposit", b"nope", _AUTH, 400, "invalid_request"),
        ("POST", "/admin/webhooks", b"{}", _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/withdraw", b"{}", _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/withdraw", b'{"finalize":1e300}', _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/withdraw", _body(cancel=2**64), _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/debits/pay", b"{}", _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/debits/pay", b'{"cycle_id":1e300}', _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/credits/claim", b'{"cycle_id":1e300}', _AUTH, 400, "invalid_request"),
        ("POST", "/sandbox/suspend", b"{}", _AUTH, 400, "invalid_request"),
        (
            "POST",
            "/sandbox/deposit",
            _body(address=_USER, amount=1, network="bogus"),
            _AUTH,
            400,
            "invalid_request",
        ),
        ("POST", "/admin/webhooks", _body(url=_HOOK, events=True), _AUTH, 400, "invalid_request"),
        # An empty list subscribed to every event ("[] or ['*']"), as "events": false did.
        ("POST", "/admin/webhooks", _body(url=_HOOK, events=[]), _AUTH, 400, "invalid_request"),
        ("POST", "/admin/webhooks", _body(url=_HOOK, events=""), _AUTH, 400, "invalid_request"),
        ("POST", "/admin/webhooks", _body(url=_HOOK, events=False), _AUTH, 400, "invalid_request"),
        (
            "POST",
            "/admin/webhooks",
            _body(url=_HOOK, events=[["a"]]),
            _AUTH,
            400,
            "invalid_request",
        ),
    ],
)
def test_bad_input_is_a_4xx_with_a_reason_never_a_500(
    client: TestClient,
    method: str,
    path: str,
    raw: bytes | None,
    headers: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    headers = {"content-type": "application/json", **headers}
    answer = client.request(method, path, content=raw, headers=headers)
    assert (answer.status_code, _reason(answer)) == (status, reason), answer.text


def test_a_disabled_or_keyless_api_says_so_with_a_code(core: Core) -> None:
    """The refusals that keep their historic ``error`` text carry a stable code beside it."""
    with TestClient(create_app(core, tick_interval=None)) as client:
        deposit = client.post("/sandbox/deposit", json={"address": _USER, "amount": 1})
        assert (deposit.status_code, deposit.json()["reason"]) == (403, "sandbox_disabled")
        assert deposit.json()["error"] == "sandbox API is disabled (start with --sandbox)"
        void = client.post("/guarantees/0x01/void", json={"by": SELLER})
        assert (void.status_code, void.json()["reason"]) == (403, "api_key_required")
        hooks = client.post("/admin/webhooks", json={"url": "http://127.0.0.1:9/h"})
        assert hooks.status_code in (403, 404) and hooks.json()["reason"] in (
            "api_key_required",
            "webhooks_disabled",
        )


def test_a_keyless_service_refusing_a_submitted_guarantee_names_that_call(core: Core) -> None:
    """The official TypeScript SDK's recipient submits to ``/core/guarantees``: a service without
    keys refuses it as the seller's act, and says so, not that it wants void and scores."""
    with TestClient(create_app(core, tick_interval=None)) as client:
        got = client.post("/core/guarantees", json={"claims": {}, "signature": "0x", "scheme": ""})
        assert (got.status_code, got.json()["reason"]) == (403, "api_key_required")
        assert got.json()["error"] == (
            "start the service with --api-key to accept guarantees at /core/guarantees"
        )


@pytest.mark.parametrize("field", ["asset", "payTo"])
@pytest.mark.parametrize("value", ["", "xyz"])
@pytest.mark.parametrize("path", ["/verify", "/settle"])
def test_requirements_naming_no_address_are_a_malformed_payment(
    client: TestClient, core: Core, field: str, value: str, path: str
) -> None:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = requirements()
    body = {
        "x402Version": 2,
        "paymentPayload": signed_payload(client, buyer, req),
        "paymentRequirements": {**req.to_dict(), field: value},
    }
    answer = client.post(path, json=body, headers=KEY)
    assert answer.status_code == 200 and _reason(answer) == "malformed_payment"
    assert core.position(buyer.address, network=NETWORK).locked == 0  # nothing settled


def test_totals_past_64_bits_are_summed_exactly(client: TestClient, core: Core) -> None:
    """Two positions of 2**63 - 1 each (SQLite's SUM overflows on them), then guarantees
    grossing 2**63 in one cycle: reads, metrics and the audit still answer; that cycle closes
    with what fits its 64-bit columns, and the rest waits for the next cycle (never stuck)."""
    buyers = [TestBuyer.new() for _ in range(2)]
    for buyer in buyers:
        deposit = {"address": buyer.address, "amount": 2**63 - 1}
        assert client.post("/sandbox/deposit", json=deposit, headers=_AUTH).status_code == 200
    for path in ("/", "/metrics", "/api/positions"):
        assert client.get(path).status_code == 200, path
    assert core.audit() == [] and core.totals(network=NETWORK)["collateral"] == 2**64 - 2
    req = requirements().model_copy(update={"amount": str(2**62)})
    for buyer in buyers:
        body = {
            "x402Version": 2,
            "paymentPayload": signed_payload(client, buyer, req),
            "paymentRequirements": req.to_dict(),
        }
        assert client.post("/settle", json=body, headers=KEY).json()["success"] is True
    closed = client.post("/sandbox/cycles/close", json={}, headers=_AUTH)
    assert closed.status_code == 200
    first, following = sorted(core.cycles(), key=lambda c: c.cycle_id)
    assert (first.status, first.gross, first.guarantee_count) == ("closed", 2**62, 1)
    assert following.status == "open"
    assert sorted(g.state for g in core.guarantees()) == ["netted", "payable"]
    assert {g.cycle_id for g in core.guarantees()} == {first.cycle_id, following.cycle_id}
    core.clock = lambda: time.time() + 10 * 86_400  # the next cycle is due: tick closes it
    assert core.tick()["closed"] == 1 and core.cycle(following.cycle_id).status != "open"
    assert core.audit() == []
    assert client.get("/metrics").status_code == 200 and client.get("/").status_code == 200


def test_a_remote_facilitator_reports_the_services_refusal_codes(core: Core) -> None:
    """The service refuses with {"error": code, "message": text}; HttpFacilitator read the
    code as the message and reported every refusal as facilitator_error, so the reconciler
    could not tell "already voided" from anything else."""
    from fourmica_x402.errors import CoreError

    app = create_app(core, api_key="op", tick_interval=None, webhooks=False)
    with TestClient(app) as client:
        gid = settled(client, core, TestBuyer.new(), "op")
        remote = HttpFacilitator(
            "http://testserver",
            transport=client._transport,
            headers={"Authorization": "Bearer op"},
            retries=1,
        )
        with pytest.raises(CoreError) as refused:
            remote.void(gid, by=TestBuyer.new().address)
        assert (refused.value.reason, refused.value.status) == ("not_recipient", 403)
        assert "recipient" in refused.value.message
        remote.void(gid, by=SELLER)
        with pytest.raises(CoreError) as again:
            remote.void(gid, by=SELLER)
        assert again.value.reason == "invalid_state"
        with pytest.raises(CoreError) as unauthorized:  # the older {"error": text} shape
            HttpFacilitator("http://testserver", transport=client._transport, retries=1).void(
                gid, by=SELLER
            )
        assert unauthorized.value.status == 401 and unauthorized.value.message == "unauthorized"


def _remote_seller(
    url: str,
    records: Path,
    transport: Any = None,
    runs: list[int] | None = None,
    headers: dict[str, str] | None = None,
    settle: str = "before",
) -> tuple[Gate, Starlette]:
    """A Starlette seller on the served Core as its remote facilitator, its records apart
    (``headers``: its calls', by default the operator's key)."""
    headers = {"Authorization": "Bearer op"} if headers is None else headers
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=HttpFacilitator(url, retries=1, headers=headers, async_transport=transport),
            records=str(records),
            tab_endpoint="http://testserver/x402/tab",
            settle=settle,  # type: ignore[arg-type]
        )
    )

    async def premium(request: Request) -> JSONResponse:
        if runs is not None:
            runs.append(1)
        return JSONResponse({"served": True})

    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, gate=gate)],
    )
    return gate, app


def _reconciled(gate: Gate, core: Core, guarantee_id: str) -> None:
    """Run the reconciler until it voided ``guarantee_id`` (10 s at most; the caller checks)."""
    for _ in range(200):  # bounded
        gate.reconcile()
        if core.guarantee(guarantee_id).state == "voided":
            return
        time.sleep(0.05)


async def _leave_when(app: Any, name: str, value: str, ready: Callable[[], bool]) -> None:
    """Send a paid GET and leave (its task cancelled) once ``ready()``; the loop goes on 1.5 s."""
    import asyncio

    scope = http_scope("GET", "/premium", [(name.lower().encode(), value.encode())])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing is answered to a client that left: {message}")

    task = asyncio.create_task(app(scope, receive, send))
    for _ in range(200):  # bounded
        if ready():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.5)  # the server goes on: a settle's answer, a record's write


def test_a_seller_without_a_key_on_a_keyed_service_is_told_in_its_log(
    core: Core, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's 401 reached the buyer as its own ``unauthorized``, and the seller's log
    said nothing: every payment failed with no clue for the one who can fix it."""
    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    try:
        runs: list[int] = []
        _, app = _remote_seller(url, tmp_path / "records.db", runs=runs, headers={})
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        with TestClient(app) as seller, caplog.at_level(logging.ERROR, "fourmica_x402"):
            offer = decode_payment_required(seller.get("/premium").headers["payment-required"])
            body = {"x402Version": 2, "userAddress": buyer.address}
            req = offer.accepts[0]
            tab = seller.post("/x402/tab", json={**body, "paymentRequirements": req.to_dict()})
            name, value = payment_header(buyer, req, tab.json())
            refused = seller.get("/premium", headers={name: value})
        assert refused.status_code == 402
        error = decode_payment_required(refused.headers["payment-required"]).error
        assert error == "facilitator_error"
        assert "refused this seller's key" in caplog.text and "Bearer op" not in caplog.text
        assert runs == [] and core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(service, None)


def test_a_client_leaving_while_its_remote_payment_is_recorded_is_refunded(
    core: Core, tmp_path: Path
) -> None:
    """Accepted, then cancelled while the record was written in its worker thread: the
    refund filed then met the settle's own open mark and was dropped, and the record's write
    removed the mark: the buyer stayed charged for a handler that never ran."""
    import asyncio
    import threading

    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    try:
        runs: list[int] = []
        gate, app = _remote_seller(url, tmp_path / "records.db", runs=runs)
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        with TestClient(app) as seller:
            req = decode_payment_required(seller.get("/premium").headers["payment-required"])
            offer = req.accepts[0]
            body = {"x402Version": 2, "userAddress": buyer.address}
            tab = seller.post("/x402/tab", json={**body, "paymentRequirements": offer.to_dict()})
            name, value = payment_header(buyer, offer, tab.json())
        begin, writing = gate.records.begin, threading.Event()

        def slow_begin(**fields: Any) -> int:  # a records database waiting on a lock
            writing.set()
            time.sleep(0.5)
            return begin(**fields)

        gate.records.begin = slow_begin  # type: ignore[method-assign]
        asyncio.run(_leave_when(app, name, value, writing.is_set))
        [accepted] = core.guarantees(address=buyer.address)
        _reconciled(gate, core, accepted.guarantee_id)
        assert runs == [] and core.guarantee(accepted.guarantee_id).state == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(service, None)


@pytest.mark.parametrize("elsewhere", [False, True], ids=["accepted-here", "served-elsewhere"])
def test_a_remote_settle_cancelled_by_a_leaving_client_is_voided_if_it_was_accepted(
    core: Core, tmp_path: Path, elsewhere: bool
) -> None:
    """Async Django cancels the view of a client that left. A remote settle cancelled while
    the facilitator worked may have been accepted: it used to be left charged, with no
    record and nothing filed; then it was voided on a guess, which took back the same header
    served by another instance of the seller (its own records) — work delivered, unpaid. The
    settle's own answer decides now: accepted by this call, voided; refused, left alone."""
    import asyncio

    class Late(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if request.url.path == "/settle":
                await asyncio.sleep(1)  # the answer comes after the client left
            return response

    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    try:
        gate, app = _remote_seller(url, tmp_path / "a.db", Late())
        other_gate, other = _remote_seller(url, tmp_path / "b.db")
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        with TestClient(other) as b:
            challenge = b.get("/premium").headers["payment-required"]
            req = decode_payment_required(challenge).accepts[0]
            body = {"x402Version": 2, "userAddress": buyer.address}
            tab = b.post("/x402/tab", json={**body, "paymentRequirements": req.to_dict()})
            name, value = payment_header(buyer, req, tab.json())
            if elsewhere:  # the same header, served by the other instance first
                assert b.get("/premium", headers={name: value}).status_code == 200
        other_gate.flush()

        sent_at = time.monotonic()  # its settle is out 0.3 s later
        ready = lambda: time.monotonic() - sent_at > 0.3  # noqa: E731
        asyncio.run(_leave_when(app, name, value, ready))
        [accepted] = core.guarantees(address=buyer.address)
        if elsewhere:  # refused as a replay: nothing of this instance's is left to act on
            gate.reconcile(time.time() + 3600)
            assert gate.records.followup(accepted.guarantee_id) is None
            assert core.guarantee(accepted.guarantee_id).state == "payable"
            assert core.position(buyer.address, network=NETWORK).locked == 10_000
            return
        _reconciled(gate, core, accepted.guarantee_id)
        assert core.guarantee(accepted.guarantee_id).state == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(service, None)


def _slow_settle(gate: Gate, marks: list[Any]) -> threading.Event:
    """Make the gate's settle (sync and async) take 0.5 s; ``marks`` gets the follow-ups open
    as it starts. Returns the event set when it starts."""
    facilitator, started = gate.facilitator, threading.Event()
    real, areal = facilitator.settle, facilitator.asettle

    def starting() -> None:
        marks.extend(gate.records.due_followups(time.time() + 10**6))
        started.set()

    def settle(payload: Any, chosen: Any) -> Any:
        starting()
        time.sleep(0.5)
        return real(payload, chosen)

    async def asettle(payload: Any, chosen: Any) -> Any:
        await asyncio.to_thread(starting)
        await asyncio.sleep(0.5)
        return await areal(payload, chosen)

    facilitator.settle = settle  # type: ignore[method-assign]
    facilitator.asettle = asettle  # type: ignore[method-assign]
    return started


def _paid_header(app: Any, buyer: TestBuyer) -> tuple[str, str]:
    with TestClient(app) as seller:
        offer = decode_payment_required(seller.get("/premium").headers["payment-required"])
        req = offer.accepts[0]
        body = {"x402Version": 2, "userAddress": buyer.address}
        tab = seller.post("/x402/tab", json={**body, "paymentRequirements": req.to_dict()})
        return payment_header(buyer, req, tab.json())


def test_a_remote_settle_after_is_marked_before_it_goes_out(core: Core, tmp_path: Path) -> None:
    """Settle-after sent /settle with nothing filed: a seller killed while it was out left an
    accepted payment whose buyer got no answer, locked for good (G-v1), never voided. It is
    marked first, as a settle-before one; the completion naming the guarantee removes it."""
    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    try:
        gate, app = _remote_seller(url, tmp_path / "records.db", settle="after")
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        marks: list[Any] = []
        _slow_settle(gate, marks)
        name, value = _paid_header(app, buyer)
        with TestClient(app) as seller:
            assert seller.get("/premium", headers={name: value}).status_code == 200
        gate.flush()
        [accepted] = core.guarantees(address=buyer.address)
        assert [(m.guarantee_id, m.kind) for m in marks] == [(accepted.guarantee_id, "in_doubt")]
        assert gate.records.due_followups(time.time() + 10**6) == []  # gone with the record
        assert gate.records.query(guarantee_id=accepted.guarantee_id, limit=1)
    finally:
        next(service, None)


def test_a_settle_after_response_streaming_past_its_mark_is_not_voided(
    core: Core, tmp_path: Path
) -> None:
    """The first fix left the settle's mark until the completion named the guarantee: a
    response still streaming when the mark fell due (a minute) was voided as a settle in
    doubt — delivered, unpaid. The accepted settle names it and removes the mark at once."""
    from starlette.responses import StreamingResponse

    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    try:
        gate, _ = _remote_seller(url, tmp_path / "records.db", settle="after")
        swept: list[dict[str, int]] = []

        async def premium(request: Request) -> StreamingResponse:
            async def body() -> Any:
                yield b"first part, "
                # an hour on: every mark is due, as for a response streaming that long
                swept.append(await asyncio.to_thread(gate.reconcile, time.time() + 3600))
                yield b"second part"

            return StreamingResponse(body())

        app = Starlette(
            routes=[Route("/premium", premium)],
            middleware=[Middleware(PaymentMiddleware, gate=gate)],
        )
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        name, value = _paid_header(app, buyer)
        with TestClient(app) as seller:
            answer = seller.get("/premium", headers={name: value})
        assert answer.status_code == 200 and answer.content == b"first part, second part"
        gate.flush()
        [accepted] = core.guarantees(address=buyer.address)
        assert swept == [{}]  # nothing was due: the mark had gone with the settle
        assert core.guarantee(accepted.guarantee_id).state == "payable"
        assert core.position(buyer.address, network=NETWORK).locked == 10_000
    finally:
        next(service, None)


def test_a_client_leaving_during_a_settle_after_is_not_charged(core: Core, tmp_path: Path) -> None:
    """Async Django cancels the view of a client that left: the settle-after settle went on
    in its thread, was accepted, and nothing voided it (G-v1 charged for good, G-v2 locked
    until its timeout) though no answer was delivered."""
    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    try:
        gate, app = _remote_seller(url, tmp_path / "records.db", settle="after")
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        started = _slow_settle(gate, [])
        name, value = _paid_header(app, buyer)
        asyncio.run(_leave_when(app, name, value, started.is_set))
        [accepted] = core.guarantees(address=buyer.address)
        _reconciled(gate, core, accepted.guarantee_id)
        assert core.guarantee(accepted.guarantee_id).state == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(service, None)


@contextlib.contextmanager
def _killed_in_its_handler(
    config: Callable[[], PaymentConfig], core: Core | None = None
) -> Iterator[tuple[Gate, Callable[[], tuple[Gate, Starlette]], TestBuyer, tuple[str, str]]]:
    """A seller (a gate of ``config()``) whose handler never ends here, standing for a process
    killed in it, paid by a buyer funded in ``core`` (None: the gate's embedded Core). Yields
    that gate, a maker of the next process's gate and app on the same databases, the buyer and
    its payment header, once the handler is running."""
    import anyio

    inside, release = threading.Event(), threading.Event()

    def seller(blocking: bool) -> tuple[Gate, Starlette]:
        gate = Gate(config())

        async def premium(request: Request) -> JSONResponse:
            if blocking:
                inside.set()
                await anyio.to_thread.run_sync(release.wait, 30)
            return JSONResponse({"served": True})

        middleware = [Middleware(PaymentMiddleware, gate=gate)]
        return gate, Starlette(routes=[Route("/premium", premium)], middleware=middleware)

    running, app = seller(blocking=True)
    funded = core or running.core
    assert funded is not None
    first = _served(app)
    base, _ = next(first)
    try:
        buyer = TestBuyer.new()
        funded.deposit(buyer.address, 100_000, network=NETWORK)
        challenge = httpx.get(f"{base}/premium").headers["payment-required"]
        req = decode_payment_required(challenge).accepts[0]
        asked = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": None}
        asked["paymentRequirements"] = req.to_dict()
        tab = httpx.post(str(req.extra["tabEndpoint"]), json=asked).json()
        name, value = payment_header(buyer, req, tab)
        paying = threading.Thread(
            target=lambda: httpx.get(f"{base}/premium", headers={name: value}, timeout=60)
        )
        paying.start()
        assert inside.wait(30)
        yield running, lambda: seller(blocking=False), buyer, (name, value)
    finally:
        release.set()
        next(first, None)


def _replay_unavailable(app: Starlette, header: tuple[str, str]) -> None:
    """The header sent again to ``app`` is answered 409 ``replay_unavailable``: no longer "in
    progress" (docs/operations.md)."""
    with TestClient(app) as again:
        replayed = again.get("/premium", headers=dict([header]))
    assert replayed.status_code == 409, replayed.text
    assert replayed.json()["error"] == "replay_unavailable"


def test_a_remote_settle_after_payment_whose_process_died_in_the_handler_is_not_in_progress(
    core: Core, tmp_path: Path
) -> None:
    """On a remote facilitator, a settle-after seller killed inside the handler left its
    record written before the settle ('verified', no guarantee, no outcome): the next gate on
    that records database labelled nothing (start-up recovery ran on the embedded Core's
    records only), and with ``idempotent_replay`` the buyer's retry of the header was answered
    409 ``payment_in_progress`` ('send it again once it has ended') for ever. It is labelled
    ``not_charged`` and the retry is answered ``replay_unavailable`` (docs/operations.md, "A
    remote facilitator"); nothing was charged."""
    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)

    def config() -> PaymentConfig:
        return PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=HttpFacilitator(url, headers={"Authorization": "Bearer op"}),
            records=str(tmp_path / "records.db"),
            settle="after",
            idempotent_replay=True,
        )

    try:
        with _killed_in_its_handler(config, core) as (_, restart, buyer, header):
            gate, app = restart()  # the next process on the records database
            [record] = gate.records.query(payer=buyer.address)
            assert (record.status, record.outcome, record.guarantee_id) == (
                "verified",
                "not_charged",
                None,
            )
            _replay_unavailable(app, header)
            assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(service, None)


@pytest.mark.parametrize(("version", "outcome"), [(1, "kept"), (2, "cancelled")])
def test_a_remote_settle_before_payment_whose_process_died_in_the_handler_is_labelled(
    core: Core, tmp_path: Path, version: int, outcome: str
) -> None:
    """On a remote facilitator, a settle-before seller killed inside the handler (its settle
    accepted and recorded, its response never ended) left its record 'settled' with no
    outcome: the next gate on that records database labelled nothing (start-up recovery ran
    on the embedded Core's records only), and with ``idempotent_replay`` the buyer's retry of
    the header was answered 409 ``payment_in_progress`` ('send it again once it has ended') for
    ever. It is labelled as the embedded Core's recovery labels it (docs/architecture.md,
    "Completion off the request path"): a G-v1 payment ``kept`` (the handler may have run), a
    G-v2 one under the seller's delivery policy ``cancelled`` (never scored, the Core cancels
    it at its validation deadline); the retry is answered ``replay_unavailable``."""
    from fourmica_x402.core.ledger import SANDBOX_REGISTRY

    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    registry = SANDBOX_REGISTRY.lower() if version == 2 else None

    def config() -> PaymentConfig:
        facilitator = HttpFacilitator(
            url, headers={"Authorization": "Bearer op"}, validation_registry=registry
        )
        return PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=facilitator,
            records=str(tmp_path / "records.db"),
            idempotent_replay=True,
        )

    try:
        with _killed_in_its_handler(config, core) as (_, restart, buyer, header):
            [settled] = core.guarantees(address=buyer.address)
            assert settled.version == version
            gate, app = restart()  # the next process on the records database
            [record] = gate.records.query(payer=buyer.address)
            assert (record.status, record.outcome) == ("settled", outcome)
            _replay_unavailable(app, header)
            assert core.guarantee(settled.guarantee_id).state == settled.state  # unchanged
    finally:
        next(service, None)


@pytest.mark.parametrize("scored", [False, True], ids=["g-v1", "g-v2-scored"])
def test_an_embedded_payment_whose_process_died_in_the_handler_with_records_apart(
    tmp_path: Path, scored: bool
) -> None:
    """The embedded Core with the records in a database of their own: a seller killed inside
    the handler left its record 'settled' with no outcome, and start-up recovery (which read
    only records in the Core's database) never labelled it: the header's retry was answered
    409 ``payment_in_progress`` for ever. The next gate labels it from its guarantee's state
    and the retry is answered ``replay_unavailable``: a G-v1 payment ``kept``; and (``scored``)
    a G-v2 payment under the seller's delivery policy whose score (one commit, the Core's
    database) went through before the process died, its record's completion (another, the
    records') never coming: the buyer was charged, so ``kept`` too, not left unlabelled."""
    from fourmica_x402.gate.challenge import DELIVERY_TAG

    def config() -> PaymentConfig:
        return PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            core=str(tmp_path / "core.db"),
            records=str(tmp_path / "records.db"),
            idempotent_replay=True,
            delivery_policy=scored,
        )

    with _killed_in_its_handler(config) as (running, restart, buyer, header):
        assert running.core is not None
        if scored:  # the dying process's score went through; its record's completion never came
            [settled] = running.core.guarantees(address=buyer.address)
            assert settled.version == 2
            running.core.post_validation(
                settled.guarantee_id, validator=SELLER, score=100, tag=DELIVERY_TAG
            )
        gate, app = restart()  # the next process on both databases
        [record] = gate.records.query(payer=buyer.address)
        assert (record.status, record.outcome) == ("settled", "kept")
        _replay_unavailable(app, header)


class _SlowSettleHeads:
    """A proxy on 127.0.0.1 in front of ``url`` that sends /settle's status line and headers a
    byte every 50 ms (so no single read waits long) and everything else at once."""

    def __init__(self, url: str) -> None:
        self.upstream = httpx.Client(base_url=url, timeout=10)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for _ in range(100):  # requests on this connection, bounded
                line = reader.readline().decode("latin-1").split(" ")
                if len(line) < 2 or self.done.is_set():
                    return
                headers = {}
                while (field := reader.readline().decode("latin-1").strip()) != "":
                    key, _, value = field.partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                keep = ("authorization", "content-type")
                sent = {k: v for k, v in headers.items() if k in keep}
                answer = self.upstream.request(line[0], line[1], content=body, headers=sent)
                head = f"HTTP/1.1 {answer.status_code} X\r\ncontent-length: "
                head += f"{len(answer.content)}\r\ncontent-type: application/json\r\n\r\n"
                if line[1].startswith("/settle"):
                    for byte in head.encode("latin-1"):
                        if self.done.wait(0.1):
                            return
                        conn.sendall(bytes([byte]))
                else:
                    conn.sendall(head.encode("latin-1"))
                conn.sendall(answer.content)

    def close(self) -> None:
        self.done.set()
        self.listener.close()
        self.upstream.close()


def test_a_settle_after_on_an_event_loop_is_bounded_by_the_timeout_whole(
    core: Core, tmp_path: Path
) -> None:
    """Settle-after settled from a worker thread, where ``HttpFacilitator``'s ``timeout``
    bounds each read only: a facilitator sending its answer's head a byte at a time held the
    paid request for as long as it liked. On an event loop the settle is awaited there, the
    whole call bounded; its answer lost, the payment is in doubt and voided."""
    service = _served(create_app(core, api_key="op", tick_interval=None, webhooks=False))
    url, _ = next(service)
    proxy = _SlowSettleHeads(url)
    try:
        facilitator = HttpFacilitator(
            proxy.url, retries=0, timeout=1.0, headers={"Authorization": "Bearer op"}
        )
        config = PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=facilitator,
            records=str(tmp_path / "records.db"),
            tab_endpoint="http://testserver/x402/tab",
            settle="after",
        )
        gate = Gate(config)
        runs: list[int] = []

        async def premium(request: Request) -> JSONResponse:
            runs.append(1)
            return JSONResponse({"served": True})

        app = Starlette(
            routes=[Route("/premium", premium)],
            middleware=[Middleware(PaymentMiddleware, gate=gate)],
        )
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        name, value = _paid_header(app, buyer)
        with TestClient(app) as seller:
            started = time.monotonic()
            answer = seller.get("/premium", headers={name: value})
            took = time.monotonic() - started
        assert answer.status_code == 402 and runs == [1]
        assert answer.json()["error"] == "facilitator_unavailable"
        assert took < 3.0, took  # the head alone takes some 8 s to trickle
        [accepted] = core.guarantees(address=buyer.address)  # the service did accept it
        for _ in range(100):  # bounded: the mark falls due three timeouts after it was made
            gate.reconcile(time.time() + 3600)
            if core.guarantee(accepted.guarantee_id).state == "voided":
                break
            time.sleep(0.05)
        assert core.guarantee(accepted.guarantee_id).state == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        proxy.close()
        next(service, None)


def test_a_huge_body_is_not_read_whole(core: Core) -> None:
    """POST bodies were read whole before the 256 KiB limit refused them: 400 MiB sent to the
    keyless /settle sat in the service's memory. It stops reading just past the limit."""
    import asyncio

    from fourmica_x402.server.base import MAX_BODY

    app = create_app(core, tick_interval=None, webhooks=False)
    chunk, total = b"[" * 65_536, 16 * 1024 * 1024
    read, sent = [0], []

    async def receive() -> dict[str, Any]:
        read[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": read[0] < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("POST", "/settle", [(b"content-type", b"application/json")], app=app)
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    assert read[0] <= MAX_BODY + len(chunk)
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert sent[0]["status"] == 200 and body["success"] is False
    assert body["error"] == "malformed_payment"


def test_a_failing_cycle_tick_is_logged_not_swallowed(
    core: Core, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cycle closes, default coverage and validation timeouts all hang on the tick: a tick
    that keeps failing says so (once a minute), and says when it works again."""
    from fourmica_x402.server.context import Service

    service = Service(core, webhooks=False)
    failures = [3]

    def tick() -> dict[str, int]:
        if failures[0]:
            failures[0] -= 1
            raise Unavailable("database is locked")
        return {}

    monkeypatch.setattr(core, "tick", tick)

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.tick_forever(0.01), 0.5)

    with caplog.at_level("WARNING", logger="fourmica_x402.service"):
        asyncio.run(run())
    said = [r.getMessage() for r in caplog.records if r.name == "fourmica_x402.service"]
    assert said[0] == "cycle tick failed (1 in a row); retrying"  # then quiet for a minute
    assert said[1:] == ["cycle tick works again after 3 failures"]


def test_an_outage_answers_503_without_the_databases_details(
    client: TestClient, core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller without a key learns that the Core is down, not its database's user, host,
    port and name: those go to the log (docs/operations.md, "Keys")."""
    from fourmica_x402.core.store import StoreUnavailable

    detail = "cannot connect to PostgreSQL database postgresql://fx@db.internal:5432/core"

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable(detail)

    monkeypatch.setattr(core, "positions", down)
    monkeypatch.setattr(core, "open_tab", down)
    buyer = TestBuyer.new().address
    answers = [
        client.get("/api/positions"),
        client.post("/tabs", json={"userAddress": buyer, "recipientAddress": SELLER}),
        client.post(
            "/core/payment-tabs", json={"user_address": buyer, "recipient_address": SELLER}
        ),
    ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert "db.internal" not in answer.text and "retry later" in answer.text


def test_every_read_answers_an_outage_with_503_metrics_too(tmp_path: Path) -> None:
    """``/metrics`` (not timed) let the Core's error through: a bare 500 and a traceback in the
    log where the other reads answered 503 ``core_unavailable``."""
    core = Core(str(tmp_path / "down.db"))
    app = create_app(core, sandbox=True, tick_interval=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 200
        core.store.close()  # the database gone (PostgreSQL down)
        for path in ("/api/positions", "/metrics"):
            answer = client.get(path)
            assert (answer.status_code, answer.json()["error"]) == (503, "core_unavailable")


def test_a_database_file_gone_bad_is_an_outage_not_a_500(tmp_path: Path) -> None:
    """An overwritten SQLite file ("file is not a database") raised ``sqlite3.DatabaseError``,
    which the store did not take for an outage: a bare 500 and a traceback per read."""
    path = tmp_path / "bad.db"
    core = Core(str(path))
    app = create_app(core, sandbox=True, tick_interval=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 200
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if name.exists():
                name.write_bytes(b"\x00garbage" * 512)
        for read in ("/metrics", "/api/positions", "/dashboard"):
            answer = client.get(read)
            assert (answer.status_code, answer.json()["error"]) == (503, "core_unavailable")


def test_unknown_paths_and_methods_answer_the_json_error_shape(client: TestClient) -> None:
    """docs/protocol.md, "Reason codes": every error is {"error": code, "message": text}."""
    missing = client.get("/nope")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    wrong = client.get("/settle")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    old = {"user_address": SELLER, "recipient_address": SELLER, "guarantee_version": 7}
    refused = client.post("/core/payment-tabs", json=old)  # a bad request, never a 402
    assert (refused.status_code, refused.json()["reason"]) == (400, "unsupported_version")


def test_the_tab_calls_limit_new_tabs_per_buyer_and_per_keyless_client(core: Core) -> None:
    """Anyone may open tabs on the service (the official tab call has no key), so it limits
    *new* ones (docs/operations.md): per userAddress for everyone, per client address for
    callers without a key. A reused tab is never counted."""
    from fourmica_x402.tabs import NewTabLimits

    app = create_app(core, api_key="op", tick_interval=None, webhooks=False)
    app.state.service.new_tabs = NewTabLimits(per_user=2, per_client=3)
    sellers = [TestBuyer.new().address for _ in range(3)]

    def tab(client: TestClient, user: str, seller: str, **headers: str) -> int:
        body = {"userAddress": user, "recipientAddress": seller}
        return client.post("/tabs", json=body, headers=headers).status_code

    with TestClient(app) as client:
        users = [TestBuyer.new().address for _ in range(5)]
        assert [tab(client, u, SELLER) for u in users[:3]] == [200, 200, 200]
        refused = client.post("/tabs", json={"userAddress": users[3], "recipientAddress": SELLER})
        assert (refused.status_code, refused.json()["reason"]) == (429, "tab_rate_limited")
        assert tab(client, users[0], SELLER) == 200  # a reuse: not a new tab
        snake = {"user_address": users[3], "recipient_address": SELLER}
        assert client.post("/core/payment-tabs", json=snake).status_code == 429
        operator = {"authorization": "Bearer op"}  # a keyed caller: per buyer only
        assert tab(client, users[4], SELLER, **operator) == 200
        assert [tab(client, users[4], s, **operator) for s in sellers[:2]] == [200, 429]


def test_keyless_tab_calls_from_one_ipv6_site_share_one_client_budget(core: Core) -> None:
    """Fresh addresses of one IPv6 /64 (one host's or site's share) are one client: each
    counted apart, a keyless caller opened new tabs to any seller at any rate."""
    from fourmica_x402.tabs import NewTabLimits

    app = create_app(core, tick_interval=None, webhooks=False)
    app.state.service.new_tabs = NewTabLimits(per_user=2, per_client=3)

    def tab(address: str) -> int:
        with TestClient(app, client=(address, 50_000)) as client:
            body = {"userAddress": TestBuyer.new().address, "recipientAddress": SELLER}
            return client.post("/tabs", json=body).status_code

    site = [f"2001:db8:5:1::{n:x}" for n in range(1, 6)]
    assert [tab(address) for address in site] == [200, 200, 200, 429, 429]
    assert tab("2001:db8:5:2::1") == 200  # another /64


def test_keyless_callers_cannot_spend_a_keyed_sellers_tab_budget(core: Core) -> None:
    """The per-buyer budget of new tabs is the keyless callers' own: a stranger opening a
    buyer's tabs to random addresses must not lock that buyer out of its real seller, whose
    calls carry the seller's key. A refusal says when to try again (Retry-After)."""
    from fourmica_x402.tabs import NewTabLimits

    app = create_app(core, seller_keys={"sk": SELLER}, tick_interval=None, webhooks=False)
    app.state.service.new_tabs = NewTabLimits(per_user=2, per_client=100)
    victim = TestBuyer.new().address
    with TestClient(app) as client:
        for _ in range(2):  # the stranger spends the keyless budget for this buyer
            body = {"userAddress": victim, "recipientAddress": TestBuyer.new().address}
            assert client.post("/tabs", json=body).status_code == 200
        stranger = {"userAddress": victim, "recipientAddress": TestBuyer.new().address}
        for path, body in (
            ("/tabs", stranger),
            ("/core/payment-tabs", {"user_address": victim, "recipient_address": SELLER}),
        ):
            refused = client.post(path, json=body)
            assert (refused.status_code, refused.json()["reason"]) == (429, "tab_rate_limited")
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        keyed = {"authorization": "Bearer sk"}
        mine = client.post(
            "/tabs", json={"userAddress": victim, "recipientAddress": SELLER}, headers=keyed
        )
        assert mine.status_code == 200, mine.text


def test_a_remote_facilitators_tab_limit_reaches_the_buyer_as_a_429(
    core: Core, tmp_path: Path
) -> None:
    """A seller on HttpFacilitator passes the service's 429 on, with its Retry-After, at
    once: a rate limit is not an outage (503), and waiting out a minute's window in retries
    would only hold the buyer's request."""
    from fourmica_x402.tabs import NewTabLimits

    service = create_app(core, tick_interval=None, webhooks=False)
    service.state.service.new_tabs = NewTabLimits(per_user=1, per_client=1)
    with contextlib.contextmanager(_served)(service) as (url, _):
        facilitator = HttpFacilitator(url, retries=3, backoff=0.5)
        seller = remote_seller(facilitator, tmp_path)
        req = decode_payment_required(seller.get("/premium").headers["payment-required"])
        offer = req.accepts[0].to_dict()

        def tab() -> httpx.Response:
            user = TestBuyer.new().address
            body = {"x402Version": 2, "userAddress": user, "paymentRequirements": offer}
            return seller.post("/x402/tab", json=body)

        assert tab().status_code == 200
        started = time.monotonic()
        refused = tab()
        took = time.monotonic() - started
        facilitator.close()
    assert (refused.status_code, refused.json()["reason"]) == (429, "tab_rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert took < 0.5, f"retried a rate limit for {took:.1f} s"


def test_a_tabs_latest_guarantee_is_a_404_not_a_bad_request(client: TestClient) -> None:
    """sdk-4mica's get_latest_guarantee reads .../guarantees/latest: not served, so 404."""
    answer = client.get("/core/tabs/0x1/guarantees/latest")
    assert (answer.status_code, answer.json()["reason"]) == (404, "not_found")
    assert client.get("/core/tabs/0x1/guarantees/nope").status_code == 400


def test_the_tab_calls_read_the_official_aliases_and_null_asset(client: TestClient) -> None:
    """As the official facilitator reads them: ``networkId``/``network_id`` and
    ``assetAddress`` on /tabs; a ``guaranteeVersion`` other than ``x402Version`` refused; on
    /core/payment-tabs an ``erc20_token`` of null is the native asset (0x0), as the SDK means
    it, never the default token."""
    user = TestBuyer.new().address
    sepolia_usdc = "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238"
    for network in ("networkId", "network_id"):
        body = {"userAddress": user, "recipientAddress": SELLER, network: "eip155:11155111"}
        tab = client.post("/tabs", json={**body, "assetAddress": sepolia_usdc}).json()
        assert tab["assetAddress"] == sepolia_usdc, tab
    mismatched = {"userAddress": user, "recipientAddress": SELLER, "guaranteeVersion": 1}
    refused = client.post("/tabs", json={**mismatched, "x402Version": 2})
    assert (refused.status_code, refused.json()["reason"]) == (400, "invalid_request")
    assert "does not match x402Version" in refused.json()["error"]
    snake = {"user_address": user, "recipient_address": SELLER}
    native = client.post("/core/payment-tabs", json={**snake, "erc20_token": None}).json()
    assert native["erc20_token"] == "0x" + "00" * 20
    default = client.post("/core/payment-tabs", json=snake).json()
    assert default["erc20_token"] == USDC


def _settle_body(client: TestClient, core: Core, buyer: TestBuyer) -> dict[str, Any]:
    core.deposit(buyer.address, 100_000, network=NETWORK)
    req = requirements()
    payload = signed_payload(client, buyer, req)
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req.to_dict()}


def test_a_settle_accepted_is_a_success_even_when_its_certificate_cannot_be_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The acceptance commits before the certificate is made (a second write). When that write
    cannot happen — another connection holds the database past the busy timeout — the answer
    still says the payment settled: a seller told otherwise would not deliver, and the buyer
    would be netted for nothing. The certificate is made on demand later."""
    from fourmica_x402.core.store.sqlite import SQLiteStore

    db = tmp_path / "busy.db"
    core = Core(SQLiteStore(str(db), busy_timeout_ms=200))
    blocker = sqlite3.connect(db, isolation_level=None, timeout=5, check_same_thread=False)

    def hold_the_database(event: Any) -> None:  # after the acceptance committed
        if event.type == "guarantee.accepted":
            blocker.execute("BEGIN IMMEDIATE")

    core.subscribe(hold_the_database)
    try:
        with TestClient(create_app(core, sandbox=True, tick_interval=None)) as client:
            buyer = TestBuyer.new()
            body = _settle_body(client, core, buyer)
            with caplog.at_level(logging.WARNING, "fourmica_x402.service"):
                answer = client.post("/settle", json=body)
            blocker.execute("ROLLBACK")
            assert answer.status_code == 200, answer.text
            settled = answer.json()
            assert settled["success"] is True and settled["certificate"] is None
            gid = settled["transaction"]
            assert "without its certificate" in caplog.text and gid in caplog.text
            assert core.guarantee(gid).state == "payable"
            assert core.position(buyer.address, network=NETWORK).locked == 10_000
            # Made on demand later, by whoever asks for it.
            claims = body["paymentPayload"]["payload"]["claims"]
            later = client.get(
                f"/core/tabs/{claims['tab_id']}/guarantees/{claims['req_id']}"
            ).json()
            assert len(bytes.fromhex(later["certificate"]["signature"][2:])) == 96
    finally:
        blocker.close()
        assert core.audit() == []
        core.close()


def test_a_core_api_guarantee_accepted_is_answered_with_its_certificate_when_busy(
    tmp_path: Path,
) -> None:
    """``POST /core/guarantees`` answers with the certificate; when the database cannot file
    it after the acceptance committed (busy past its timeout), the answer is still the 200 with
    the certificate, signed without the database: a 503 would tell the seller nothing was
    accepted, and the buyer would pay for work never delivered (docs/protocol.md)."""
    from fourmica_x402.core.store.sqlite import SQLiteStore

    db = tmp_path / "busy.db"
    core = Core(SQLiteStore(str(db), busy_timeout_ms=200))
    blocker = sqlite3.connect(db, isolation_level=None, timeout=5, check_same_thread=False)

    def hold_the_database(event: Any) -> None:  # after the acceptance committed
        if event.type == "guarantee.accepted":
            blocker.execute("BEGIN IMMEDIATE")

    core.subscribe(hold_the_database)
    try:
        with TestClient(create_app(core, sandbox=True, api_key="s3cret", tick_interval=None)) as c:
            buyer = TestBuyer.new()
            signed = _settle_body(c, core, buyer)["paymentPayload"]["payload"]
            answer = c.post("/core/guarantees", json=signed, headers=KEY)
            blocker.execute("ROLLBACK")
            assert answer.status_code == 200, answer.text
            assert core.position(buyer.address, network=NETWORK).locked == 10_000
            claims = signed["claims"]
            later = c.get(f"/core/tabs/{claims['tab_id']}/guarantees/{claims['req_id']}").json()
            assert answer.json() == later["certificate"]  # the one filed later
    finally:
        blocker.close()
        assert core.audit() == []
        core.close()


def test_a_settle_refunded_before_its_certificate_still_says_it_settled(core: Core) -> None:
    """The seller refunds the guarantee between the acceptance and its certificate: the settle
    did happen (its answer is the 200 shape, success, no certificate) and the refund stands."""

    def refund_at_once(event: Any) -> None:
        if event.type == "guarantee.accepted":
            core.void(event.data["guarantee_id"], by=SELLER)

    core.subscribe(refund_at_once)
    with TestClient(create_app(core, sandbox=True, tick_interval=None)) as client:
        buyer = TestBuyer.new()
        answer = client.post("/settle", json=_settle_body(client, core, buyer))
        assert answer.status_code == 200, answer.text
        settled = answer.json()
        assert settled["success"] is True and settled["certificate"] is None
        assert core.guarantee(settled["transaction"]).state == "voided"
        assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_guarantee_id_in_capitals_names_the_same_guarantee(
    client: TestClient, core: Core
) -> None:
    gid = settled(client, core, TestBuyer.new())
    shouted = "0x" + gid[2:].upper()
    voided = client.post(f"/guarantees/{shouted}/void", json={"by": SELLER}, headers=KEY)
    assert voided.status_code == 200, voided.text
    assert voided.json()["state"] == "voided" and core.guarantee(gid).state == "voided"
    unknown = client.post("/guarantees/0xNOTANID/void", json={"by": SELLER}, headers=KEY)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_guarantee")


def test_text_holding_a_nul_is_refused_alike_on_every_store(store_url: str) -> None:
    """PostgreSQL refuses U+0000 in text where SQLite keeps it: such text is refused where it
    comes in, so both stores answer the same stable codes, never a 500 (docs/protocol.md,
    "Reason codes"): claims with such a tag are a malformed payment, a score's tag a bad
    request, a guarantee id or webhook subscription id with one names nothing."""
    core = Core(store_url)
    try:
        app = create_app(core, sandbox=True, api_key="s3cret", tick_interval=None)
        with TestClient(app) as client:
            buyer = TestBuyer.new()
            core.deposit(buyer.address, 100_000, network=NETWORK)
            nul_tag = requirements(
                replace(test_policy(validator=SELLER), tag="delivery\x00").to_extra()
            )
            payload = signed_payload(client, buyer, nul_tag, guarantee_version=2)
            body = {"paymentPayload": payload, "paymentRequirements": nul_tag.to_dict()}
            verdict = client.post("/verify", json=body).json()
            assert (verdict["isValid"], verdict["invalidReason"]) == (False, "malformed_payment")
            answer = client.post("/settle", json=body, headers=KEY).json()
            assert (answer["success"], answer["error"]) == (False, "malformed_payment")
            inner = client.post("/core/guarantees", json=payload["payload"], headers=KEY)
            assert (inner.status_code, inner.json()["reason"]) == (400, "malformed_payment")

            plain = requirements(test_policy(validator=SELLER).to_extra())  # any tag is taken
            body = {
                "paymentPayload": signed_payload(client, buyer, plain, guarantee_version=2),
                "paymentRequirements": plain.to_dict(),
            }
            gid = client.post("/settle", json=body, headers=KEY).json()["transaction"]
            score = {"validator": SELLER, "score": 100}
            tagged = client.post(
                f"/guarantees/{gid}/validation", json={**score, "tag": "x\x00"}, headers=KEY
            )
            assert (tagged.status_code, tagged.json()["error"]) == (400, "invalid_request")
            assert core.guarantee(gid).state == "pending_validation"
            for path, call in (("void", {"by": SELLER}), ("validation", score)):
                unknown = client.post(f"/guarantees/0x%00/{path}", json=call, headers=KEY)
                assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_guarantee")

            hook = {"url": "https://hooks.example/h", "secret": "a\x00b"}
            subscribed = client.post("/admin/webhooks", json=hook, headers=KEY)
            assert (subscribed.status_code, subscribed.json()["error"]) == (400, "invalid_request")
            removed = client.delete("/admin/webhooks/wh_%00", headers=KEY)
            assert (removed.status_code, removed.json()["error"]) == (404, "not_found")
            assert core.position(buyer.address, network=NETWORK).locked == 10_000  # one payment
        assert core.audit() == []
    finally:
        core.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/settle/"), ("POST", "/verify/"), ("POST", "/tabs/"), ("GET", "/supported/")],
)
def test_a_trailing_slash_is_another_path_not_a_redirect(
    client: TestClient, method: str, path: str
) -> None:
    """Never a redirect built from the request's Host header (a client following a 307 would
    post the payment there)."""
    answer = client.request(
        method, path, json={}, headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
    assert "location" not in answer.headers


def test_seller_keys_alone_still_keep_rebound_pages_out_of_the_sandbox(core: Core) -> None:
    """Seller keys guard refunds, scores and settles, not the sandbox or the webhook admin:
    without the operator's key a page whose DNS name was rebound to the service is refused."""
    app = create_app(core, sandbox=True, seller_keys={"tokA": SELLER}, tick_interval=None)
    client = TestClient(app)
    rebound = {"origin": "http://rebound.example:4031", "host": "rebound.example:4031"}
    hook = {"url": "http://rebound.example/collect", "events": ["*"]}
    deposit = {"address": TestBuyer.new().address, "amount": 5}
    for path, body in (("/admin/webhooks", hook), ("/sandbox/deposit", deposit)):
        answer = client.post(path, content=json.dumps(body), headers=rebound)
        assert (answer.status_code, answer.json()["error"]) == (403, "cross_origin"), path
    assert client.get("/admin/webhooks").json() == []
    assert core.position(deposit["address"], network=NETWORK).collateral == 0
    assert client.post("/sandbox/deposit", json=deposit).status_code == 200  # not a browser


@pytest.mark.parametrize("path", ["/admin/webhooks", "/api/positions", "/", "/metrics"])
def test_a_rebound_page_cannot_read_a_keyless_service(core: Core, path: str) -> None:
    """A browser says it sends a request (``Sec-Fetch-Site``, ``Origin``): sent to a DNS name
    the service does not have, it is a rebound page reading the service as its own origin.
    Clients that are not browsers, and browsers at an IP address or localhost, are served."""
    client = TestClient(create_app(core, sandbox=True, tick_interval=None))
    client.post("/admin/webhooks", json={"url": "https://hooks.example/T0/B0/SECRETPATH"})
    rebound = {"host": "rebound.example:4032", "sec-fetch-site": "same-origin"}
    refused = client.get(path, headers=rebound)
    assert (refused.status_code, refused.json()["error"]) == (403, "cross_origin")
    assert "SECRETPATH" not in refused.text
    for served in (
        {"host": "rebound.example:4032"},  # curl, a script: no browser headers
        {"host": "192.168.1.5:4021", "sec-fetch-site": "same-origin"},  # an IP: not rebound
        {"host": "[::1]:4021", "sec-fetch-site": "none"},
        {"host": "localhost:4021", "sec-fetch-site": "same-origin"},
    ):
        assert client.get(path, headers=served).status_code == 200, served
    broken = client.get(path, headers={"host": "[::1", "sec-fetch-site": "same-origin"})
    assert (broken.status_code, broken.json()["error"]) == (403, "cross_origin")
    assert "--allowed-host" in refused.json()["message"]  # how a name of its own gets in
    for served in ("app.localhost:4021", "LOCALHOST.:4021", "[::1]:4021"):
        answer = client.get(path, headers={"host": served, "sec-fetch-site": "same-origin"})
        assert answer.status_code == 200, served
    # behind a reverse proxy that passes its upstream name, or on a LAN name: named at start
    proxied = TestClient(
        create_app(core, sandbox=True, tick_interval=None, allowed_hosts=["Fourmica", "box.lan."])
    )
    for name in ("fourmica:8000", "box.lan", "BOX.LAN.:4021"):
        answer = proxied.get(path, headers={"host": name, "sec-fetch-site": "same-origin"})
        assert answer.status_code == 200, name
    assert proxied.get(path, headers=rebound).status_code == 403


def test_a_cycle_id_too_long_for_a_number_is_a_404_not_a_500(client: TestClient) -> None:
    for path, code in (
        ("/api/cycles/" + "9" * 5000, "unknown_cycle"),
        ("/api/cycles/99999999999999999999", "unknown_cycle"),
        ("/api/cycles/12345", "unknown_cycle"),
        ("/api/cycles/-1", "not_found"),
        ("/api/cycles/abc", "not_found"),
    ):
        answer = client.get(path)
        assert (answer.status_code, answer.json()["error"]) == (404, code), path


@pytest.mark.parametrize("tick", [False, True], ids=["refused_at_the_deadline", "cancelled_first"])
def test_a_remote_response_that_outlasts_its_validation_timeout_is_recorded_cancelled(
    tmp_path: Path, tick: bool
) -> None:
    """The Core cancels a G-v2 guarantee at its validation deadline, scored or not (the buyer
    is not charged). A remote seller's score after it is refused for good: its record says
    ``cancelled``, not ``delivered`` — its books would show money it is never paid."""
    clock = FakeClock()
    core = Core(str(tmp_path / "core.db"), config=CoreConfig(validation_timeout=60), clock=clock)
    served = _served(create_app(core, sandbox=True, tick_interval=None))
    url, _ = next(served)

    async def slow(request: Request) -> JSONResponse:
        clock.advance(61)  # the answer outlasts the validation timeout
        if tick:
            core.tick()
        return JSONResponse({"payer": request.state.payment.payer})

    try:
        gate, seller = policy_seller(url, tmp_path, slow)
        buyer = TestBuyer.new()
        assert pay_premium(seller, core, buyer).status_code == 200
        gate.flush()  # the delivery score goes to the facilitator after the response
        core.expire_validations()
        (record,) = gate.records.query(payer=buyer.address)
        assert (record.status, record.outcome) == ("delivered", "cancelled")
        assert core.guarantee(record.guarantee_id).state == "cancelled"
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(served, None)
        core.close()


@pytest.mark.parametrize("meanwhile", ["deadline", "refund"])
def test_a_delivery_score_retried_too_late_records_what_the_buyer_paid(
    tmp_path: Path, meanwhile: str
) -> None:
    """The score could not reach the facilitator (``score_pending``, retried by the
    reconciler); by the retry the Core has cancelled the guarantee at its deadline, or the
    seller refunded it: the follow-up closes and the record says ``cancelled`` or
    ``refunded`` (the buyer was not charged), never ``score_pending`` for good."""
    clock = FakeClock()
    core = Core(str(tmp_path / "core.db"), config=CoreConfig(validation_timeout=60), clock=clock)
    port = _free_port()

    def serve() -> Iterator[tuple[str, uvicorn.Server]]:
        running = _served(create_app(core, sandbox=True, tick_interval=None), port)
        next(running)
        return running

    running = serve()

    async def premium(request: Request) -> JSONResponse:
        next(running, None)  # the facilitator goes away after the settle, before the score
        return JSONResponse({"payer": request.state.payment.payer})

    try:
        gate, seller = policy_seller(f"http://127.0.0.1:{port}", tmp_path, premium, retries=0)
        buyer = TestBuyer.new()
        assert pay_premium(seller, core, buyer).status_code == 200
        gate.flush()
        (record,) = gate.records.query(payer=buyer.address)
        assert record.outcome == "score_pending"
        if meanwhile == "deadline":
            clock.advance(61)
            core.tick()  # the deadline passed: the Core cancels the guarantee
        else:
            core.void(record.guarantee_id, by=SELLER)
        running = serve()
        gate.reconcile(now=time.time() + 3600)  # past the follow-up's first backoff
        (record,) = gate.records.query(payer=buyer.address)
        outcome, state = (
            ("cancelled", "cancelled") if meanwhile == "deadline" else ("refunded", "voided")
        )
        assert (record.status, record.outcome) == ("delivered", outcome)
        assert core.guarantee(record.guarantee_id).state == state
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(running, None)
        core.close()


def test_the_services_pages_load_nothing_and_are_never_framed(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "<script" not in page.text  # nothing the policy would have to allow
    assert page.headers["x-frame-options"] == "DENY"
    for answer in (page, client.get("/metrics"), client.get("/api/positions"), client.get("/nope")):
        assert answer.headers.get("x-content-type-options") == "nosniff", answer.request.url


def test_open_reads_run_on_their_own_thread_and_are_shared_while_queued() -> None:
    """The dashboard and /metrics scan the whole history: many at once must not take the
    threads the payment calls run on, nor each pay the scan again; but no answer may be older
    than its request, and a read nobody waits for any more is not run."""
    from fourmica_x402.server.table import Reads

    reads, ran = Reads(), []
    gates = {name: threading.Event() for name in ("busy", "d", "again")}

    def scan(name: str) -> tuple[str, str]:
        ran.append(name)
        if name in gates:
            gates[name].wait(10)
        return name, threading.current_thread().name

    async def main() -> None:
        busy = asyncio.ensure_future(reads.run("busy", scan, "busy"))  # the thread is taken
        await asyncio.sleep(0.1)
        asked = [asyncio.ensure_future(reads.run("dashboard", scan, "d")) for _ in range(8)]
        junk = asyncio.ensure_future(reads.run("junk", scan, "junk"))
        other = asyncio.ensure_future(reads.run("metrics", scan, "m"))
        await asyncio.sleep(0.1)
        # the payment calls' threads are all free meanwhile
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "settled"), 5) == "settled"
        asked[0].cancel()  # one client leaving does not stop the read the others wait for
        junk.cancel()  # its only client left before it began: never run
        await asyncio.sleep(0.1)  # the leaving is seen on the loop before the thread goes on
        gates["busy"].set()
        gates["d"].set()
        answers = await asyncio.gather(*asked[1:], other)
        assert {a[0] for a in answers[:-1]} == {"d"} and answers[-1][0] == "m"
        assert {a[1] for a in answers} == {"fourmica-reads_0"}
        await busy
        assert ran == ["busy", "d", "m"]  # one scan for the eight; the junk one dropped
        # asked while the same read runs: a run of its own, begun after the ask
        first = asyncio.ensure_future(reads.run("dashboard", scan, "again"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(reads.run("dashboard", scan, "fresh"))
        await asyncio.sleep(0.1)
        gates["again"].set()
        assert [(await first)[0], (await second)[0]] == ["again", "fresh"]

    try:
        asyncio.run(main())
    finally:
        reads.close()
    closed = asyncio.run(reads.run("late", lambda: threading.current_thread().name))
    assert not closed.startswith("fourmica-reads")  # after the app's end: a worker thread


def test_the_sandbox_takes_a_debit_payment_in_dollars_as_its_other_calls_do(
    tmp_path: Path,
) -> None:
    """``/sandbox/debits/pay`` passed ``amount`` on as it came: "$0.0001" or "100" was 400
    ``invalid_amount``, where deposits and withdrawals read both."""
    config = CoreConfig(resolution_delay=0, payment_window=60, finality=60)
    core = Core(str(tmp_path / "core.db"), config=config)
    payer, seller = TestBuyer.new(), TestBuyer.new()
    with TestClient(create_app(core, sandbox=True, tick_interval=None, webhooks=False)) as client:
        assert client.post("/sandbox/deposit", json={"address": payer.address, "amount": "$1"})
        core.accept(*payer.pay(core, seller.address, 300))
        cycle_id = client.post("/sandbox/cycles/close", json={}).json()["cycle_id"]
        assert client.post("/sandbox/tick", json={}).json()["resolved"] == 1
        body = {"cycle_id": cycle_id, "address": payer.address}
        assert (
            client.post("/sandbox/debits/pay", json={**body, "amount": "$0.0001"}).json()["paid"]
            == 100
        )
        assert (
            client.post("/sandbox/debits/pay", json={**body, "amount": "150"}).json()["paid"] == 250
        )
        refused = client.post("/sandbox/debits/pay", json={**body, "amount": "$0.00005x"})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
        assert client.post("/sandbox/debits/pay", json=body).json()["status"] == "paid"
    core.close()


def test_a_refund_of_a_guarantee_cancelled_meanwhile_tells_the_buyer_it_is_not_charged(
    tmp_path: Path,
) -> None:
    """The handler failed after the validation deadline passed: the refund finds the guarantee
    cancelled already (so the buyer is not charged); the answer's result header says so."""
    clock = FakeClock()
    core = Core(str(tmp_path / "core.db"), config=CoreConfig(validation_timeout=60), clock=clock)
    served = _served(create_app(core, sandbox=True, tick_interval=None))
    url, _ = next(served)

    async def broken(request: Request) -> JSONResponse:
        clock.advance(61)
        core.tick()  # cancelled at its deadline while the handler ran
        return JSONResponse({"error": "upstream down"}, status_code=502)

    try:
        gate, seller = policy_seller(url, tmp_path, broken)
        buyer = TestBuyer.new()
        answer = pay_premium(seller, core, buyer)
        assert answer.status_code == 502
        result = json.loads(base64.b64decode(answer.headers["payment-response"]))
        assert result["success"] is False and result["errorReason"] == "refunded"
        (record,) = gate.records.query(payer=buyer.address)
        assert record.outcome == "cancelled"
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        next(served, None)
        core.close()


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["/tabs", "/core/payment-tabs"])
def test_a_tab_call_that_ends_in_another_processs_new_tab_is_not_counted(
    postgres_url: str, path: str
) -> None:
    """Two processes open one buyer's tab at once (PostgreSQL): the one that loses reuses the
    winner's tab, and a reused tab is never counted (docs/operations.md, "The service's tab
    calls"), so the buyer's budget of new tabs is still whole."""
    from fourmica_x402.core import tabs
    from fourmica_x402.tabs import NewTabLimits

    core, other = Core(postgres_url), Core(postgres_url)
    app = create_app(core, api_key="op", tick_interval=None, webhooks=False)
    app.state.service.new_tabs = NewTabLimits(per_user=1, per_client=100)
    buyer = TestBuyer.new().address
    key = (buyer, SELLER, NETWORK, USDC, 1)
    opened, go_on = threading.Event(), threading.Event()

    def open_elsewhere() -> None:  # another process's new tab, committed once told to
        with other.store.transaction() as tx:
            tabs.open_once(tx, key, 3600, time.time(), tabs.OpenTabCounts())
            opened.set()
            go_on.wait(30)

    bodies = {
        "/tabs": {"userAddress": buyer, "recipientAddress": SELLER, "erc20Token": USDC},
        "/core/payment-tabs": {
            "user_address": buyer,
            "recipient_address": SELLER,
            "erc20_token": USDC,
        },
    }
    answers: list[Any] = []
    elsewhere = threading.Thread(target=open_elsewhere)
    try:
        with TestClient(app) as client:
            elsewhere.start()
            assert opened.wait(30)
            asking = threading.Thread(
                target=lambda: answers.append(client.post(path, json=bodies[path]))
            )
            asking.start()
            time.sleep(0.5)  # the call waits for the other process's tab
            go_on.set()
            elsewhere.join(30)
            asking.join(30)
            assert answers and answers[0].status_code == 200, answers
            reused = answers[0].json()
            assert reused.get("nextReqId", reused.get("next_req_id")) == "0x1"  # a reuse
            body = {"userAddress": buyer, "recipientAddress": TestBuyer.new().address}
            fresh = client.post("/tabs", json=body)  # the buyer's one new tab of the window
            assert fresh.status_code == 200, fresh.text
    finally:
        go_on.set()
        other.close()
        core.close()


def test_the_public_url_is_handed_out_whole_and_never_with_credentials(tmp_path: Path) -> None:
    """``public_url`` is in every ``/core/public-params`` answer, to anyone: credentials in it
    were published, a query or fragment broke the RPC URL; a path prefix is kept."""
    core = Core(f"sqlite:///{tmp_path / 'core.db'}")
    try:
        for bad in ("https://op:hunter2@core.example", "https://core.example/?x=1"):
            with pytest.raises(ConfigurationError) as info:
                create_app(core, tick_interval=None, public_url=bad)
            assert "hunter2" not in str(info.value)
        app = create_app(core, tick_interval=None, public_url="https://core.example/x402")
        params = TestClient(app).get("/core/public-params").json()
        assert params["ethereum_http_rpc_url"] == "https://core.example/x402/rpc"
    finally:
        core.close()


def test_an_allowed_host_no_host_header_can_name_is_refused_at_start(tmp_path: Path) -> None:
    """``allowed_hosts=["box.lan:8402"]`` (or a URL) was taken and never matched: the
    operator's browser got 403 ``cross_origin`` on the dashboard with nothing saying why."""
    core = Core(f"sqlite:///{tmp_path / 'core.db'}")
    try:
        for bad in ("box.lan:8402", "http://box.lan", "box.lan/", "", "user@box.lan"):
            with pytest.raises(ConfigurationError, match="allowed host"):
                create_app(core, tick_interval=None, allowed_hosts=[bad])
        app = create_app(core, tick_interval=None, allowed_hosts=["Box-1.lan.", "my_box"])
        headers = {"host": "box-1.lan:8402", "sec-fetch-site": "same-origin"}
        assert TestClient(app).get("/api/positions", headers=headers).status_code == 200
    finally:
        core.close()
