"""The buyer checks the Core's BLS certificate (docs/buyer.md, "Certificates"): a certificate
from a real Core verifies under its public key for exactly the claims the buyer signed, and
nothing else does. The Core API read that hands a certificate to a buyer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fourmica_x402 import coreapi
from fourmica_x402.client import Receipt, verify_certificate
from fourmica_x402.client.certificates import public_key_bytes
from fourmica_x402.core import Core
from fourmica_x402.guarantee import SignedGuarantee
from fourmica_x402.testing import NETWORK, TestBuyer, test_policy

CHAIN = 84532
SELLER = TestBuyer.new().address


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(str(tmp_path / "core.db"))
    yield made
    made.close()


def paid(core: Core, buyer: TestBuyer, amount: int = 10_000, v2: bool = False) -> SignedGuarantee:
    policy = test_policy(CHAIN) if v2 else None
    signed, expected = buyer.pay(core, SELLER, amount, policy=policy)
    core.accept(signed, expected)
    return signed


def gid(signed: SignedGuarantee) -> str:
    from fourmica_x402.guarantee import guarantee_id

    return "0x" + guarantee_id(CHAIN, signed.claims.tab_id, signed.claims.req_id).hex()


@pytest.mark.parametrize("v2", [False, True], ids=["G-v1", "G-v2"])
def test_a_real_certificate_verifies_for_its_claims_only(core: Core, v2: bool) -> None:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    first, second = paid(core, buyer, v2=v2), paid(core, buyer, 20_000, v2=v2)
    cert = core.certify(gid(first)).to_json()
    key = core.operator.public_key
    domain = core.guarantee_domain(CHAIN)
    assert verify_certificate(cert, first.claims, key)
    assert verify_certificate(cert, first.claims, key, guarantee_domain=domain)
    # the public parameters' spelling of the key (48 ints), hex, and the claims as JSON text
    params = coreapi.public_params(core, CHAIN, "http://x/rpc")
    assert verify_certificate(
        json.dumps(cert), json.dumps(first.claims.to_json()), params["public_key"]
    )
    assert verify_certificate(cert, first.claims.to_json(), "0x" + key.hex())
    # the second payment's certificate carries the tab's running total, and only fits it
    cert2 = core.certify(gid(second)).to_json()
    assert verify_certificate(cert2, second.claims, key)
    assert not verify_certificate(cert2, first.claims, key)
    assert not verify_certificate(cert, second.claims, key)
    # any change to what was signed, to the signature, the key or the domain: refused
    for changed in (
        dataclasses.replace(first.claims, amount=first.claims.amount + 1),
        dataclasses.replace(first.claims, timestamp=first.claims.timestamp + 1),
        dataclasses.replace(first.claims, recipient_address=buyer.address),
    ):
        assert not verify_certificate(cert, changed, key)
    flipped = cert["signature"][:-2] + ("00" if cert["signature"][-2:] != "00" else "01")
    assert not verify_certificate({**cert, "signature": flipped}, first.claims, key)
    other = Core(":memory:")
    try:
        assert not verify_certificate(cert, first.claims, other.operator.public_key)
    finally:
        other.close()
    assert not verify_certificate(cert, first.claims, key, guarantee_domain=b"\x01" * 32)


@pytest.mark.parametrize(
    "certificate",
    [{}, {"claims": "0x", "signature": "0x"}, {"claims": 1, "signature": None}, "not json", "[]"],
)
def test_malformed_certificates_are_false_not_errors(core: Core, certificate: object) -> None:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    signed = paid(core, buyer)
    key = core.operator.public_key
    assert verify_certificate(certificate, signed.claims, key) is False  # type: ignore[arg-type]
    good = core.certify(gid(signed)).to_json()
    assert verify_certificate(good, {"not": "claims"}, key) is False
    assert verify_certificate(good, signed.claims, b"\x00" * 48) is False
    with pytest.raises(ValueError):
        public_key_bytes([1, 2, 3])


def test_a_receipt_verifies_its_certificate(core: Core) -> None:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    signed = paid(core, buyer)
    cert = core.certify(gid(signed)).to_json()
    receipt = Receipt(
        outcome="paid", url="u", claims=json.dumps(signed.claims.to_json()), certificate=cert
    )
    assert receipt.verify_certificate(core.operator.public_key)
    assert not Receipt(outcome="paid", url="u", certificate=cert).verify_certificate(
        core.operator.public_key
    )


def test_the_core_api_reads_a_guarantee_with_its_certificate(core: Core) -> None:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    signed = paid(core, buyer)
    tab, req = hex(signed.claims.tab_id), hex(signed.claims.req_id)
    status, body = coreapi.core_guarantee(core, CHAIN, tab, req)
    assert status == 200, body
    assert body["guarantee_id"] == gid(signed) and body["amount"] == hex(10_000)
    assert body["from_address"] == buyer.address and body["to_address"] == SELLER
    assert verify_certificate(body["certificate"], signed.claims, core.operator.public_key)
    assert coreapi.core_guarantee(core, CHAIN, tab, req)[1] == body  # made once, then read
    assert coreapi.core_guarantee(core, CHAIN, tab, hex(signed.claims.req_id + 1))[0] == 404
    assert coreapi.core_guarantee(core, CHAIN, "zz", req)[0] == 400
