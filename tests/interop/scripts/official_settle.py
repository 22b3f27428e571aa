"""Settles one x402 v2 body through the official facilitator client (OFFICIAL venv), twice:
the second is a replay, so it shows how the official seller reads a refusal.

    python official_settle.py FACILITATOR_URL < body.json

``body.json`` is a ``/settle`` request body. Prints one JSON object: a list of
``{"success", "error_reason", "transaction"}`` as the client parsed them.
"""

from __future__ import annotations

import json
import sys

from x402.http import FacilitatorConfig
from x402.schemas import PaymentPayload, PaymentRequirements

from fourmica_x402.facilitator import FourMicaFacilitatorClientSync


def main() -> int:
    body = json.load(sys.stdin)
    payload = PaymentPayload.model_validate(body["paymentPayload"])
    requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
    client = FourMicaFacilitatorClientSync(FacilitatorConfig(url=sys.argv[1]))
    seen = []
    for _ in range(2):
        answer = client.settle(payload, requirements)
        seen.append(
            {
                "success": answer.success,
                "error_reason": answer.error_reason,
                "transaction": answer.transaction,
            }
        )
    print(json.dumps({"settles": seen}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
