"""A Starlette seller: GET /premium costs $0.01 (USDC on Base Sepolia); GET /free is open.

Run it:   python examples/starlette_seller.py
Needs:    pip install "fourmica-x402[starlette,server]"
Env:      PORT (8000) · FOURMICA_X402_DB (sqlite:///fourmica_x402.db) · PAY_TO (see below)

Payments settle on the embedded Core in FOURMICA_X402_DB; fund a buyer there with
`fourmica-x402 deposit --db <same URL> ADDRESS AMOUNT`.
"""

from __future__ import annotations

import os

import uvicorn
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig

# A throwaway TEST address (Hardhat account #1, publicly known). Set PAY_TO to your own.
PAY_TO = os.environ.get("PAY_TO", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")


async def free(request: Request) -> JSONResponse:
    return JSONResponse({"free": True})


async def premium(request: Request) -> JSONResponse:
    payment = request.state.payment
    return JSONResponse(
        {"premium": "the good stuff", "payer": payment.payer, "guarantee": payment.guarantee_id}
    )


config = PaymentConfig(
    pay_to=PAY_TO,
    network="eip155:84532",
    # Keys name routes of this app (templates: "GET /items/:id" prices Route("/items/{id:int}")):
    # what Starlette routes is what is priced; a key naming no route stops the start-up.
    routes={"GET /premium": "$0.01"},
    core=os.environ.get("FOURMICA_X402_DB", "sqlite:///fourmica_x402.db"),
)
app = Starlette(
    routes=[Route("/free", free), Route("/premium", premium)],
    middleware=[Middleware(PaymentMiddleware, config=config)],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
