"""Our buyer's guarantee for the TypeScript recipient (tests/interop/test_typescript.py).

    python sign_guarantee.py BUYER_KEY RECIPIENT TAB_ID REQ_ID VERSION

Prints the signed guarantee's JSON: 100 atomic units of Base Sepolia USDC, G-v2 with a
delivery policy whose validator is the recipient.
"""

from __future__ import annotations

import json
import sys
import time

from fourmica_x402 import Eip712Domain, GuaranteeClaims, address_of, default_asset, sign_claims
from fourmica_x402.guarantee import ValidationPolicy

key, recipient, tab_id, req_id, version = sys.argv[1:6]
fields = {
    "user": address_of(key),
    "recipient": recipient,
    "tab_id": int(tab_id, 0),
    "req_id": int(req_id, 0),
    "amount": 100,
    "asset": default_asset("eip155:84532").address,
    "timestamp": int(time.time()),
}
if version == "2":
    policy = ValidationPolicy(
        registry="0x7465143a62f45C4149fa09e3Ae7fE130C224b03E",
        validator=recipient,
        validator_agent_id=7,
        min_score=80,
        job_hash=bytes(range(32)),
        chain_id=84532,
        tag="delivery",
    )
    claims = GuaranteeClaims.v2(policy=policy, **fields)
else:
    claims = GuaranteeClaims.v1(**fields)
print(json.dumps(sign_claims(claims, key, Eip712Domain(chain_id=84532)).to_json()))
