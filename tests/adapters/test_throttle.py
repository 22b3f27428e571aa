"""The throttle slows down whoever sends refused payments, and only them: a used payment
replayed by someone else does not lock its payer out (docs/protocol.md, ``throttled``)."""

from __future__ import annotations

import base64
import json
from typing import Any

from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer

SELLER = TestBuyer.new().address


def _app(core: Core) -> Any:
    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    app = Starlette(routes=[Route("/premium", premium)])
    return PaymentMiddleware(
        app,
        pay_to=SELLER,
        core=core,
        network=NETWORK,
        routes={"GET /premium": "$0.01"},
        throttle_failures=3,
        throttle_window=60,
    )


def _client(app: Any, address: str) -> TestClient:
    return TestClient(app, client=(address, 50_000))


def test_replaying_a_used_payment_does_not_lock_its_payer_out(audited_core: Core) -> None:
    app = _app(audited_core)
    victim, attacker = _client(app, "203.0.113.7"), _client(app, "198.51.100.9")
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)

    def payment() -> dict[str, str]:
        name, value = buyer.pay_challenge(
            audited_core, victim.get("/premium").headers["payment-required"]
        )
        return {name: value}

    used = payment()
    assert victim.get("/premium", headers=used).status_code == 200
    for _ in range(5):  # someone else sends the victim's used payment again and again
        refused = attacker.get("/premium", headers=used)
        assert refused.status_code in (402, 429)
    assert attacker.get("/premium", headers=used).status_code == 429  # that sender is slowed
    fresh = victim.get("/premium", headers=payment())  # the payer, from its own address
    assert fresh.status_code == 200, fresh.text
    # The payer's own refused payments still count against it, at its address.
    for _ in range(3):
        assert victim.get("/premium", headers=used).status_code == 402
    assert victim.get("/premium", headers=payment()).status_code == 429


def test_rotating_addresses_within_one_ipv6_64_is_one_sender(audited_core: Core) -> None:
    """A host holds a whole IPv6 /64: replaying from a new address of it each time evaded
    the throttle (every replay reached the settlement). Another network's payer is unaffected."""
    app = _app(audited_core)
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    own = _client(app, "2001:db8:aaaa:1::7")
    name, value = buyer.pay_challenge(audited_core, own.get("/premium").headers["payment-required"])
    used = {name: value}
    assert own.get("/premium", headers=used).status_code == 200
    statuses = [
        _client(app, f"2001:db8:bbbb:2::{i:x}").get("/premium", headers=used).status_code
        for i in range(1, 9)
    ]
    assert statuses[:3] == [402, 402, 402] and set(statuses[3:]) == {429}
    name, value = buyer.pay_challenge(audited_core, own.get("/premium").headers["payment-required"])
    assert own.get("/premium", headers={name: value}).status_code == 200


def test_unsigned_payments_naming_new_payers_are_one_sender(audited_core: Core) -> None:
    """A payment the Core refuses before checking its signature (a validation policy out of
    range) proves nothing about the payer it names: naming a new payer each time evaded the
    sender's throttle, every one reaching the Core."""
    app = _app(audited_core)
    attacker = _client(app, "198.51.100.9")
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    challenge = attacker.get("/premium").headers["payment-required"]
    name, value = buyer.pay_challenge(audited_core, challenge)
    data = json.loads(base64.b64decode(value))
    statuses: list[int] = []
    for _ in range(5):
        data["payload"]["claims"].update(
            user_address=TestBuyer.new().address, min_validation_score=0
        )
        forged = base64.b64encode(json.dumps(data).encode()).decode()
        statuses.append(attacker.get("/premium", headers={name: forged}).status_code)
    assert statuses[:3] == [402, 402, 402] and set(statuses[3:]) == {429}, statuses
