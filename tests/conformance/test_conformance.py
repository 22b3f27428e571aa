"""One behaviour suite for every adapter (Starlette, FastAPI, WSGI, Flask, Django sync/async).

Everything goes through the framework's own test client, the real gate and a real
embedded Core on a SQLite file. ``seller.calls`` counts handler runs: a paid handler
must never have run for a request that was not paid.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fourmica_x402.core import CoreConfig
from fourmica_x402.errors import Unavailable
from fourmica_x402.gate import DENY, GRANT
from fourmica_x402.guarantee import SignedGuarantee, ValidationPolicy
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header, test_policy
from fourmica_x402.wire import (
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    PaymentRequirementsV1,
    decode_payment_header,
    decode_payment_required,
    encode_header,
)

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


def b64json(value: str) -> Any:
    return json.loads(base64.b64decode(value))


def funded(seller: Any, amount: int = 1_000_000) -> TestBuyer:
    buyer = TestBuyer.new()
    seller.core.deposit(buyer.address, amount, network=NETWORK)
    return buyer


def challenge(seller: Any, path: str, method: str = "GET", version: int = 2) -> PaymentRequirements:
    resp = seller.request(method, path, json={"x": 1} if method == "POST" else None)
    assert resp.status == 402, (resp.status, resp.text)
    if version == 2:
        return decode_payment_required(resp.headers["payment-required"]).accepts[0]
    return PaymentRequirementsV1.model_validate(resp.json()["accepts"][0]).to_v2()


def open_tab(
    seller: Any, buyer: TestBuyer, req: PaymentRequirements, version: int = 2
) -> dict[str, Any]:
    body = {
        "x402Version": version,
        "userAddress": buyer.address,
        "paymentRequirements": req.to_dict(),
    }
    resp = seller.request("POST", "/x402/tab", json=body)
    assert resp.status == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def paid_headers(
    seller: Any,
    buyer: TestBuyer,
    path: str = "/premium",
    *,
    method: str = "GET",
    version: int = 2,
    **changes: Any,
) -> dict[str, str]:
    req = challenge(seller, path, method, version)
    tab = open_tab(seller, buyer, req, version)
    name, value = payment_header(buyer, req, tab, version=version, **changes)
    return {name: value}


def pay(
    seller: Any,
    buyer: TestBuyer,
    path: str = "/premium",
    *,
    method: str = "GET",
    version: int = 2,
    json_body: Any = None,
    **changes: Any,
) -> Any:
    headers = paid_headers(seller, buyer, path, method=method, version=version, **changes)
    return seller.request(method, path, headers=headers, json=json_body)


def error_of(resp: Any) -> str:
    """The reason a paid request was refused (from the v2 challenge header)."""
    assert resp.status == 402, (resp.status, resp.text)
    return str(decode_payment_required(resp.headers["payment-required"]).error)


# -- challenge ---------------------------------------------------------------------------------


def test_challenge_shape(seller: Any) -> None:
    resp = seller.request("GET", "/premium")
    assert resp.status == 402
    assert resp.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in resp.headers["access-control-expose-headers"]
    v2 = decode_payment_required(resp.headers["payment-required"])
    assert v2.x402_version == 2 and v2.error == "Payment required"
    assert v2.resource is not None and v2.resource.url.endswith("/premium")
    (req,) = v2.accepts
    assert (req.scheme, req.network, req.asset, req.amount) == (
        "4mica-credit",
        NETWORK,
        USDC,
        "10000",
    )
    assert req.pay_to == seller.options["pay_to"] and req.max_timeout_seconds == 300
    assert req.extra["tabEndpoint"].endswith("/x402/tab")
    assert req.extra["rpcUrl"].endswith("/x402")
    # the token's EIP-712 domain, as the official seller names it for its default tokens
    assert (req.extra["name"], req.extra["version"]) == ("USDC", "2")
    # Every v2 challenge advertises a validation policy (the default delivery policy here).
    policy = ValidationPolicy.from_extra(req.extra, 84532)
    assert policy is not None and policy.validator == req.pay_to and policy.tag == "delivery"
    body = resp.json()
    assert body["x402Version"] == 1 and body["error"] == "Payment required"
    (v1,) = body["accepts"]
    assert v1["maxAmountRequired"] == "10000" and v1["payTo"] == req.pay_to
    assert v1["resource"].endswith("/premium")
    assert "validatorAddress" not in v1["extra"]  # v1 buyers sign G-v1 on plain routes
    assert seller.calls["/premium"] == 0


def test_unpriced_route_is_untouched(seller: Any) -> None:
    resp = seller.request("GET", "/free")
    assert resp.status == 200 and resp.json() == {"free": True}
    assert "payment-required" not in resp.headers and "payment-response" not in resp.headers


def test_path_parameters_are_priced(seller: Any) -> None:
    req = challenge(seller, "/items/7")
    assert req.amount == "20000"
    buyer = funded(seller)
    resp = pay(seller, buyer, "/items/7")
    assert resp.status == 200 and resp.json() == {"item": "7"}


# -- paying ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 1])
def test_valid_payment_runs_the_handler_once_and_locks_once(seller: Any, version: int) -> None:
    buyer = funded(seller)
    resp = pay(seller, buyer, version=version)
    assert resp.status == 200, resp.text
    data = resp.json()
    assert data["ok"] and data["payer"] == buyer.address and data["amount"] == 10_000
    assert data["x402_version"] == version
    header = "payment-response" if version == 2 else "x-payment-response"
    result = b64json(resp.headers[header])
    assert result["success"] is True and result["transaction"] == data["guarantee_id"]
    assert result["payer"] == buyer.address and result["network"] == NETWORK
    assert result["extra"]["requestId"] == data["request_id"]
    assert seller.calls["/premium"] == 1
    record = seller.gate.records.query(payer=buyer.address)[0]
    assert (record.guarantee_id, record.amount, record.header_version) == (
        data["guarantee_id"],
        10_000,
        version,
    )
    assert record.status == "delivered" and record.http_status == 200
    assert record.response_hash == hashlib.sha256(resp.body).hexdigest()
    guarantee = seller.core.guarantee(data["guarantee_id"])
    # v2 buyers sign G-v2 with the delivery policy: delivery posted score 100 → payable.
    assert (guarantee.version, guarantee.state) == (version, "payable")
    assert seller.core.position(buyer.address, network=NETWORK).locked == 10_000


def test_post_body_reaches_the_handler(seller: Any) -> None:
    buyer = funded(seller)
    resp = pay(seller, buyer, "/echo", method="POST", json_body={"q": "hello"})
    assert resp.status == 200 and resp.json() == {"echo": {"q": "hello"}}


def test_replay_is_rejected_without_a_second_lock_or_run(seller: Any) -> None:
    buyer = funded(seller)
    headers = paid_headers(seller, buyer)
    assert seller.request("GET", "/premium", headers=headers).status == 200
    again = seller.request("GET", "/premium", headers=headers)
    assert error_of(again) == "replayed_request_id"
    assert b64json(again.headers["payment-response"])["success"] is False
    assert seller.calls["/premium"] == 1
    assert seller.core.position(buyer.address, network=NETWORK).locked == 10_000


def test_idempotent_replay_answers_from_the_record(make_seller: Any) -> None:
    seller = make_seller(idempotent_replay=True)
    buyer = funded(seller)
    headers = paid_headers(seller, buyer)
    first = seller.request("GET", "/premium", headers=headers)
    second = seller.request("GET", "/premium", headers=headers)
    assert first.status == second.status == 200 and first.json() == second.json()
    assert "payment-response" in second.headers
    assert first.headers["cache-control"] == second.headers["cache-control"] == "private, no-store"
    assert seller.calls["/premium"] == 1
    assert seller.core.position(buyer.address, network=NETWORK).locked == 10_000


# -- every reason code -------------------------------------------------------------------------


def test_a_buyer_whose_clock_is_behind_pays_on_the_tab_just_opened(seller: Any) -> None:
    """The official buyer signs its own clock: one a second or two behind the seller's signed
    before the tab the seller had just opened, and every first payment on a new tab was refused
    ``timestamp_outside_tab``. A tab starts at its first guarantee, up to the clock skew early."""
    buyer = funded(seller)
    behind = int(seller.core.clock()) - 2
    for version in (2, 1):
        for _ in range(2):  # the tab's first payment, then the next one on it
            resp = pay(seller, buyer, version=version, timestamp=behind)
            assert resp.status == 200, (version, resp.status, resp.text)


def test_reason_codes_reachable_over_http(seller: Any) -> None:
    buyer = funded(seller)
    core = seller.core
    now = int(core.clock())

    def refused(**changes: Any) -> str:
        return error_of(pay(seller, buyer, **changes))

    assert refused(sign_with=TestBuyer.new()) == "invalid_signature"
    assert refused(amount=9_999) == "amount_mismatch"
    assert refused(timestamp=now + 3600) == "timestamp_in_future"
    assert refused(timestamp=now - 7 * 86_400) == "timestamp_outside_tab"
    assert refused(tab_id=12345) == "unknown_tab"
    assert refused(validation_request_hash=b"\x01" * 32) == "invalid_validation_policy"
    advertised = ValidationPolicy.from_extra(challenge(seller, "/premium").extra, 84532)
    assert advertised is not None
    untrusted = dataclasses.replace(advertised, registry="0x" + "99" * 20)
    assert refused(policy=untrusted) == "untrusted_validation_registry"
    # A buyer must not pick its own validator (it would then "validate" itself).
    assert (
        refused(policy=dataclasses.replace(advertised, validator=buyer.address))
        == "validation_policy_mismatch"
    )

    other = TestBuyer.new().address  # a tab for someone else: the claims then name them
    req = challenge(seller, "/premium")
    tab = core.open_tab(buyer.address, other, network=NETWORK, guarantee_version=2).to_json()
    name, value = payment_header(buyer, req, tab, recipient=other)
    assert (
        error_of(seller.request("GET", "/premium", headers={name: value})) == "recipient_mismatch"
    )

    weird = "0x" + "42" * 20
    tab = core.open_tab(
        buyer.address, req.pay_to, network=NETWORK, asset=weird, guarantee_version=2
    ).to_json()
    name, value = payment_header(buyer, req, tab, asset=weird)
    assert error_of(seller.request("GET", "/premium", headers={name: value})) == "asset_mismatch"

    tab = core.open_tab(
        buyer.address, req.pay_to, network="eip155:11155111", asset=USDC, guarantee_version=2
    ).to_json()
    name, value = payment_header(buyer, req, tab)
    assert error_of(seller.request("GET", "/premium", headers={name: value})) == "network_mismatch"

    v1_tab = core.open_tab(
        buyer.address, req.pay_to, network=NETWORK, guarantee_version=1
    ).to_json()
    name, value = payment_header(buyer, req, v1_tab)  # G-v2 claims on a G-v1 tab
    assert error_of(seller.request("GET", "/premium", headers={name: value})) == "tab_mismatch"

    poor = funded(seller, amount=5)
    assert error_of(pay(seller, poor)) == "insufficient_collateral"

    core.suspend(buyer.address)
    assert refused() == "payer_suspended"
    core.suspend(buyer.address, False)

    tab = open_tab(seller, buyer, req)
    name, value = payment_header(buyer, req, tab)
    seller.clock.advance(2 * 86_400)
    assert error_of(seller.request("GET", "/premium", headers={name: value})) == "tab_expired"
    seller.clock.advance(-2 * 86_400)

    payload = decode_payment_header(value)
    assert isinstance(payload, PaymentPayload)
    changed = payload.model_copy(
        update={"accepted": payload.accepted.model_copy(update={"amount": "1"})}
    )
    resp = seller.request("GET", "/premium", headers={"PAYMENT-SIGNATURE": encode_header(changed)})
    assert error_of(resp) == "No matching payment requirements"
    assert seller.calls["/premium"] == 0
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_unsupported_guarantee_version(make_seller: Any) -> None:
    seller = make_seller(core_config=CoreConfig(accepted_versions=(1,)))
    buyer = funded(seller)
    req = challenge(seller, "/premium")
    assert ValidationPolicy.from_extra(req.extra, 84532) is None  # no G-v2 advertised then
    tab = open_tab(seller, buyer, req)
    name, value = payment_header(buyer, req, tab, policy=test_policy())
    assert (
        error_of(seller.request("GET", "/premium", headers={name: value})) == "unsupported_version"
    )
    assert pay(seller, buyer).status == 200  # a v2 envelope with G-v1 claims is fine there


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "e30=",
        base64.b64encode(b"[" * 5000).decode(),
        "A" * 20_000,
        base64.b64encode(
            json.dumps({"x402Version": 2, "payload": {}, "accepted": {}}).encode()
        ).decode(),
    ],
)
def test_malformed_headers_get_402_never_500(seller: Any, value: str) -> None:
    resp = seller.request("GET", "/premium", headers={"PAYMENT-SIGNATURE": value})
    assert resp.status == 402
    assert error_of(resp) == "malformed_payment"
    assert seller.calls["/premium"] == 0


def test_two_payment_headers_are_refused(seller: Any) -> None:
    buyer = funded(seller)
    v2 = paid_headers(seller, buyer)
    v1 = paid_headers(seller, buyer, version=1)
    resp = seller.request("GET", "/premium", headers={**v2, **v1})
    assert error_of(resp) == "malformed_payment"
    assert seller.calls["/premium"] == 0


def test_version_confusion_is_refused(seller: Any) -> None:
    buyer = funded(seller)
    ((_, value),) = paid_headers(seller, buyer).items()
    resp = seller.request(
        "GET", "/premium", headers={"X-PAYMENT": value}
    )  # a v2 body in a v1 header
    assert resp.status == 402 and seller.calls["/premium"] == 0


def test_tampered_signature_and_envelope(seller: Any) -> None:
    buyer = funded(seller)
    ((name, value),) = paid_headers(seller, buyer).items()
    payload = decode_payment_header(value)
    signed = SignedGuarantee.from_json(payload.payload)
    for change in (
        {"amount": 1},
        {"recipient_address": buyer.address},
        {"asset_address": "0x" + "11" * 20},
    ):
        bad = SignedGuarantee(dataclasses.replace(signed.claims, **change), signed.signature)
        forged = payload.model_copy(update={"payload": bad.to_json()})
        resp = seller.request("GET", "/premium", headers={name: encode_header(forged)})
        assert resp.status == 402
    flipped = bytearray(signed.signature)
    flipped[10] ^= 1
    forged = payload.model_copy(
        update={"payload": SignedGuarantee(signed.claims, bytes(flipped)).to_json()}
    )
    assert (
        error_of(seller.request("GET", "/premium", headers={name: encode_header(forged)}))
        == "invalid_signature"
    )
    assert seller.calls["/premium"] == 0


# -- methods, paths, handlers ------------------------------------------------------------------


def test_head_counts_as_get(seller: Any) -> None:
    resp = seller.request("HEAD", "/premium")
    assert resp.status == 402 and "payment-required" in resp.headers
    assert seller.calls["/premium"] == 0


def test_options_preflight_passes_through_unpriced(seller: Any) -> None:
    resp = seller.request(
        "OPTIONS",
        "/premium",
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "GET",
        },
    )
    assert resp.status != 402
    assert seller.calls["/premium"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/premium%2F",
        "/free%2F..%2Fpremium",
        "/free/..%2fpremium",
        "/x%5C..%5Cpremium",
        "/premium%zz",
        "/free/../premium",
    ],
)
def test_path_tricks_never_reach_a_paid_handler_unpaid(seller: Any, path: str) -> None:
    resp = seller.request("GET", path)
    # a router may also redirect a path it reads as another (never charged: not a 2xx)
    assert resp.status in (400, 402, 404, 307, 308), (path, resp.status)
    assert seller.calls["/premium"] == 0


@pytest.mark.parametrize("path", ["/redirect", "/missing"])
def test_a_paid_handler_answering_other_than_2xx_is_not_charged(seller: Any, path: str) -> None:
    """Only a 2xx is delivered: a redirect or a 404 from the paid handler voids the guarantee."""
    buyer = funded(seller)
    resp = pay(seller, buyer, path)
    assert resp.status == (302 if path == "/redirect" else 404) and seller.calls[path] == 1
    result = b64json(resp.headers["payment-response"])
    assert result["success"] is False and result["errorReason"] == "refunded"
    record = seller.gate.records.query(payer=buyer.address)[0]
    assert (record.outcome, record.http_status) == ("refunded", resp.status)
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("path", ["/boom", "/fail"])
def test_failing_handler_refunds_the_buyer(seller: Any, path: str) -> None:
    buyer = funded(seller)
    resp = pay(seller, buyer, path)
    assert resp.status == 500
    assert seller.calls[path] == 1
    if "payment-response" in resp.headers:  # frameworks may drop headers on an unhandled exception
        result = b64json(resp.headers["payment-response"])
        assert result["success"] is False and result["errorReason"] == "refunded"
    record = seller.gate.records.query(payer=buyer.address)[0]
    assert record.outcome == "refunded" and record.http_status in (500, None)
    assert seller.core.guarantee(record.guarantee_id).state == "voided"
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0


def test_streaming_response_is_delivered_whole_and_hashed(seller: Any) -> None:
    buyer = funded(seller)
    resp = pay(seller, buyer, "/stream")
    assert resp.status == 200 and resp.body == b"chunk-0\nchunk-1\nchunk-2\n"
    assert "payment-response" in resp.headers
    record = seller.gate.records.query(payer=buyer.address)[0]
    assert record.response_hash == hashlib.sha256(resp.body).hexdigest()


# -- failing closed, throttling, paywall, hooks ------------------------------------------------


class DownFacilitator:
    """A remote facilitator that is unreachable (the network is outside the machine)."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise Unavailable("facilitator unreachable")

        async def afail(*args: Any, **kwargs: Any) -> Any:
            raise Unavailable("facilitator unreachable")

        return afail if name.startswith("a") and name != "apply" else fail


def test_facilitator_down_fails_closed(make_seller: Any, tmp_path: Any) -> None:
    seller = make_seller()
    buyer = funded(seller)
    headers = paid_headers(seller, buyer)
    seller.gate.facilitator = DownFacilitator()
    resp = seller.request("GET", "/premium", headers=headers)
    assert resp.status == 503 and resp.json()["error"] == "facilitator_unavailable"
    assert seller.calls["/premium"] == 0


def test_invalid_payments_are_throttled(make_seller: Any) -> None:
    seller = make_seller(throttle_failures=3, throttle_window=60)
    for _ in range(3):
        assert (
            seller.request("GET", "/premium", headers={"PAYMENT-SIGNATURE": "garbage"}).status
            == 402
        )
    resp = seller.request("GET", "/premium", headers={"PAYMENT-SIGNATURE": "garbage"})
    assert resp.status == 429 and int(resp.headers["retry-after"]) >= 1
    assert seller.request("GET", "/premium").status == 402  # asking for terms is never throttled


def test_a_flood_of_new_keys_does_not_unblock_a_throttled_client() -> None:
    """The throttle's memory is bounded; past its size it drops stale and unblocked keys,
    never who is blocked (it cleared everything: a flood of signed refusals unblocked all)."""
    from fourmica_x402.gate.throttle import MAX_KEYS, Throttle

    throttle = Throttle(limit=3, window=60)
    throttle.hit("attacker", "attacker", "attacker")
    assert throttle.blocked("attacker") > 0
    for i in range(MAX_KEYS + 10):
        throttle.hit(f"payer-{i}")
    assert throttle.blocked("attacker") > 0
    assert len(throttle._hits) <= MAX_KEYS // 2 + 10
    assert (
        throttle.blocked(f"payer-{MAX_KEYS + 9}") == 0 and f"payer-{MAX_KEYS + 9}" in throttle._hits
    )
    for i in range(1000):  # asking about keys never counted keeps nothing
        assert throttle.blocked(f"asked-{i}") == 0
    assert not any(key.startswith("asked-") for key in throttle._hits)


def test_browser_gets_an_html_paywall(seller: Any) -> None:
    resp = seller.request("GET", "/premium", headers={"Accept": "text/html,application/xhtml+xml"})
    assert resp.status == 402 and resp.headers["content-type"].startswith("text/html")
    assert "0.01 USDC" in resp.text and seller.options["pay_to"] in resp.text
    assert "payment-required" in resp.headers


def test_hooks(make_seller: Any) -> None:
    seen: list[str] = []

    def gatekeeper(request: Any, route: Any) -> Any:
        who = request.header("x-who")
        return GRANT if who == "friend" else DENY if who == "foe" else None

    def after_delivery(payment: Any, outcome: str) -> None:
        seen.append(outcome)

    seller = make_seller(on_protected_request=gatekeeper, after_delivery=after_delivery)
    denied = seller.request("GET", "/premium", headers={"x-who": "foe"})
    assert denied.status == 403 and denied.json()["error"] == "denied"
    # docs/protocol.md, "Reason codes", lists it with its status (it was missing there)
    table = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    assert "| `denied` | 403 |" in table
    friend = seller.request("GET", "/items/1", headers={"x-who": "friend"})
    assert friend.status == 200 and friend.json() == {"item": "1"}
    buyer = funded(seller)
    assert pay(seller, buyer).status == 200
    assert seen == ["delivered"]


def test_a_hook_reads_headers_as_a_framework_does(make_seller: Any) -> None:
    """``request.headers.get(name)``, the way a framework's headers are read, works in a
    hook on every adapter, in any case (it was a 503 ``seller_hook_failed``, every request)."""

    def subscribers(request: Any, route: Any) -> Any:
        key = request.headers.get("X-Api-Key")
        assert request.headers.get("x-absent", "none") == "none"
        return GRANT if key == "subscriber-1" else None

    seller = make_seller(on_protected_request=subscribers)
    granted = seller.request("GET", "/items/1", headers={"X-API-Key": "subscriber-1"})
    assert granted.status == 200 and granted.json() == {"item": "1"}
    unpaid = seller.request("GET", "/items/1", headers={"X-API-Key": "someone-else"})
    assert unpaid.status == 402
    assert pay(seller, funded(seller)).status == 200


class _NotTheGatesResponse:
    """What a seller might return meaning "refuse": a framework's own response object."""

    status_code = 401


def _raises(*args: Any) -> Any:
    raise RuntimeError("the subscription database is down")


async def _raises_async(*args: Any) -> Any:
    raise RuntimeError("the subscription database is down")


@pytest.mark.parametrize(
    "hook",
    [_raises, _raises_async, lambda request, route: _NotTheGatesResponse(), lambda *a: True],
    ids=["raises", "raises-async", "foreign-response", "true"],
)
def test_a_failing_request_hook_fails_closed(make_seller: Any, hook: Any) -> None:
    """A hook meant to refuse someone (a banned key, a lapsed plan) that raises, or answers
    with something the gate cannot send, must not let the request on to its 402: a buyer
    with a valid payment would buy what the seller meant to refuse (docs/operations.md)."""

    def checks_banned(request: Any, route: Any) -> Any:
        return hook(request, route) if request.header("x-who") == "banned" else None

    seller = make_seller(on_protected_request=checks_banned)
    banned = {"x-who": "banned"}
    asked = seller.request("GET", "/premium", headers=banned)
    assert asked.status == 503 and asked.json()["error"] == "seller_hook_failed"
    buyer = funded(seller)
    paying = seller.request("GET", "/premium", headers={**paid_headers(seller, buyer), **banned})
    assert paying.status == 503 and paying.json()["error"] == "seller_hook_failed"
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0
    assert seller.calls["/premium"] == 0
    assert seller.request("GET", "/free").status == 200  # unpriced routes never ask it


@pytest.mark.parametrize("hook", [_raises, _raises_async], ids=["sync", "async"])
def test_a_before_settle_hook_that_raises_settles_nothing(make_seller: Any, hook: Any) -> None:
    seller = make_seller(before_settle=hook)
    buyer = funded(seller)
    paying = pay(seller, buyer)
    assert paying.status == 503 and paying.json()["error"] == "seller_hook_failed"
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0
    assert seller.calls["/premium"] == 0


def test_settle_after_mode_charges_only_success(make_seller: Any) -> None:
    seller = make_seller(settle="after")
    buyer = funded(seller)
    ok = pay(seller, buyer)
    assert ok.status == 200 and b64json(ok.headers["payment-response"])["success"] is True
    assert seller.core.position(buyer.address, network=NETWORK).locked == 10_000
    failed = pay(seller, buyer, "/fail")
    assert failed.status == 500
    assert seller.core.position(buyer.address, network=NETWORK).locked == 10_000  # not charged


def test_settle_after_runs_one_handler_per_guarantee_however_encoded(make_seller: Any) -> None:
    """Settle-after verifies first; a second encoding of an in-flight guarantee must wait."""
    seller = make_seller(settle="after")
    buyer = funded(seller)
    [(name, value)] = paid_headers(seller, buyer).items()
    envelope = json.loads(base64.b64decode(value))
    claims = envelope["payload"]["claims"]
    seller.gate.records.begin(  # the first encoding is running its handler right now
        route="GET /premium",
        method="GET",
        path="/premium",
        header_version=2,
        header_hash="0" * 64,
        pay_to=seller.gate.config.pay_to,
        amount=10_000,
        asset=envelope["accepted"]["asset"],
        network=NETWORK,
        settle_mode="after",
        settle_result={},
        status="verified",
        request_id=hex(int(claims["req_id"], 16)),
        tab_id=hex(int(claims["tab_id"], 16)),
    )
    other = base64.b64encode(json.dumps(envelope, indent=1).encode()).decode()
    assert other != value
    resp = seller.request("GET", "/premium", headers={name: other})
    assert resp.status == 402 and seller.calls["/premium"] == 0
    assert b64json(resp.headers["payment-required"])["error"] == "replayed_request_id"


# -- the mounted endpoints ---------------------------------------------------------------------


def test_tab_endpoint(seller: Any) -> None:
    buyer = TestBuyer.new()
    req = challenge(seller, "/premium")
    first = open_tab(seller, buyer, req)
    second = open_tab(seller, buyer, req)
    assert first["tabId"] == second["tabId"] and first["userAddress"] == buyer.address
    assert (int(first["nextReqId"], 16), int(second["nextReqId"], 16)) == (0, 1)
    assert first["ttlSeconds"] > 0
    assert seller.request("GET", "/x402/tab").status == 405
    assert seller.request("POST", "/x402/tab", json={"userAddress": "nope"}).status == 400
    stranger = {**req.to_dict(), "payTo": TestBuyer.new().address}
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": stranger}
    assert seller.request("POST", "/x402/tab", json=body).status == 404


def test_the_gates_own_endpoints_refuse_in_the_coded_shape(seller: Any) -> None:
    """Every error the gate itself answers is ``{"error": code, "message": text}``."""
    refusals = [
        (seller.request("GET", "/x402/tab"), 405, "method_not_allowed", "POST"),
        (seller.request("GET", "/x402/no-such-thing"), 404, "not_found", None),
        (seller.request("POST", "/x402/core/public-params"), 404, "not_found", None),
        (seller.request("GET", "/x402/metrics"), 404, "not_found", None),  # no token set
    ]
    for resp, status, code, allow in refusals:
        body = resp.json()
        assert (resp.status, body["error"]) == (status, code), (resp.status, body)
        assert set(body) == {"error", "message"} and body["message"]
        assert resp.headers.get("allow") == allow


def test_core_api_subset_is_mounted(seller: Any) -> None:
    params = seller.request("GET", "/x402/core/public-params").json()
    assert len(params["public_key"]) == 48 and params["chain_id"] == 84532
    assert params["ethereum_http_rpc_url"].endswith("/x402/rpc")
    rpc = seller.request(
        "POST", "/x402/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}
    )
    assert rpc.json()["result"] == hex(84532)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "eth_call",
        "params": [{"to": params["contract_address"], "data": "0x991ce4cd"}, "latest"],
    }
    assert (
        seller.request("POST", "/x402/rpc", json=call).json()["result"]
        == params["active_guarantee_domain_separator"]
    )


def test_each_network_has_its_core_api_under_its_chain_id(seller: Any) -> None:
    """An offer on another network than the gate's names ``<prefix>/chains/<id>``: a buyer
    signs for the chain its rpcUrl's Core names."""
    params = seller.request("GET", "/x402/chains/11155111/core/public-params").json()
    assert params["chain_id"] == 11155111
    assert params["ethereum_http_rpc_url"].endswith("/x402/chains/11155111/rpc")
    assert (
        params["active_guarantee_domain_separator"]
        != (
            seller.request("GET", "/x402/core/public-params").json()[
                "active_guarantee_domain_separator"
            ]
        )
    )
    rpc = seller.request(
        "POST",
        "/x402/chains/11155111/rpc",
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
    )
    assert rpc.json()["result"] == hex(11155111)
    for path in ("/x402/chains/999999/core/public-params", "/x402/chains/0x1/core/public-params"):
        resp = seller.request("GET", path)
        assert (resp.status, resp.json()["error"]) == (404, "unknown_network"), path


def test_the_sandbox_rpc_answers_hostile_calls_with_json_rpc_errors(seller: Any) -> None:
    """Public and unauthenticated: params of the wrong shape, a selector with a word that is
    not hex, batches of batches, used to escape as 500s."""
    contract = seller.request("GET", "/x402/core/public-params").json()["contract_address"]
    call = {"jsonrpc": "2.0", "id": 7, "method": "eth_call"}
    calls = [
        ({**call, "params": {"a": 1}}, -32602),
        ({**call, "params": "latest"}, -32602),
        ({**call, "params": [{"to": contract, "data": "0x563550ae" + "zz" * 32}]}, -32602),
        ([[{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}]], -32600),
        ([1, "x"], -32600),
        ([], -32600),  # an empty batch is one invalid request, answered once
    ]
    for body, code in calls:
        resp = seller.request("POST", "/x402/rpc", json=body)
        assert resp.status == 200, (body, resp.status)
        answers = resp.json() if isinstance(body, list) and body else [resp.json()]
        assert [a["error"]["code"] for a in answers] == [code] * len(answers), (body, answers)


def test_payment_required_roundtrips_through_the_model(seller: Any) -> None:
    resp = seller.request("GET", "/premium")
    required = PaymentRequired.model_validate(b64json(resp.headers["payment-required"]))
    assert encode_header(required)  # what we emit, we can read back


def test_a_payment_that_cannot_be_recorded_is_refunded(seller: Any, monkeypatch: Any) -> None:
    from fourmica_x402.records import Records

    buyer = funded(seller)
    headers = paid_headers(seller, buyer)

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("records database is gone")

    monkeypatch.setattr(Records, "insert", staticmethod(broken))
    resp = seller.request("GET", "/premium", headers=headers)
    assert resp.status == 503 and seller.calls["/premium"] == 0
    assert resp.json()["error"] == "records_unavailable"
    # The record shares the acceptance's transaction: nothing was accepted, nothing is locked.
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0
    assert seller.core.guarantees(address=buyer.address) == []
    monkeypatch.undo()
    assert seller.request("GET", "/premium", headers=headers).status == 200  # not burnt


def test_a_payment_recorded_elsewhere_that_cannot_be_recorded_is_voided(
    make_seller: Any, tmp_path: Any
) -> None:
    from fourmica_x402.records import Records

    seller = make_seller(records=Records(str(tmp_path / "records.db")))
    buyer = funded(seller)
    headers = paid_headers(seller, buyer)

    def broken(**kwargs: Any) -> int:
        raise RuntimeError("records database is gone")

    seller.gate.records.begin = broken
    resp = seller.request("GET", "/premium", headers=headers)
    assert resp.status == 503 and seller.calls["/premium"] == 0
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0  # voided, not kept
    [voided] = seller.core.guarantees(address=buyer.address)
    assert voided.state == "voided"


def test_a_payment_whose_settle_cannot_be_marked_is_refused_before_it_is_settled(
    make_seller: Any, tmp_path: Any
) -> None:
    """Records apart from the Core: a settle is marked in the records database first, so that
    a process dying before the answer is recorded leaves a void. A records database that
    cannot take the mark fails the payment closed, naming the records, with nothing settled."""
    from fourmica_x402.records import Records

    seller = make_seller(records=Records(str(tmp_path / "records.db")))
    buyer = funded(seller)
    headers = paid_headers(seller, buyer)

    def broken(*args: Any) -> bool:
        raise RuntimeError("records database is gone")

    seller.gate.records.claim_settle = broken
    resp = seller.request("GET", "/premium", headers=headers)
    assert resp.status == 503 and resp.json()["error"] == "records_unavailable"
    assert seller.calls["/premium"] == 0 and seller.core.guarantees(address=buyer.address) == []


class _TimedFacilitator:
    """The seller's facilitator, reporting a call ``timeout`` as HttpFacilitator does."""

    def __init__(self, inner: Any, timeout: float) -> None:
        self._inner, self.timeout = inner, timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize(("timeout", "wait"), [(3600.0, 3 * 3600.0), (float("inf"), 60.0)])
def test_a_settles_mark_outwaits_the_facilitators_timeout(
    make_seller: Any, tmp_path: Any, timeout: float, wait: float
) -> None:
    """The mark must not fall due (and be voided) while its settle may still be answered: it
    waits three times the facilitator's timeout, however long (it fell back to a minute past
    an hour), and a minute when the timeout says nothing."""
    from fourmica_x402.records import Records

    seller = make_seller(records=Records(str(tmp_path / "records.db")))
    seller.gate.facilitator = _TimedFacilitator(seller.gate.facilitator, timeout)
    marks: list[float] = []
    claim = seller.gate.records.claim_settle

    def claim_settle(gid: str, pay_to: str, due: float) -> bool:
        marks.append(due - time.time())
        return claim(gid, pay_to, due)

    seller.gate.records.claim_settle = claim_settle
    resp = seller.request("GET", "/premium", headers=paid_headers(seller, funded(seller)))
    assert resp.status == 200 and len(marks) == 1
    assert wait - 5 < marks[0] <= wait


def test_failure_hooks_see_refusals(make_seller: Any) -> None:
    from fourmica_x402.errors import PaymentError

    failures: list[str] = []

    def before_settle(request: Any, payload: Any, requirements: Any) -> None:
        if request.header("x-block"):
            raise PaymentError("blocked by policy", reason="blocked_by_seller")

    seller = make_seller(
        before_settle=before_settle, on_failure=lambda req, err: failures.append(err.reason)
    )
    buyer = funded(seller)
    assert error_of(pay(seller, buyer, sign_with=TestBuyer.new())) == "invalid_signature"
    headers = {**paid_headers(seller, buyer), "x-block": "1"}
    assert error_of(seller.request("GET", "/premium", headers=headers)) == "blocked_by_seller"
    assert failures == ["invalid_signature", "blocked_by_seller"]
    assert seller.calls["/premium"] == 0


def test_a_buyer_out_of_collateral_does_not_throttle_others_behind_the_same_address(
    make_seller: Any,
) -> None:
    seller = make_seller(throttle_failures=3, throttle_window=60)
    poor = funded(seller, amount=5)  # cannot pay $0.01
    for _ in range(3):
        assert error_of(pay(seller, poor)) == "insufficient_collateral"
    assert seller.request("GET", "/premium", headers=paid_headers(seller, poor)).status == 429
    rich = funded(seller)  # same client address, different payer: still served
    assert pay(seller, rich).status == 200
    # Bad signatures count against the address, not the payer they claim to be.
    victim = funded(seller)
    for _ in range(3):
        assert error_of(pay(seller, victim, sign_with=TestBuyer.new())) == "invalid_signature"
    blocked = seller.request("GET", "/premium", headers=paid_headers(seller, victim))
    assert blocked.status == 429  # this address is throttled now …
    assert seller.gate._throttle.blocked(victim.address) == 0  # … the named payer is not


def test_a_failing_after_settle_hook_refunds_instead_of_keeping_the_money(make_seller: Any) -> None:
    def after_settle(request: Any, result: Any) -> None:
        raise RuntimeError("the seller's bookkeeping is down")

    seller = make_seller(after_settle=after_settle)
    buyer = funded(seller)
    resp = pay(seller, buyer)
    assert resp.status == 503 and resp.json()["error"] == "seller_hook_failed"
    assert seller.calls["/premium"] == 0
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0
    assert seller.gate.records.query(payer=buyer.address)[0].outcome == "refunded"


def test_the_after_settle_hook_runs_in_settle_after_mode_too(make_seller: Any) -> None:
    """Settle-after mode never called ``after_settle``: the seller's bookkeeping missed every
    payment. It runs once the payment settled, before the answer goes out; if it raises, the
    payment is voided and the request answered 503, as in settle-before mode."""
    seen: list[Any] = []
    seller = make_seller(settle="after", after_settle=lambda request, result: seen.append(result))
    buyer = funded(seller)
    assert pay(seller, buyer).status == 200
    assert [r.payer for r in seen] == [buyer.address] and seen[0].guarantee_id

    def failing(request: Any, result: Any) -> None:
        raise RuntimeError("the seller's bookkeeping is down")

    seller = make_seller(settle="after", after_settle=failing)
    buyer = funded(seller)
    resp = pay(seller, buyer)
    assert resp.status == 503 and resp.json()["error"] == "seller_hook_failed"
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0
    assert seller.gate.records.query(payer=buyer.address)[0].outcome == "refunded"


def test_idempotent_replay_answers_only_the_route_that_was_paid(make_seller: Any) -> None:
    seller = make_seller(idempotent_replay=True, routes={"GET /redirect": "$0.01"})
    buyer = funded(seller)
    headers = paid_headers(seller, buyer)
    assert seller.request("GET", "/premium", headers=headers).status == 200
    other = seller.request("GET", "/redirect", headers=headers)  # same price, same payTo
    assert error_of(other) == "replayed_request_id" and seller.calls["/redirect"] == 0


def test_idempotent_replay_answers_only_the_request_that_was_paid(make_seller: Any) -> None:
    """Replay compared the route and method only: a header paid for ``/items/1`` answered
    ``/items/2`` (the same route entry, price and payTo) with item 1's recorded response, 200,
    and ``/premium?doc=2`` with ``/premium?doc=1``'s. It answers only the request it paid."""
    seller = make_seller(idempotent_replay=True)
    buyer = funded(seller)
    for paid, others in (
        ("/items/1", ["/items/2", "/items/1?x=1"]),
        ("/premium?doc=1", ["/premium?doc=2", "/premium"]),
    ):
        headers = paid_headers(seller, buyer, paid)
        first = seller.request("GET", paid, headers=headers)
        assert first.status == 200, first.text
        for other in others:
            resp = seller.request("GET", other, headers=headers)
            assert error_of(resp) == "replayed_request_id", (other, resp.status, resp.text)
        again = seller.request("GET", paid, headers=headers)
        assert again.status == 200 and again.json() == first.json()
    assert seller.calls["/items/1"] == seller.calls["/premium"] == 1
    assert seller.calls["/items/2"] == 0


def test_idempotent_replay_answers_a_request_recorded_before_queries_were_kept(
    make_seller: Any,
) -> None:
    """A record written before the records kept the query string (NULL there) refused every
    retry of its payment after the upgrade, its own included: its query is unknown, so the
    route, method and path decide, as they did when it was written."""
    seller = make_seller(idempotent_replay=True)
    buyer = funded(seller)
    headers = paid_headers(seller, buyer, "/premium?doc=1")
    first = seller.request("GET", "/premium?doc=1", headers=headers)
    assert first.status == 200, first.text
    with seller.gate.records.store.transaction() as tx:
        tx.execute("UPDATE fx_records SET query_string = NULL")
    again = seller.request("GET", "/premium?doc=1", headers=headers)
    assert again.status == 200 and again.json() == first.json(), again.text
    assert error_of(seller.request("GET", "/redirect", headers=headers)) == "replayed_request_id"
    assert seller.calls["/premium"] == 1
