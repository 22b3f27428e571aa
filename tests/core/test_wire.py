"""The x402 envelope codec, including what a hostile client can send."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fourmica_x402.errors import MalformedPayment
from fourmica_x402.wire import (
    MAX_HEADER_BYTES,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    SettleResponse,
    VerifyResponse,
    decode_header_json,
    decode_payment_header,
    decode_payment_required,
    encode_header,
)

REQ = PaymentRequirements(
    scheme="4mica-credit",
    network="eip155:84532",
    asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    amount="10000",
    pay_to="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    extra={"tabEndpoint": "http://127.0.0.1:8000/x402/tab"},
)


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.b64encode(raw).decode()


def test_requirements_serialise_camel_case_in_order_without_nulls() -> None:
    assert list(REQ.to_dict()) == [
        "scheme",
        "network",
        "asset",
        "amount",
        "payTo",
        "maxTimeoutSeconds",
        "extra",
    ]
    challenge = PaymentRequired(accepts=[REQ], resource=ResourceInfo(url="http://x/p"))
    data = json.loads(base64.b64decode(encode_header(challenge)))
    assert data["x402Version"] == 2 and "error" not in data and "extensions" not in data
    assert data["resource"] == {"url": "http://x/p"}
    assert decode_payment_required(encode_header(challenge)) == challenge


def test_hex_amounts_are_accepted_and_normalised() -> None:
    assert REQ.model_copy(update={}).amount == "10000"
    assert (
        PaymentRequirements.model_validate({**REQ.to_dict(), "amount": "0x2710"}).amount == "10000"
    )
    with pytest.raises(ValueError):
        PaymentRequirements.model_validate({**REQ.to_dict(), "amount": "-5"})


def test_v1_and_v2_requirements_convert_both_ways() -> None:
    resource = ResourceInfo(url="http://x/p", description="d", mime_type="application/json")
    v1 = REQ.to_v1(resource)
    assert v1.max_amount_required == "10000" and v1.resource == "http://x/p"
    assert list(v1.to_dict())[:3] == ["scheme", "network", "maxAmountRequired"]
    assert v1.to_v2() == REQ


def test_unknown_fields_are_kept_for_forward_compatibility() -> None:
    data = {**REQ.to_dict(), "futureField": 1}
    assert PaymentRequirements.model_validate(data).to_dict()["futureField"] == 1


def test_payload_round_trips_by_version() -> None:
    v2 = PaymentPayload(payload={"a": 1}, accepted=REQ)
    v1 = PaymentPayloadV1(scheme="4mica-credit", network="eip155:84532", payload={"a": 1})
    assert decode_payment_header(encode_header(v2)) == v2
    assert decode_payment_header(encode_header(v1)) == v1
    assert decode_payment_header(encode_header(v2), expected_version=2).scheme == "4mica-credit"


def test_header_version_must_match_the_header_name() -> None:
    v2 = encode_header(PaymentPayload(payload={}, accepted=REQ))
    with pytest.raises(MalformedPayment):
        decode_payment_header(v2, expected_version=1)


def test_settle_and_verify_responses() -> None:
    settle = SettleResponse(success=True, transaction="0xab", network="eip155:84532", payer="0x1")
    assert json.loads(base64.b64decode(encode_header(settle))) == {
        "success": True,
        "payer": "0x1",
        "transaction": "0xab",
        "network": "eip155:84532",
    }
    assert VerifyResponse(is_valid=False, invalid_reason="x").to_dict() == {
        "isValid": False,
        "invalidReason": "x",
    }


HOSTILE: list[Any] = [
    "",
    "   ",
    "%%%",
    "eyJ",
    "e30",
    b64(b"\xff\xfe"),
    b64(b"not json"),
    b64([1, 2]),
    b64("str"),
    b64(None),
    b64({}),
    b64({"x402Version": "2"}),
    b64({"x402Version": 2.0}),
    b64({"x402Version": True}),
    b64({"x402Version": 3}),
    b64({"x402Version": 2}),
    b64({"x402Version": 2, "payload": [], "accepted": {}}),
    b64({"x402Version": 2, "payload": {}, "accepted": {**REQ.to_dict(), "amount": "1e5"}}),
    b64({"x402Version": 2, "payload": {}, "accepted": {**REQ.to_dict(), "amount": None}}),
    b64({"x402Version": 2, "payload": {}, "accepted": {**REQ.to_dict(), "maxTimeoutSeconds": "x"}}),
    b64({"x402Version": 1, "scheme": 5, "network": "n", "payload": {}}),
    b64({"x402Version": 1, "scheme": "s", "network": "n"}),
    b64(b"[" * 5000 + b"]" * 5000),
    b64(b'{"a":' * 3000 + b"1" + b"}" * 3000),
    "A" * (MAX_HEADER_BYTES + 4),
    "é" * 10,
    "\x00abc",
    12345,
    None,
    b"\xff",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_headers_raise_only_the_typed_error(value: Any) -> None:
    with pytest.raises(MalformedPayment) as info:
        decode_payment_header(value)
    assert info.value.reason == "malformed_payment" and info.value.status == 402


def test_oversize_limit_is_on_the_header_not_the_content() -> None:
    small = b64({"x402Version": 1, "scheme": "s", "network": "n", "payload": {"p": "x" * 100}})
    assert decode_payment_header(small).payload == {"p": "x" * 100}
    big = b64({"x402Version": 1, "scheme": "s", "network": "n", "payload": {"p": "x" * 13000}})
    assert len(big) > MAX_HEADER_BYTES
    with pytest.raises(MalformedPayment, match="larger"):
        decode_payment_header(big)


def test_missing_padding_is_tolerated() -> None:
    header = encode_header(PaymentPayload(payload={}, accepted=REQ)).rstrip("=")
    assert decode_header_json(header)["x402Version"] == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)
envelopes = st.fixed_dictionaries(
    {"x402Version": st.sampled_from([1, 2, 3, "2", None])},
    optional={
        "payload": json_values,
        "accepted": json_values,
        "scheme": json_values,
        "network": json_values,
        "resource": json_values,
    },
)
headers = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
    json_values.map(lambda v: b64(json.dumps(v).encode())),
    envelopes.map(lambda v: b64(json.dumps(v).encode())),
    st.binary(max_size=200),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers)
def test_fuzz_decoder_only_raises_the_typed_error(value: Any) -> None:
    try:
        result = decode_payment_header(value)
    except MalformedPayment as exc:
        assert exc.reason == "malformed_payment"
    else:
        assert isinstance(result, PaymentPayload | PaymentPayloadV1)
