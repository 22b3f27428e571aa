"""A Flask seller: GET /premium costs $0.01 (USDC on Base Sepolia); GET /free is open.

Run it:   python examples/flask_seller.py
Needs:    pip install "fourmica-x402[flask]"
Env:      PORT (8000) · FOURMICA_X402_DB (sqlite:///fourmica_x402.db) · PAY_TO (see below)
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, g
from fourmica_x402.adapters.flask import FourmicaX402, paid

app = Flask(__name__)
# A throwaway TEST address (Hardhat account #1, publicly known). Set PAY_TO to your own.
app.config["FOURMICA_X402_PAY_TO"] = os.environ.get(
    "PAY_TO", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
)
app.config["FOURMICA_X402_NETWORK"] = "eip155:84532"
app.config["FOURMICA_X402_CORE"] = os.environ.get("FOURMICA_X402_DB", "sqlite:///fourmica_x402.db")
payments = FourmicaX402(app)


@app.get("/free")
def free() -> dict[str, Any]:
    return {"free": True}


@app.get("/premium")
@paid(price="$0.01")
def premium() -> dict[str, Any]:
    return {
        "premium": "the good stuff",
        "payer": g.payment.payer,
        "guarantee": g.payment.guarantee_id,
    }


# Once the routes exist: a FOURMICA_X402_ROUTES entry naming no route, or a bad @paid, fails
# here rather than on the first request.
payments.check()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
