"""Sign a 4mica-credit guarantee and verify it, as a buyer and a seller would.

Run: python examples/sign_guarantee.py

The private key below is a throwaway TEST key (publicly known, never funded).
Never put a real key in source code.
"""

from __future__ import annotations

import json
import time

from fourmica_x402 import (
    Eip712Domain,
    GuaranteeClaims,
    PaymentPayloadV1,
    address_of,
    decode_payment_header,
    default_asset,
    encode_header,
    recover_signer,
    sign_claims,
    to_atomic,
)
from fourmica_x402.guarantee import SignedGuarantee

TEST_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"  # throwaway
SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
NETWORK = "eip155:84532"


def main() -> None:
    usdc = default_asset(NETWORK)
    domain = Eip712Domain(chain_id=84532)
    claims = GuaranteeClaims.v1(
        user=address_of(TEST_KEY),
        recipient=SELLER,
        tab_id=0x1234,
        req_id=0,
        amount=to_atomic("$0.01", usdc),
        asset=usdc.address,
        timestamp=int(time.time()),
    )
    signed = sign_claims(claims, TEST_KEY, domain)
    header = encode_header(
        PaymentPayloadV1(scheme="4mica-credit", network=NETWORK, payload=signed.to_json())
    )
    print("X-PAYMENT:", header[:60] + "…")

    # Seller side: decode the header and recover who signed.
    received = SignedGuarantee.from_json(decode_payment_header(header).payload)
    signer = recover_signer(received, domain)
    print(json.dumps({"signer": signer, "amount": received.claims.amount}, indent=2))
    assert signer == claims.user_address


if __name__ == "__main__":
    main()
