"""Guarantee claims: signing, recovery, tampering, parsing, validation policies."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from fourmica_x402 import MalformedPayment
from fourmica_x402.guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    address_of,
    claims_digest,
    guarantee_id,
    recover_signer,
    sign_claims,
    typed_data,
)

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"  # throwaway test key
USER = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
DOMAIN = Eip712Domain(chain_id=84532)
POLICY = ValidationPolicy(
    registry="0x3333333333333333333333333333333333333333",
    validator="0x4444444444444444444444444444444444444444",
    validator_agent_id=7,
    min_score=80,
    job_hash=b"\xaa" * 32,
    chain_id=84532,
    tag="hard-finality",
)


def claims(version: int = 1, **changes: Any) -> GuaranteeClaims:
    base = dict(
        user=USER,
        recipient=SELLER,
        tab_id=0xABC,
        req_id=3,
        amount=10_000,
        asset=USDC,
        timestamp=1_716_500_000,
    )
    c = GuaranteeClaims.v1(**base) if version == 1 else GuaranteeClaims.v2(**base, policy=POLICY)
    return dataclasses.replace(c, **changes)


def test_address_of_the_test_key() -> None:
    assert address_of(KEY) == USER == Account.from_key(KEY).address


@pytest.mark.parametrize("version", [1, 2])
def test_sign_matches_eth_account(version: int) -> None:
    c = claims(version)
    ours = sign_claims(c, KEY, DOMAIN)
    theirs = Account.sign_typed_data(KEY, full_message=typed_data(c, DOMAIN))
    assert ours.signature == bytes(theirs.signature)
    assert recover_signer(ours, DOMAIN) == USER


@pytest.mark.parametrize("version", [1, 2])
def test_every_signed_field_is_bound(version: int) -> None:
    signed = sign_claims(claims(version), KEY, DOMAIN)
    changes: dict[str, Any] = {
        "recipient_address": USER,
        "tab_id": 0xABD,
        "req_id": 4,
        "amount": 10_001,
        "asset_address": SELLER,
        "timestamp": 1_716_500_001,
        "user_address": SELLER,
    }
    if version == 2:
        changes.update(
            validation_registry_address=USER,
            validation_request_hash=b"\x01" * 32,
            validation_chain_id=1,
            validator_address=USER,
            validator_agent_id=8,
            min_validation_score=81,
            validation_subject_hash=b"\x02" * 32,
            required_validation_tag="soft",
            job_hash=b"\x03" * 32,
        )
    for name, value in changes.items():
        tampered = SignedGuarantee(
            dataclasses.replace(signed.claims, **{name: value}), signed.signature
        )
        assert recover_signer(tampered, DOMAIN) != USER, name


def test_other_domain_does_not_recover_the_signer() -> None:
    signed = sign_claims(claims(), KEY, DOMAIN)
    assert recover_signer(signed, Eip712Domain(chain_id=8453)) != USER
    assert recover_signer(signed, Eip712Domain(chain_id=84532, name="other")) != USER


def test_v_of_0_and_1_is_accepted_and_junk_v_is_not() -> None:
    signed = sign_claims(claims(), KEY, DOMAIN)
    low = SignedGuarantee(
        signed.claims, signed.signature[:64] + bytes((signed.signature[64] - 27,))
    )
    assert recover_signer(low, DOMAIN) == USER
    for v in (2, 26, 29, 255):
        bad = SignedGuarantee(signed.claims, signed.signature[:64] + bytes((v,)))
        assert recover_signer(bad, DOMAIN) is None


def test_zero_signature_recovers_nobody() -> None:
    assert recover_signer(SignedGuarantee(claims(), bytes(64) + b"\x1b"), DOMAIN) is None


def test_binding_hashes_are_checked() -> None:
    c = claims(2)
    assert c.bindings_are_canonical()
    assert not dataclasses.replace(c, validation_request_hash=b"\x01" * 32).bindings_are_canonical()
    assert not dataclasses.replace(c, validation_subject_hash=b"\x01" * 32).bindings_are_canonical()
    # Changing an input of the subject without recomputing it breaks the binding too.
    assert not dataclasses.replace(c, amount=1).bindings_are_canonical()
    assert claims(1).bindings_are_canonical()


@pytest.mark.parametrize("version", [1, 2])
def test_json_round_trip(version: int) -> None:
    signed = sign_claims(claims(version), KEY, DOMAIN)
    assert SignedGuarantee.from_json(signed.to_json()) == signed
    assert next(iter(signed.to_json()["claims"])) == "version"


def test_claims_accept_decimal_and_lowercase_on_input() -> None:
    data = claims().to_json()
    data.update(amount="10000", tab_id=str(0xABC), user_address=USER.lower())
    assert GuaranteeClaims.from_json(data) == claims()


BAD_CLAIMS: list[tuple[str, Any]] = [
    ("version", "v3"),
    ("version", 1),
    ("version", None),
    ("user_address", "0x123"),
    ("user_address", USER.replace("c", "C", 1)),  # broken EIP-55 checksum
    ("amount", "-1"),
    ("amount", "1.5"),
    ("amount", 1.5),
    ("amount", "0x"),
    ("amount", True),
    ("amount", "0x" + "f" * 65),
    ("tab_id", []),
    ("timestamp", "1716500000"),
    ("timestamp", -1),
    ("timestamp", 1 << 64),
    ("timestamp", True),
]


@pytest.mark.parametrize(("field", "value"), BAD_CLAIMS)
def test_malformed_claims_raise_the_typed_error(field: str, value: Any) -> None:
    data = claims().to_json()
    data[field] = value
    with pytest.raises(MalformedPayment) as info:
        GuaranteeClaims.from_json(data)
    assert info.value.reason == "malformed_payment"


def test_missing_fields_and_version_confusion_are_malformed() -> None:
    for name in claims().to_json():
        data = claims().to_json()
        del data[name]
        with pytest.raises(MalformedPayment):
            GuaranteeClaims.from_json(data)
    v1_with_v2_fields = {**claims(2).to_json(), "version": "v1"}
    with pytest.raises(MalformedPayment):
        GuaranteeClaims.from_json(v1_with_v2_fields)
    v2_missing = claims(2).to_json()
    del v2_missing["job_hash"]
    with pytest.raises(MalformedPayment):
        GuaranteeClaims.from_json(v2_missing)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"claims": {}},
        {"signature": "0x00"},
        {"scheme": "rsa"},
        {"signature": "0x" + "zz" * 65},
    ],
)
def test_malformed_inner_payloads(payload: Any) -> None:
    good = sign_claims(claims(), KEY, DOMAIN).to_json()
    data = payload if not isinstance(payload, dict) else {**good, **payload}
    with pytest.raises(MalformedPayment):
        SignedGuarantee.from_json(data)


def test_eip191_is_g_v1_only() -> None:
    with pytest.raises(MalformedPayment):
        claims_digest(claims(2), DOMAIN, "eip191")


def test_policy_from_extra() -> None:
    extra = POLICY.to_extra()
    assert ValidationPolicy.from_extra(extra, 84532) == POLICY
    assert ValidationPolicy.from_extra({"tabEndpoint": "x"}, 84532) is None
    assert ValidationPolicy.from_extra(None, 84532) is None
    bad_cases = [
        {k: v for k, v in extra.items() if k != "jobHash"},
        {**extra, "minValidationScore": 0},
        {**extra, "minValidationScore": 101},
        {**extra, "minValidationScore": "80"},
        {**extra, "validationChainId": 1},
        {**extra, "jobHash": "0x" + "00" * 32},
        {**extra, "validatorAddress": "nope"},
    ]
    for bad in bad_cases:
        with pytest.raises(ValueError):
            ValidationPolicy.from_extra(bad, 84532)


def test_guarantee_id_is_stable_and_distinct() -> None:
    assert guarantee_id(1, 2, 3) == guarantee_id(1, 2, 3)
    assert (
        len(
            {
                guarantee_id(1, 2, 3),
                guarantee_id(2, 2, 3),
                guarantee_id(1, 3, 3),
                guarantee_id(1, 2, 4),
            }
        )
        == 4
    )


@settings(max_examples=60, deadline=None)
@given(
    tab=st.integers(0, (1 << 256) - 1),
    req=st.integers(0, (1 << 256) - 1),
    amount=st.integers(0, (1 << 256) - 1),
    ts=st.integers(0, (1 << 64) - 1),
)
def test_random_claims_agree_with_eth_account(tab: int, req: int, amount: int, ts: int) -> None:
    c = claims(1, tab_id=tab, req_id=req, amount=amount, timestamp=ts)
    digest = claims_digest(c, DOMAIN)
    signable = encode_typed_data(full_message=typed_data(c, DOMAIN))
    assert (
        Account.recover_message(signable, signature=sign_claims(c, KEY, DOMAIN).signature) == USER
    )
    assert digest == bytes(Account.sign_message(signable, KEY).message_hash)
