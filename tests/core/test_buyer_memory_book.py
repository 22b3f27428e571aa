"""A policy without a ledger over a long run (docs/buyer.md, "Budgets"): the rows it holds stay
bounded by a day's payments, while the per-seller cap, the windows and "paid this seller
before" still count everything spent."""

from __future__ import annotations

import pytest

from fourmica_x402.client import SpendingPolicy
from fourmica_x402.client import policy as policy_module
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, FakeClock

USDC = default_asset(NETWORK).address
SELLER = "0x" + "11" * 20


def pay(policy: SpendingPolicy, amount: int = 10) -> str:
    decision = policy.check(seller=SELLER, url="u", amount=amount, asset=USDC, network=NETWORK)
    if decision.reservation is not None:
        policy.commit(decision.reservation)
    return decision.outcome


def test_a_long_run_holds_a_days_rows_and_still_counts_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    monkeypatch.setattr(policy_module.time, "time", clock)
    policy = SpendingPolicy(max_per_seller=3_000 * 10 + 5, per_day="$1")
    for _ in range(3_000):  # ten days, a payment every five minutes
        assert pay(policy) == "paid"
        clock.advance(288.0)
    book = policy._book
    held = len(book._rows) + len(getattr(book, "_hours", {}))  # type: ignore[attr-defined]
    assert held <= 288 + 24 * 10 + 2, held  # a day of rows, an hourly total per older hour
    assert policy.spent(USDC.lower()) == 30_000
    assert policy.spent(USDC.lower(), seller=SELLER) == 30_000
    assert policy.spent(USDC.lower(), since=clock() - 86_400) == 300 * 10
    assert book.paid_before(SELLER)
    assert pay(policy, 6) == "budget_exhausted"  # the lifetime per-seller cap saw every payment
    assert pay(policy, 5) == "paid"


def test_an_unsettled_reservation_older_than_a_day_keeps_counting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    monkeypatch.setattr(policy_module.time, "time", clock)
    policy = SpendingPolicy(max_per_seller=100)
    hanging = policy.check(seller=SELLER, url="u", amount=40, asset=USDC, network=NETWORK)
    for _ in range(50):
        clock.advance(3_600.0)
        assert pay(policy, 1) == "paid"
    assert policy.spent(USDC.lower(), seller=SELLER) == 90
    assert hanging.reservation is not None
    policy.release(hanging.reservation)
    assert policy.spent(USDC.lower(), seller=SELLER) == 50
