"""An official 4Mica buyer: x402's sync client + the 4mica-x402 EVM client scheme.

Runs INSIDE the scratch virtualenv that has the official packages (x402, 4mica-x402,
sdk-4mica); never with this project on the path (its import name is the same).

    python official_buyer.py URL KEY [--v1] [--network eip155:84532]

Registers the scheme for x402 v2 (PAYMENT-REQUIRED header) or, with --v1, for v1 only
(a 402 whose JSON body is the v1 challenge), GETs URL and prints one JSON object:
``{"status", "body", "headers", "payment_response_header", "x_payment_response_header",
"error"}`` (the result headers base64-decoded). Exit code 0 when a response came back.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any


def _decoded(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(base64.b64decode(value))
    except ValueError:
        return {"undecodable": value}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key", help="buyer private key (hex); a throwaway test key")
    parser.add_argument("--v1", action="store_true", help="pay x402 v1 challenges only")
    parser.add_argument("--network", default="eip155:84532")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    # The SDK's ConfigBuilder.from_env() runs last and would override the challenge's rpcUrl.
    for name in [n for n in os.environ if n.startswith("4MICA_")]:
        del os.environ[name]

    # fourmica_x402 below is the OFFICIAL package of that name (4mica-x402), not this project.
    from fourmica_x402.client_scheme import FourMicaEvmScheme
    from x402 import x402ClientSync
    from x402.http.clients import x402_requests

    scheme = FourMicaEvmScheme(args.key)
    client = x402ClientSync()
    if args.v1:
        client.register_v1(args.network, scheme)
    else:
        client.register(args.network, scheme)
    client.set_spend_controls(False)  # the scheme has no find_default_asset
    session = x402_requests(client)
    out: dict[str, Any] = {"status": None, "error": None}
    try:
        response = session.get(args.url, timeout=args.timeout)
    except Exception as exc:  # reported, not raised: the test reads the JSON
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out))
        return 2
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    out.update(
        status=response.status_code,
        body=body,
        headers=dict(response.headers),
        payment_response_header=_decoded(response.headers.get("PAYMENT-RESPONSE")),
        x_payment_response_header=_decoded(response.headers.get("X-PAYMENT-RESPONSE")),
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
