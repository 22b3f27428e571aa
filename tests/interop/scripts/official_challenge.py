"""Reads a challenge the way sdk-4mica's README does for x402 v2 (OFFICIAL venv):
``X402PaymentRequired.from_raw`` on the decoded PAYMENT-REQUIRED header.

    python official_challenge.py URL

Prints one JSON object: ``{"status", "resource", "error"}`` (``error`` None when the SDK
read it).
"""

from __future__ import annotations

import base64
import json
import sys

import httpx
from fourmica_sdk import X402PaymentRequired


def main() -> int:
    answer = httpx.get(sys.argv[1], timeout=30)
    out: dict[str, object] = {"status": answer.status_code, "resource": None, "error": None}
    raw = json.loads(base64.b64decode(answer.headers["payment-required"]))
    out["resource"] = raw.get("resource")
    try:
        X402PaymentRequired.from_raw(raw)
    except Exception as exc:  # what the SDK raises is the finding
        out["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
