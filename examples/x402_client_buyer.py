"""A buyer on x402's own client (the ``x402`` package) paying a 4Mica seller, spend controls ON.

Run it:   python examples/x402_client_buyer.py
Needs:    pip install "fourmica-x402[x402,starlette,server]"

x402's client keeps its spend controls on here: our ``4mica-credit`` scheme answers its asset
lookup, so x402 knows the offer is USDC and applies its per-payment cap. Our SpendingPolicy
adds budgets on top. At the end, a second client whose cap is below the price is refused by
x402 itself, before any tab is opened or anything signed.

With SELLER_URL unset it starts the local seller of buyer_agent.py (embedded Core, SQLite in
a temp directory; routes /search $0.01, /summary $0.02, /report $0.05) and funds itself there
with sandbox collateral. With SELLER_URL set it pays that seller instead (PATHS,
comma-separated, default "/premium,/premium"); BUYER_KEY then must hold collateral in that
seller's Core, e.g. `fourmica-x402 deposit --db <the seller's DB> <the buyer's address> '$1'`.
"""

from __future__ import annotations

import os

from x402 import x402ClientSync
from x402.http.clients import x402_requests
from x402.http.clients.requests import PaymentError  # each x402 HTTP client has its own
from x402.http.x402_http_client import x402HTTPClientSync

from fourmica_x402.client import SpendingPolicy
from fourmica_x402.client.x402_scheme import register
from fourmica_x402.errors import PaymentRefused

# A throwaway TEST key (Anvil account #3, publicly known). Never fund it on a real chain.
BUYER_KEY = os.environ.get(
    "BUYER_KEY", "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
)


def buyer(max_per_payment: str) -> x402ClientSync:
    """x402's sync client with our scheme (x402 v1 and v2, every network we know)."""
    client = x402ClientSync()
    register(client, BUYER_KEY, policy=SpendingPolicy(max_per_request="$0.10", per_hour="$1"))
    # Spend controls stay ON: x402 refuses any offer over this cap before our scheme runs.
    client.set_spend_controls({"max_amount_per_payment": max_per_payment})
    return client


def get(client: x402ClientSync, url: str, label: str) -> None:
    session = x402_requests(client)
    try:
        response = session.get(url, timeout=30)
    except PaymentError as failed:
        cause = failed.__cause__
        if isinstance(cause, PaymentRefused):  # our SpendingPolicy said no
            print(f"{label:10} refused by the spending policy: {cause.reason} ({cause.message})")
        else:  # x402 itself: its spend controls (or no offer it can pay)
            print(f"{label:10} spend controls refused: {str(cause or failed).split('. ')[0]}")
        return
    finally:
        session.close()
    settled = None
    if response.status_code != 402 and (
        "PAYMENT-RESPONSE" in response.headers or "X-PAYMENT-RESPONSE" in response.headers
    ):
        settled = x402HTTPClientSync(client).get_payment_settle_response(response.headers.get)
    paid = f"paid, guarantee {settled.transaction[:18]}…" if settled else "not paid"
    print(f"{label:10} {response.status_code} {paid} → {response.text[:120]}")


def main() -> None:
    base = os.environ.get("SELLER_URL")
    if base is None:
        from buyer_agent import start_local_seller  # the seller of examples/buyer_agent.py

        base = start_local_seller()
    default = "/premium,/premium" if os.environ.get("SELLER_URL") else "/search,/summary,/report"
    paths = [p.strip() for p in os.environ.get("PATHS", default).split(",") if p.strip()]
    client = buyer(max_per_payment="$0.03")
    print(f"paying {base} with x402's client, spend controls on ($0.03 a payment)")
    for path in paths:
        get(client, base.rstrip("/") + path, path)
    print("\na client whose spend controls cap payments at $0.001:")
    get(buyer(max_per_payment="$0.001"), base.rstrip("/") + paths[0], paths[0])


if __name__ == "__main__":
    main()
