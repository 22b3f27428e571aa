"""Settles one X-PAYMENT header through sdk-4mica's own resource-server helper (OFFICIAL
venv), ``X402Flow.settle_payment``, twice: the second is a replay.

    python official_sdk_settle.py FACILITATOR_URL < body.json

``body.json`` is ``{"header": X-PAYMENT value, "requirements": v1 requirements}``. The helper
posts ``{"x402Version": 1, "paymentHeader": …, "paymentRequirements": …}`` to ``/settle``.
Prints one JSON object: ``{"settles": [answer, answer]}``, each the answer's JSON as the SDK
read it (or ``{"exception": text}``).
"""

from __future__ import annotations

import asyncio
import json
import sys

from fourmica_sdk import PaymentRequirementsV1, X402Flow, X402SignedPayment


async def main() -> int:
    body = json.load(sys.stdin)
    flow = X402Flow(signer=None)  # settling signs nothing
    requirements = PaymentRequirementsV1.from_raw(body["requirements"])
    payment = X402SignedPayment(header=body["header"], payload={}, signature=None)
    seen = []
    for _ in range(2):
        try:
            settled = await flow.settle_payment(payment, requirements, sys.argv[1])
            seen.append(settled.settlement.raw)
        except Exception as exc:  # the SDK raises on a non-2xx answer
            seen.append({"exception": repr(exc)})
    await flow.http.aclose()
    print(json.dumps({"settles": seen}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
