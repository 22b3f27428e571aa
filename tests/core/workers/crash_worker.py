"""Crash worker: does Core work until the test kills it with SIGKILL.

python crash_worker.py STORE_URL accept   -> accepts guarantees forever, printing each id once
                                             committed, and "ready" after the first
python crash_worker.py STORE_URL close N  -> accepts N guarantees, prints "ready", then closes the cycle
"""

from __future__ import annotations

import sys

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer


def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    core = Core(url)
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 10**15, network=NETWORK)
    if mode == "accept":
        for i in range(1, 10**6):
            accepted = core.accept(*buyer.pay(core, seller.address, i))
            print(accepted.guarantee_id, flush=True)
            if i == 1:  # the test times its kill from here, not from a start slowed by load
                print("ready", flush=True)
    else:
        others = [TestBuyer.new() for _ in range(20)]
        for other in others:
            core.deposit(other.address, 10**12, network=NETWORK)
        for i in range(int(sys.argv[3])):
            payer = others[i % len(others)]
            payee = others[(i * 7 + 3) % len(others)]
            core.accept(*payer.pay(core, payee.address, 1 + i % 97))
        print("ready", flush=True)
        core.close_cycle(network=NETWORK)
        print("closed", flush=True)


if __name__ == "__main__":
    main()
