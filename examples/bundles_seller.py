"""A Starlette seller of bundles and prepaid jobs (USDC on Base Sepolia); GET /free is open.

- GET /records?count=N: $0.01 per 100 records (rounded up: 250 records are 3 bundles), at
  least $0.03 a request, at most 10,000 records. The 402 says how many bundles the buyer is
  paying for before it signs; a missing or bad count is 400 invalid_units, never a charge.
- POST /jobs: a long job prepaid up to $2: the buyer guarantees $2 before it starts.

Run it:   python examples/bundles_seller.py
Needs:    pip install "fourmica-x402[starlette,server]"
Env:      PORT (8000) · FOURMICA_X402_DB (sqlite:///fourmica_x402.db) · PAY_TO (see below)

Payments settle on the embedded Core in FOURMICA_X402_DB; fund a buyer there with
`fourmica-x402 deposit --db <same URL> ADDRESS AMOUNT`. See docs/protocol.md, "Minimums,
bundles and prepaid caps".
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import uvicorn
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig, RouteConfig
from fourmica_x402.gate import RequestView

# A throwaway TEST address (Hardhat account #1, publicly known). Set PAY_TO to your own.
PAY_TO = os.environ.get("PAY_TO", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")


def hundreds(request: RequestView) -> int:
    """Bundles of 100 records in ?count=N, rounded up. A missing, repeated or non-numeric
    count raises ValueError: the buyer gets 400 invalid_units, and nothing is charged.

    A repeated count is refused, not read: Starlette's handler reads the last of them, and
    pricing the first would sell ?count=100&count=10000 as one bundle."""
    counts = parse_qs(request.query, keep_blank_values=True).get("count", [])  # count= is one
    if len(counts) != 1:
        raise ValueError("send exactly one count")
    if int(counts[0]) < 1:
        raise ValueError(f"count must be at least 1, got {counts[0]}")
    return -(-int(counts[0]) // 100)


async def free(request: Request) -> JSONResponse:
    return JSONResponse({"free": True})


async def records(request: Request) -> JSONResponse:
    payment = request.state.payment  # units, unit_price and amount: what the buyer paid for
    count = int(request.query_params["count"])
    return JSONResponse(
        {
            "records": [{"id": i} for i in range(count)],
            "bundles": payment.units,
            "paid": payment.amount,
            "payer": payment.payer,
        }
    )


async def jobs(request: Request) -> JSONResponse:
    payment = request.state.payment  # payment.cap: what the buyer guaranteed up front
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("task", ""), str):
        # a 4xx: the gate refunds it (only a 2xx is delivered)
        return JSONResponse({"error": 'send {"task": "…"}'}, status_code=400)
    task = body.get("task", "")
    return JSONResponse({"job": f"done: {task}", "prepaid": payment.cap, "payer": payment.payer})


config = PaymentConfig(
    pay_to=PAY_TO,
    network="eip155:84532",
    routes={
        "GET /records": RouteConfig(
            price="$0.01",  # one unit's price
            units=hundreds,
            unit="100 records",
            max_units=100,
            min_amount="$0.03",
            description="Records",
        ),
        "POST /jobs": RouteConfig(price="$0.10", cap="$2", description="A long job"),
    },
    core=os.environ.get("FOURMICA_X402_DB", "sqlite:///fourmica_x402.db"),
)
app = Starlette(
    routes=[
        Route("/free", free),
        Route("/records", records),
        Route("/jobs", jobs, methods=["POST"]),
    ],
    middleware=[Middleware(PaymentMiddleware, config=config)],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
