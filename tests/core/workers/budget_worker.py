"""Budget worker: spends against a per-hour cap kept in a shared receipts ledger.

Run by tests/core/test_buyer_budgets.py as a separate process:
    python budget_worker.py LEDGER_FILE GO_FILE ATTEMPTS AMOUNT CAP
Waits for GO_FILE, then tries ATTEMPTS payments of AMOUNT atomic units, each approved one
held for a moment before it is committed (a reservation another process must see).
Prints one JSON line: {"won": n, "refused": n}.
"""

from __future__ import annotations

import json
import os
import sys
import time

from fourmica_x402.client import ReceiptLedger, SpendingPolicy
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK


def main() -> None:
    path, go_file, attempts, amount, cap = sys.argv[1:6]
    policy = SpendingPolicy(per_hour=int(cap), ledger=ReceiptLedger(path))
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.001)
    won = refused = 0
    for i in range(int(attempts)):
        decision = policy.check(
            seller=f"0x{(i % 3) + 1:040x}",
            url="http://seller.test/premium",
            amount=int(amount),
            asset=default_asset(NETWORK).address,
            network=NETWORK,
        )
        if decision.outcome != "paid":
            refused += 1
            continue
        assert decision.reservation is not None
        time.sleep(0.002)  # signing and sending: the reservation must hold meanwhile
        policy.commit(decision.reservation)
        won += 1
    print(json.dumps({"won": won, "refused": refused}))


if __name__ == "__main__":
    main()
