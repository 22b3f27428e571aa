"""The official 4Mica route-dict seller (FastAPI), with a facilitator of our choosing.

Runs INSIDE the scratch virtualenv that has the official packages (x402==2.20.0,
4mica-x402, sdk-4mica, fastapi, uvicorn); never with this project on the path.

    python official_seller.py PORT FACILITATOR_URL PAY_TO [--extra JSON]

Serves ``GET /premium`` ($0.01, USDC on Base Sepolia) through
``fastapi_payment_middleware_from_config`` with the tab endpoint at
``http://127.0.0.1:PORT/payment/tab``, and an open ``GET /health``. ``--extra`` is the
route's ``accepts.extra`` (the official middleware adds only ``tabEndpoint``: a buyer on
the official SDK also needs ``rpcUrl`` and the five validation fields); without it,
``{"rpcUrl": FACILITATOR_URL}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("facilitator_url")
    parser.add_argument("pay_to")
    parser.add_argument("--extra", default=None, help="JSON object for accepts.extra")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("4MICA_")]:
        del os.environ[name]

    # fourmica_x402 below is the OFFICIAL package of that name (4mica-x402), not this project.
    import uvicorn
    from fastapi import FastAPI
    from x402.http import FacilitatorConfig

    from fourmica_x402.facilitator import FourMicaFacilitatorClient
    from fourmica_x402.http import fastapi_payment_middleware_from_config

    extra = json.loads(args.extra) if args.extra else {"rpcUrl": args.facilitator_url}
    routes = {
        "GET /premium": {
            "accepts": {
                "scheme": "4mica-credit",
                "price": "$0.01",
                "network": "eip155:84532",
                "payTo": args.pay_to,
                "extra": extra,
            },
            "description": "premium content",
        }
    }
    app = FastAPI()

    @app.get("/premium")
    def premium() -> dict[str, str]:
        return {"premium": "the good stuff"}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    middleware = fastapi_payment_middleware_from_config(
        routes=routes,
        tab_endpoint=f"http://127.0.0.1:{args.port}/payment/tab",
        facilitator_client=FourMicaFacilitatorClient(FacilitatorConfig(url=args.facilitator_url)),
    )
    app.middleware("http")(middleware)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
