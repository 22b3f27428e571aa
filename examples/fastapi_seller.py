"""A FastAPI seller: GET /premium costs $0.01 (USDC on Base Sepolia); GET /free is open.

Run it:   python examples/fastapi_seller.py
Needs:    pip install "fourmica-x402[fastapi,server]"
Env:      PORT (8000) · FOURMICA_X402_DB (sqlite:///fourmica_x402.db) · PAY_TO (see below)
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from fastapi import FastAPI
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid

from fourmica_x402.gate import Payment

# A throwaway TEST address (Hardhat account #1, publicly known). Set PAY_TO to your own.
PAY_TO = os.environ.get("PAY_TO", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")

app = FastAPI(title="fourmica-x402 FastAPI seller")
FourmicaX402(
    app,
    pay_to=PAY_TO,
    network="eip155:84532",
    core=os.environ.get("FOURMICA_X402_DB", "sqlite:///fourmica_x402.db"),
)


@app.get("/free")
def free() -> dict[str, Any]:
    return {"free": True}


# Paid() prices the route it is declared on (every method it serves unless methods=…) and
# refuses to run the handler without a payment settled for it.
@app.get("/premium")
def premium(payment: Payment = Paid("$0.01")) -> dict[str, Any]:  # noqa: B008
    return {"premium": "the good stuff", "payer": payment.payer, "guarantee": payment.guarantee_id}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
