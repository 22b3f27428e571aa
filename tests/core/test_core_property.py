"""Random sequences of Core operations keep every invariant (hypothesis state machine).

Deposits, guarantees (G-v1 and G-v2), voids, validations, cycle closes, time
passing, debit payments, credit claims and withdrawals, in any order. After
every step: money is conserved, every lock is explained, Σ debits = Σ credits
per cycle, no lock is negative and no capacity is exceeded.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fourmica_x402.core import Core, CoreConfig, Cycle, CyclePosition
from fourmica_x402.errors import CoreError, GuaranteeRejected
from fourmica_x402.testing import NETWORK, TEST_KEYS, FakeClock, TestBuyer, test_policy

CONFIG = CoreConfig(
    cycle_window=1_000,
    resolution_delay=5,
    payment_window=30,
    finality=10,
    withdrawal_grace=20,
    validation_timeout=30,
)
PEOPLE = [TestBuyer.from_key(key) for key in TEST_KEYS[:4]]  # fixed: draws must be repeatable
POLICY = test_policy()
#: Event types seen across every run: the test asserts the machine really reached them all.
SEEN: collections.Counter[str] = collections.Counter()
MUST_SEE = (
    "guarantee.accepted",
    "guarantee.voided",
    "guarantee.validated",
    "guarantee.cancelled",
    "cycle.closed",
    "cycle.resolved",
    "debit.paid",
    "credit.claimed",
    "position.defaulted",
    "withdrawal.requested",
    "withdrawal.finalized",
)


class CoreMachine(RuleBasedStateMachine):
    store_url: str | None = None  # set by the test for PostgreSQL runs

    @initialize()
    def start(self) -> None:
        self.dir = tempfile.mkdtemp()
        url = self.store_url or os.path.join(self.dir, "core.db")
        self.clock = FakeClock(1_800_000_000)
        self.core = Core(url, config=CONFIG, clock=self.clock)
        if self.store_url:  # a shared PostgreSQL database: start from empty tables
            with self.core.store.transaction() as tx:
                for table in (
                    "fx_guarantees",
                    "fx_tabs",
                    "fx_active_tabs",
                    "fx_positions",
                    "fx_flows",
                    "fx_events",
                    "fx_cycle_positions",
                    "fx_cycle_pairs",
                    "fx_seller_cycles",
                    "fx_cycles",
                    "fx_withdrawals",
                    "fx_participants",
                    "fx_asset_params",
                ):
                    tx.execute(f"DELETE FROM {table}")
        self.accepted: list[str] = []
        self.pending: list[str] = []
        self.withdrawals: list[int] = []
        self.positions: dict[int, tuple[Cycle, list[CyclePosition]]] = {}
        for who in PEOPLE:
            self.core.deposit(who.address, 400, network=NETWORK)

    def teardown(self) -> None:
        SEEN.update(e.type for e in self.core.events(limit=100_000))
        self.core.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(who=st.sampled_from(PEOPLE), amount=st.integers(1, 500))
    def deposit(self, who: TestBuyer, amount: int) -> None:
        self.core.deposit(who.address, amount, network=NETWORK)

    @rule(
        payer=st.sampled_from(PEOPLE),
        payee=st.sampled_from(PEOPLE),
        amount=st.integers(1, 300),
        v2=st.booleans(),
    )
    def guarantee(self, payer: TestBuyer, payee: TestBuyer, amount: int, v2: bool) -> None:
        before = self.core.position(payer.address, network=NETWORK)
        try:
            accepted = self.core.accept(
                *payer.pay(self.core, payee.address, amount, policy=POLICY if v2 else None)
            )
        except GuaranteeRejected as exc:
            assert exc.reason == "insufficient_collateral"
            assert before.capacity < amount
            return
        assert before.capacity >= amount
        (self.pending if v2 else self.accepted).append(accepted.guarantee_id)

    @precondition(lambda self: self.accepted or self.pending)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        gid = data.draw(st.sampled_from(self.accepted + self.pending))
        record = self.core.guarantee(gid)
        try:
            self.core.void(gid, by=record.recipient_address)
        except CoreError as exc:
            assert exc.reason == "invalid_state"

    @precondition(lambda self: self.pending)
    # Scores around the policy's minimum (80) are drawn often: with integers alone, a run in a
    # full suite once never passed it and never reached guarantee.validated.
    @rule(data=st.data(), score=st.one_of(st.sampled_from([100, 80, 79]), st.integers(0, 100)))
    def validate(self, data: st.DataObject, score: int) -> None:
        gid = data.draw(st.sampled_from(self.pending))
        try:
            self.core.post_validation(gid, validator=POLICY.validator, score=score)
        except CoreError as exc:
            assert exc.reason == "invalid_state"

    @rule()
    def close_cycle(self) -> None:
        self.core.close_cycle(network=NETWORK)

    @rule(seconds=st.sampled_from([1, 6, 11, 25, 45]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.core.tick()

    def _cycles(self) -> list[tuple[Cycle, list[CyclePosition]]]:
        """Every cycle with its positions, as of now. A position changes only with its cycle's
        row (status, collected, claimed move with every write to it), so positions are read
        again only for a cycle whose row changed: the long runs stay linear in their steps."""
        out = []
        for c in self.core.cycles():
            seen = self.positions.get(c.cycle_id)
            if seen is None or seen[0] != c:
                seen = self.positions[c.cycle_id] = (c, self.core.cycle_positions(c.cycle_id))
            out.append(seen)
        return out

    def _debts(self) -> list[tuple[int, str]]:
        return [
            (c.cycle_id, p.address)
            for c, positions in self._cycles()
            if c.status == "resolved"
            for p in positions
            if p.role == "debtor" and p.paid < p.debit
        ]

    def _credits(self) -> list[tuple[int, str]]:
        return [
            (c.cycle_id, p.address)
            for c, positions in self._cycles()
            if c.status in ("resolved", "final") and c.collected > c.claimed
            for p in positions
            if p.role == "creditor"
        ]

    @precondition(lambda self: self._debts())
    @rule(data=st.data())
    def pay_debit(self, data: st.DataObject) -> None:
        cycle_id, address = data.draw(st.sampled_from(self._debts()))
        self.core.pay_net_debit(cycle_id, address)

    @precondition(lambda self: self._credits())
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        self.core.claim_net_credit(*data.draw(st.sampled_from(self._credits())))

    @rule(who=st.sampled_from(PEOPLE), amount=st.integers(1, 400))
    def request_withdrawal(self, who: TestBuyer, amount: int) -> None:
        try:
            self.withdrawals.append(
                self.core.request_withdrawal(who.address, amount, network=NETWORK).withdrawal_id
            )
        except CoreError as exc:
            assert exc.reason == "insufficient_collateral"

    @precondition(lambda self: self.withdrawals)
    @rule(data=st.data(), cancel=st.booleans())
    def end_withdrawal(self, data: st.DataObject, cancel: bool) -> None:
        wid = data.draw(st.sampled_from(self.withdrawals))
        try:
            if cancel:
                self.core.cancel_withdrawal(wid)
            else:
                self.core.finalize_withdrawal(wid)
        except CoreError as exc:
            assert exc.reason in ("invalid_state", "withdrawal_not_ready", "withdrawal_unsafe")

    @invariant()
    def consistent(self) -> None:
        assert self.core.audit() == []
        for p in self.core.positions():
            assert p.locked >= 0 and p.pending_withdrawal >= 0
            assert p.locked + p.pending_withdrawal <= p.credit_limit, p  # capacity never exceeded
        for c, positions in self._cycles():
            assert sum(p.debit for p in positions) == sum(p.credit for p in positions)
            assert c.claimed <= c.collected


def test_core_invariants_hold_under_random_operations() -> None:
    SEEN.clear()
    # Derandomized first. The Core's answers still vary with the process (hash order, random
    # tab ids), so a rare state (a claim after a paid debit) may be missed by that run alone:
    # then up to seven more runs with fresh seeds must reach it (three missed a paid debit
    # once in CI; each run is a few seconds, made only while something is missing).
    for attempt in range(8):
        run_state_machine_as_test(
            CoreMachine,
            settings=settings(
                max_examples=150,
                stateful_step_count=40,
                deadline=None,
                derandomize=attempt == 0,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
        missing = [t for t in MUST_SEE if not SEEN[t]]
        if not missing:
            break
    assert not missing, f"the random runs never reached {missing}: {dict(SEEN)}"


@pytest.mark.postgres
def test_core_invariants_hold_on_postgres(postgres_url: str) -> None:
    class OnPostgres(CoreMachine):
        store_url = postgres_url

    run_state_machine_as_test(
        OnPostgres,
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def _many_operations(machine: type[CoreMachine]) -> None:
    """About 10⁵ random operations (500 runs of up to 200 steps), invariants after each."""
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=500,
            stateful_step_count=200,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.slow
def test_core_invariants_hold_over_a_hundred_thousand_operations() -> None:
    _many_operations(CoreMachine)


@pytest.mark.slow
@pytest.mark.postgres
def test_core_invariants_hold_over_a_hundred_thousand_operations_on_postgres(
    postgres_url: str,
) -> None:
    class OnPostgres(CoreMachine):
        store_url = postgres_url

    _many_operations(OnPostgres)
