"""Every value of the conformance vectors, recomputed by our code.

The test rebuilds the whole vectors document from the inputs and compares
it leaf by leaf, so a value added to the file and not reproduced fails.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from fourmica_x402._eth import keccak
from fourmica_x402.guarantee import (
    EIP712_DOMAIN_TYPE,
    GUARANTEE_DOMAIN_SELECTOR,
    V1_TYPE,
    V2_TYPE,
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    certificate_message,
    claims_digest,
    guarantee_domain,
    recover_signer,
    sign_claims,
    struct_hash,
)
from fourmica_x402.wire import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    ResourceInfo,
    decode_payment_header,
    encode_header,
)

PROSE = {"about"}  # free-text descriptions, not values


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _sig(signed: SignedGuarantee) -> dict[str, Any]:
    s = signed.signature
    # r and s are written as integers in minimal hex (the file drops leading zero nibbles).
    r, s_ = int.from_bytes(s[:32], "big"), int.from_bytes(s[32:64], "big")
    return {"r": hex(r), "s": hex(s_), "v": s[64], "signature": _hex(s)}


def _rebuild(v: dict[str, Any]) -> dict[str, Any]:
    i = v["inputs"]
    key = i["private_key"]
    domain = Eip712Domain(i["chain_id"], i["eip712_name"], i["eip712_version"])
    common = dict(
        user=i["user_address"],
        recipient=i["recipient_address"],
        tab_id=int(i["tab_id"], 16),
        req_id=int(i["req_id"], 16),
        amount=int(i["amount"], 16),
        asset=i["asset_address"],
        timestamp=i["timestamp"],
    )
    c1 = GuaranteeClaims.v1(**common)
    s1 = sign_claims(c1, key, domain)
    s1_191 = sign_claims(c1, key, domain, "eip191")

    p = v["v2_policy_inputs"]
    policy = ValidationPolicy(
        registry=p["validation_registry_address"],
        validator=p["validator_address"],
        validator_agent_id=p["validator_agent_id"],
        min_score=p["min_validation_score"],
        job_hash=bytes.fromhex(p["job_hash"][2:]),
        chain_id=p["validation_chain_id"],
        tag=p["required_validation_tag"],
    )
    c2 = GuaranteeClaims.v2(**common, policy=policy)
    s2 = sign_claims(c2, key, domain)

    env1 = PaymentPayloadV1(
        scheme="4mica-credit", network=f"eip155:{i['chain_id']}", payload=s1.to_json()
    )
    # The v2 envelope's `accepted`/`resource` are transport context, taken from the file.
    given = json.loads(v["v2"]["x402_envelope_json_compact"])
    env2 = PaymentPayload(
        payload=s2.to_json(),
        accepted=PaymentRequirements.model_validate(given["accepted"]),
        resource=ResourceInfo.model_validate(given["resource"]),
    )
    gd_in = v["guarantee_domain_v1"]
    gdom = guarantee_domain(i["chain_id"], gd_in["contract"])
    cert1 = certificate_message(c1, gdom, c1.amount)
    cert2 = certificate_message(c2, gdom, c2.amount)
    return {
        "inputs": i,
        "eip712": {
            "domain_type": EIP712_DOMAIN_TYPE,
            "domain_typehash": _hex(keccak(EIP712_DOMAIN_TYPE.encode())),
            "domain_separator": _hex(domain.separator),
            "v1_type": V1_TYPE,
            "v1_typehash": _hex(keccak(V1_TYPE.encode())),
            "v2_type": V2_TYPE,
            "v2_typehash": _hex(keccak(V2_TYPE.encode())),
        },
        "v1": {
            "struct_hash": _hex(struct_hash(c1)),
            "digest": _hex(claims_digest(c1, domain)),
            "eip712_signature": _sig(s1),
            "payment_payload_inner": s1.to_json(),
            "eip191_digest": _hex(claims_digest(c1, domain, "eip191")),
            "eip191_signature": _sig(s1_191),
            "x402_envelope_json_compact": env1.to_json_bytes().decode(),
            "X-PAYMENT_header": encode_header(env1),
        },
        "v2": {
            "validation_subject_hash": _hex(c2.validation_subject_hash or b""),
            "validation_request_hash": _hex(c2.validation_request_hash or b""),
            "struct_hash": _hex(struct_hash(c2)),
            "digest": _hex(claims_digest(c2, domain)),
            "eip712_signature": _sig(s2),
            "payment_payload_inner": s2.to_json(),
            "x402_envelope_json_compact": env2.to_json_bytes().decode(),
            "PAYMENT-SIGNATURE_header": encode_header(env2),
        },
        "v2_policy_inputs": p,
        "guarantee_domain_v1": {
            "formula": gd_in["formula"],
            "contract": gd_in["contract"],
            "value": _hex(gdom),
            "guaranteeDomainSeparator_selector": GUARANTEE_DOMAIN_SELECTOR,
        },
        "certificate_claims": {
            "claims_v1_hex": _hex(cert1),
            "claims_v1_len": len(cert1),
            "claims_v2_hex": _hex(cert2),
            "claims_v2_len": len(cert2),
        },
    }


def _leaves(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, val in node.items():
            if k not in PROSE:
                out.update(_leaves(val, f"{path}.{k}"))
        return out
    return {path: node}


def test_every_vector_value_is_reproduced(vectors: dict[str, Any]) -> None:
    expected = _leaves(vectors)
    actual = _leaves(_rebuild(vectors))
    assert set(actual) == set(expected), "a vector value has no recomputation"
    mismatched = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not mismatched
    assert len(expected) > 60  # the file really was walked


def test_selector_is_keccak_of_the_function_signature() -> None:
    assert _hex(keccak(b"guaranteeDomainSeparator()")[:4]) == GUARANTEE_DOMAIN_SELECTOR


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_headers_decode_and_recover_the_signer(vectors: dict[str, Any], which: str) -> None:
    header_name = "X-PAYMENT_header" if which == "v1" else "PAYMENT-SIGNATURE_header"
    payload = decode_payment_header(vectors[which][header_name])
    signed = SignedGuarantee.from_json(payload.payload)
    i = vectors["inputs"]
    domain = Eip712Domain(i["chain_id"], i["eip712_name"], i["eip712_version"])
    assert recover_signer(signed, domain) == i["user_address"]
    assert signed.claims.bindings_are_canonical()
    # The header is plain base64 of the compact envelope JSON.
    raw = base64.b64decode(vectors[which][header_name])
    assert raw.decode() == vectors[which]["x402_envelope_json_compact"]
    assert encode_header(payload) == vectors[which][header_name]


def test_eip191_signature_recovers(vectors: dict[str, Any]) -> None:
    inner = dict(vectors["v1"]["payment_payload_inner"])
    inner["signature"] = vectors["v1"]["eip191_signature"]["signature"]
    inner["scheme"] = "eip191"
    signed = SignedGuarantee.from_json(inner)
    domain = Eip712Domain(vectors["inputs"]["chain_id"])
    assert recover_signer(signed, domain) == vectors["inputs"]["user_address"]
