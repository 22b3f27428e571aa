"""The monitoring signals (docs/operations.md, "Monitoring signals"), read from a real Core on
SQLite and PostgreSQL, checked exactly against a scenario driven through the Core: deposits,
tabs, accepted and voided guarantees, cycles closed, resolved and finalised, debits paid in
full, in part and not at all, a claim, a default with a shortfall. Their Prometheus exposition
needs prometheus-client (the ``server`` extra): without it (``tox -e core``) those tests skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.core import signals as core_signals
from fourmica_x402.core.signals import AssetSignals, CycleSignals, SellerSignals
from fourmica_x402.errors import MalformedPayment
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer

USDC = default_asset(NETWORK).address
OTHER = "0x" + "77" * 20
START = 1_800_000_000
FAST = CoreConfig(cycle_window=86_400, resolution_delay=10, payment_window=10, finality=10)


class Scenario:
    """Two sellers, three buyers, two assets; every number below is worked out by hand."""

    def __init__(self, url: str) -> None:
        self.clock = FakeClock(START)
        self.core = core = Core(url, config=FAST, clock=self.clock)
        core.set_factor(
            NETWORK, None, 2
        )  # credit beyond collateral: c can default with a shortfall
        self.a, self.b, self.c = (TestBuyer.new() for _ in range(3))
        self.s1, self.s2 = TestBuyer.new().address, TestBuyer.new().address
        for buyer, amount in ((self.a, 10_000), (self.b, 10_000), (self.c, 600)):
            core.deposit(buyer.address, amount, network=NETWORK)
        core.deposit(self.b.address, 5_000, network=NETWORK, asset=OTHER)
        # Cycle 1 (USDC): a→s1 100 + 300, b→s1 200, b→s2 50, c→s2 1000; a→s2 70 voided.
        for buyer, seller, amount in (
            (self.a, self.s1, 100),
            (self.a, self.s1, 300),
            (self.b, self.s1, 200),
            (self.b, self.s2, 50),
            (self.c, self.s2, 1000),
        ):
            self.pay(buyer, seller, amount)
        core.void(self.pay(self.a, self.s2, 70), by=self.s2)
        self.pay(self.b, self.s1, 999, asset=OTHER)
        # Debits: a 400, b 250, c 1000 (1650); credits: s1 600, s2 1050.
        self.cycle1 = core.close_cycle(network=NETWORK).cycle_id
        self.clock.advance(11)
        assert core.tick()["resolved"] == 1
        core.pay_net_debit(self.cycle1, self.a.address)  # 400, in full
        core.pay_net_debit(self.cycle1, self.b.address, 100)  # 100 of 250
        # collected 500: s1's share floor(600 × 500 / 1650) = 181
        assert core.claim_net_credit(self.cycle1, self.s1) == 181

    def pay(self, buyer: TestBuyer, seller: str, amount: int, **kw: Any) -> str:
        return self.core.accept(*buyer.pay(self.core, seller, amount, **kw)).guarantee_id

    def finish(self) -> None:
        """Finalise cycle 1 (b: 150 covered; c: 600 covered, 400 short), then a second cycle."""
        self.clock.advance(21)
        assert self.core.tick()["finalized"] == 1
        self.pay(self.a, self.s1, 40)
        self.cycle2 = self.core.close_cycle(network=NETWORK).cycle_id
        self.other = self.core.close_cycle(network=NETWORK, asset=OTHER).cycle_id


@pytest.fixture
def scenario(store_url: str) -> Iterator[Scenario]:
    s = Scenario(store_url)
    yield s
    assert s.core.audit() == []
    s.core.close()


def test_a_resolved_cycle_shares_what_it_collected_so_far(scenario: Scenario) -> None:
    by_seller = {x.seller: x for x in scenario.core.signals().sellers if x.asset == USDC}
    # s1 took its 181 already; s2 could take floor(1050 × 500 / 1650) = 318
    assert by_seller[scenario.s1].claimable == 0
    assert by_seller[scenario.s2].claimable == 318
    [usdc] = scenario.core.signals().assets  # the other asset has no closed cycle yet
    assert usdc.asset == USDC
    # resolved, not final: no verdict on its debits yet
    assert (usdc.cycles, usdc.net_debit, usdc.defaulted, usdc.paid_ratio) == (1, 0, 0, None)
    assert usdc.unclaimed == 500 - 181


def test_signals_per_seller_asset_and_cycle(scenario: Scenario) -> None:
    scenario.finish()
    core, s1, s2 = scenario.core, scenario.s1, scenario.s2
    got = core.signals(cycles=10)
    # Final collected: 400 + 100 paid, 150 + 600 covered = 1250. Shares: s1 floor(600 × 1250
    # / 1650) = 454, less the 181 claimed = 273; s2 floor(1050 × 1250 / 1650) = 795.
    assert sorted(got.sellers, key=lambda x: (x.asset, x.seller)) == sorted(
        [
            SellerSignals(NETWORK, USDC, s1, 4, 640, 2, 2, 3, 4, 273),
            SellerSignals(NETWORK, USDC, s2, 3, 1120, 3, 1, 2, 2, 795),
            SellerSignals(NETWORK, OTHER, s1, 1, 999, 1, 1, 1, 1, 0),
        ],
        key=lambda x: (x.asset, x.seller),
    )
    by_seller = {(x.asset, x.seller): x for x in got.sellers}
    first, second = by_seller[(USDC, s1)], by_seller[(USDC, s2)]
    assert (first.average_payment, first.guarantees_per_payer, first.guarantees_per_cycle) == (
        160,
        2.0,
        2.0,
    )
    assert (second.average_payment, second.guarantees_per_payer) == (373, 1.0)  # 1120 // 3
    usdc = next(a for a in got.assets if a.asset == USDC)
    assert usdc == AssetSignals(NETWORK, USDC, 2, 6, 1690, 1069, 1650, 500, 750, 400, 2, 1150)
    assert usdc.paid_ratio == 500 / 1650
    assert usdc.net_debit == usdc.paid + usdc.covered + usdc.shortfall
    # What is left to claim, but for the one unit of rounding dust pro rata leaves behind.
    assert usdc.unclaimed - sum(x.claimable for x in got.sellers if x.asset == USDC) == 1
    assert next(a for a in got.assets if a.asset == OTHER) == AssetSignals(
        NETWORK, OTHER, 1, 1, 999, 0
    )
    closed_at = START + 11 + 21
    assert got.cycles == [
        CycleSignals(
            scenario.cycle1, NETWORK, USDC, "final", START, 5, 1650, 5, 1650, 1250, 2, 1150
        ),
        CycleSignals(scenario.cycle2, NETWORK, USDC, "closed", closed_at, 1, 40, 2, 40, 0, 0, 0),
        CycleSignals(scenario.other, NETWORK, OTHER, "closed", closed_at, 1, 999, 2, 999, 0, 0, 0),
    ]  # ordered by (network, asset, cycle): USDC's address sorts first
    assert [c.average_payment for c in got.cycles if c.asset == USDC] == [330, 40]
    # The last one closed cycle of each asset; none unless asked for.
    assert {c.cycle_id for c in core.signals(cycles=1).cycles} == {scenario.cycle2, scenario.other}
    assert core.signals().cycles == []


def test_the_reads_are_aggregates(scenario: Scenario) -> None:
    """Two hundred more guarantees change the values, not the rows the reads bring back."""
    for _ in range(200):
        scenario.pay(scenario.a, scenario.s1, 1)
    scenario.finish()
    sizes: list[int] = []

    class Spy:
        def __init__(self, tx: Any) -> None:
            self.tx = tx

        def all(self, sql: str, params: Any = ()) -> list[Any]:
            rows = self.tx.all(sql, params)
            sizes.append(len(rows))
            return list(rows)

    with scenario.core.store.transaction(write=False) as tx:
        got = core_signals.read(Spy(tx), cycles=10)  # type: ignore[arg-type]
    assert max(sizes) <= 3, sizes  # one row per seller, asset or cycle
    assert (
        next(x for x in got.sellers if x.asset == USDC and x.seller == scenario.s1).guarantees
        == 204
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_prometheus_exposition_of_the_scenario(scenario: Scenario) -> None:
    pytest.importorskip("prometheus_client")
    from fourmica_x402.signals import RefusalCounter, exposition

    scenario.finish()
    refusals = RefusalCounter()
    refusals(None, MalformedPayment("bad header"))
    got = _samples(exposition(scenario.core, [refusals]).decode())

    def seller(name: str, who: str, asset: str = USDC) -> float:
        return got[(name, (("asset", asset), ("network", NETWORK), ("seller", who)))]

    def asset(name: str, **more: str) -> float:
        labels = sorted({"asset": USDC, "network": NETWORK, **more}.items())
        return got[(name, tuple(labels))]

    s1, s2 = scenario.s1, scenario.s2
    assert seller("fourmica_seller_guarantees_accepted_total", s1) == 4
    assert seller("fourmica_seller_guarantees_accepted_total", s1, OTHER) == 1
    assert seller("fourmica_payment_amount_atomic_count", s2) == 3
    assert seller("fourmica_payment_amount_atomic_sum", s2) == 1120
    assert seller("fourmica_payment_amount_average_atomic", s2) == 373
    assert seller("fourmica_payers", s2) == 3
    assert seller("fourmica_guarantees_per_payer", s1) == 2
    assert seller("fourmica_guarantees_per_cycle", s1) == 2
    assert seller("fourmica_cycle_guarantees_per_payer_count", s1) == 3
    assert seller("fourmica_cycle_guarantees_per_payer_sum", s1) == 4
    assert seller("fourmica_claimable_atomic", s1) == 273
    assert seller("fourmica_claimable_atomic", s2) == 795
    assert asset("fourmica_cycles_closed_total") == 2
    assert asset("fourmica_cycle_guarantees_total") == 6
    assert asset("fourmica_cycle_gross_atomic_total") == 1690
    assert asset("fourmica_net_debit_paid_ratio") == pytest.approx(500 / 1650)
    assert asset("fourmica_defaulted_positions_total") == 2
    assert asset("fourmica_defaulted_atomic_total") == 1150
    assert asset("fourmica_cycle_unclaimed_atomic") == 1069
    debits = {
        o: asset("fourmica_net_debit_atomic_total", outcome=o)
        for o in ("paid", "covered", "shortfall")
    }
    assert debits == {"paid": 500, "covered": 750, "shortfall": 400}
    # no final cycle with a debit in the other asset: no success rate to report
    assert not [
        k for k in got if k[0] == "fourmica_net_debit_paid_ratio" and ("asset", OTHER) in k[1]
    ]
    assert got[("fourmica_invalid_payments_total", (("reason", "malformed_payment"),))] == 1


def test_the_refusal_counter_chains_the_sellers_hook_and_bounds_its_reasons() -> None:
    pytest.importorskip("prometheus_client")
    from fourmica_x402.signals import RefusalCounter

    seen: list[str] = []
    counter = RefusalCounter(lambda request, error: seen.append(request) or "theirs", max_reasons=2)
    assert counter("r1", MalformedPayment("x")) == "theirs"
    counter("r2", MalformedPayment("x"))
    counter("r3", ValueError("no reason at all"))
    counter("r4", type("E", (), {"reason": "brand_new"})())  # a third reason: counted as other
    assert counter.counts() == {"malformed_payment": 2, "unknown": 1, "other": 1}
    assert seen == ["r1", "r2", "r3", "r4"]
