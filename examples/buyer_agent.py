"""A buyer agent: calls several paid routes under a task budget and prints its receipts.

Run it:   python examples/buyer_agent.py
Needs:    pip install "fourmica-x402[starlette,server]"

With SELLER_URL unset it starts a small local seller (embedded Core, SQLite in a temp
directory) and funds itself there with sandbox collateral. With SELLER_URL set it pays
that seller instead (PATHS, comma-separated, default "/premium,/premium,/free": the example
sellers' routes); BUYER_KEY then must hold collateral in that seller's Core, e.g.
`fourmica-x402 deposit --db <the seller's FOURMICA_X402_DB> <the buyer's address> '$1'`.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time

import httpx

from fourmica_x402.client import RECEIPT_KEY, PaymentTransport, ReceiptLedger, SpendingPolicy
from fourmica_x402.errors import PaymentRefused

# A throwaway TEST key (Anvil account #3, publicly known). Never fund it on a real chain.
BUYER_KEY = os.environ.get(
    "BUYER_KEY", "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
)


def start_local_seller() -> str:
    """A Starlette seller with three priced routes, on a free loopback port."""
    import uvicorn
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.core import Core
    from fourmica_x402.guarantee import address_of

    core = Core(os.path.join(tempfile.mkdtemp(), "seller.db"))
    core.deposit(
        address_of(BUYER_KEY), 1_000_000, network="eip155:84532"
    )  # sandbox: $1 of collateral

    async def answer(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"route": request.url.path, "paid_by": request.state.payment.payer})

    config = PaymentConfig(
        pay_to="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",  # throwaway TEST address
        routes={"GET /search": "$0.01", "GET /summary": "$0.02", "GET /report": "$0.05"},
        core=core,
    )
    app = Starlette(
        routes=[Route(p, answer) for p in ("/search", "/summary", "/report")],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def main() -> None:
    base = os.environ.get("SELLER_URL")
    default = "/premium,/premium,/free" if base else "/search,/search,/summary,/report"
    paths = [p.strip() for p in os.environ.get("PATHS", default).split(",") if p.strip()]
    base = base or start_local_seller()
    policy = SpendingPolicy(max_per_request="$0.10", per_hour="$1")
    ledger = ReceiptLedger()
    with (
        httpx.Client(
            transport=PaymentTransport(BUYER_KEY, policy=policy, ledger=ledger), base_url=base
        ) as client,
        policy.task("market research", budget="$0.05"),
    ):
        for path in paths:
            try:
                response = client.get(path)
            except PaymentRefused as refused:
                print(f"{path:10} refused: {refused.reason} ({refused.message})")
                continue
            receipt = response.extensions.get(RECEIPT_KEY)  # None: the route was not paid
            paid = f"paid {receipt.amount} atomic units" if receipt else "not paid"
            print(f"{path:10} {response.status_code} {paid} → {response.text[:200]}")
    print("\nreceipts (JSON lines):")
    for receipt in ledger:
        print(json.dumps(receipt.to_dict(), sort_keys=True))


if __name__ == "__main__":
    main()
