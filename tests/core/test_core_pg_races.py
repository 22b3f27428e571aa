"""PostgreSQL races between Cores of several processes (here: threads, one Core and one
connection each), where READ COMMITTED lets one statement see what another missed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from typing import Any

import pytest

from fourmica_x402.core import Core, CoreConfig, Expected
from fourmica_x402.errors import CoreError, GuaranteeRejected
from fourmica_x402.testing import NETWORK, FakeClock, ShiftedClock, TestBuyer, test_policy

pytestmark = pytest.mark.postgres
_CONFIG = CoreConfig(validation_timeout=1.0)


def _race(url: str, *jobs: Callable[[Core], None]) -> list[str]:
    """Run each job in its own thread with its own Core; the exceptions they raised."""
    failures: list[str] = []
    lock, ready = threading.Lock(), threading.Barrier(len(jobs))

    def run(job: Callable[[Core], None]) -> None:
        core = Core(url)
        try:
            ready.wait(30)
            job(core)
        except Exception as exc:
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            core.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return failures


def test_a_factor_change_racing_first_deposits_recomputes_every_new_position(
    postgres_url: str,
) -> None:
    """A deposit that creates a position read the factor before a change committed, and the
    change's update did not see the new row: the position kept the old credit limit, and its
    buyer could lock twice what the new factor allows."""
    Core(postgres_url).close()  # the schema, before the race
    stop = threading.Event()

    def depositor(core: Core) -> None:
        while not stop.is_set():
            core.deposit(TestBuyer.new().address, 1_000_000, network=NETWORK)

    def changer(core: Core) -> None:
        try:
            for i in range(60):
                core.set_factor(NETWORK, None, Fraction(1, 2) if i % 2 else 1)
        finally:
            stop.set()

    assert _race(postgres_url, depositor, depositor, depositor, changer) == []
    core = Core(postgres_url)
    positions = core.positions(network=NETWORK)
    assert len(positions) > 60
    assert [p for p in positions if p.credit_limit != p.collateral // 2] == []
    assert core.audit() == []
    core.close()


def _pending(url: str, count: int) -> tuple[TestBuyer, str, list[str]]:
    """``count`` G-v2 guarantees of one buyer to one seller, waiting for their score."""
    core = Core(url, config=_CONFIG)
    buyer, seller = TestBuyer.new(), TestBuyer.new().address
    core.deposit(buyer.address, 10**9, network=NETWORK)
    ids = [
        core.accept(*buyer.pay(core, seller, 10, policy=test_policy())).guarantee_id
        for _ in range(count)
    ]
    core.close()
    return buyer, seller, ids


def _core(url: str, ahead: float) -> Core:
    clock = ShiftedClock()
    clock.advance(ahead)
    return Core(url, config=_CONFIG, clock=clock)


def test_an_extension_racing_the_expiry_stands(postgres_url: str) -> None:
    """The expiry picked the guarantees past their deadline, then cancelled each one without
    looking at the deadline again: a validator's extension that committed in between was
    reported done and then cancelled anyway (its score refused later)."""
    _, _, ids = _pending(postgres_url, 200)
    validator = test_policy().validator
    extended: list[int] = []
    # The ticker's clock 1.2 s on (every deadline passed); the validator's 0.8 s on (none
    # passed): it holds them open until 1.8 s on, after the ticker's now.
    ticker, holder = _core(postgres_url, 1.2), _core(postgres_url, 0.8)
    try:
        failures = _race(
            postgres_url,
            lambda _: ticker.tick(),
            lambda _: extended.append(holder.extend_validations(ids, by=validator)),
        )
    finally:
        ticker.close(), holder.close()
    assert failures == []
    core = Core(postgres_url, config=_CONFIG)
    states = Counter(core.guarantee(gid).state for gid in ids)
    # what the validator was told it extended is still open; the rest expired
    assert states["pending_validation"] == extended[0]
    assert states["cancelled"] == len(ids) - extended[0]
    assert core.audit() == []
    core.close()


def test_an_expiry_racing_the_sellers_voids_does_not_deadlock(postgres_url: str) -> None:
    """The expiry held the buyer's position from its first guarantee on while it went on to
    lock the next ones; a void locks its guarantee, then the position: PostgreSQL killed one
    of them (a refund or the whole tick answered 503)."""
    buyer, seller, ids = _pending(postgres_url, 150)
    ticker = _core(postgres_url, 1.2)
    outcomes: Counter[str] = Counter()

    def voids(core: Core) -> None:
        for gid in reversed(ids):
            try:
                core.void(gid, by=seller)
                outcomes["voided"] += 1
            except CoreError as exc:  # cancelled by the expiry first
                outcomes[exc.reason] += 1

    try:
        failures = _race(postgres_url, lambda _: ticker.tick(), voids)
    finally:
        ticker.close()
    assert failures == []
    assert outcomes["voided"] + outcomes["invalid_state"] == len(ids), outcomes
    core = Core(postgres_url, config=_CONFIG)
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert core.audit() == []
    core.close()


def test_two_acceptances_filling_one_tab_at_once_refuse_the_second_cleanly(
    postgres_url: str,
) -> None:
    """Each acceptance checked the tab's running total before the other committed; the
    second's sum overflowed the BIGINT (a raw database error, a 500) instead of
    ``tab_total_exceeded``, and the full tab was not retired."""
    core = Core(postgres_url)
    buyer, seller = TestBuyer.new(), TestBuyer.new().address
    core.deposit(buyer.address, 2**63 - 1, network=NETWORK)
    first = core.accept(*buyer.pay(core, seller, 2**62 - 1))
    core.void(first.guarantee_id, by=seller)  # the tab's total stays 2**62 - 1
    tab = core.open_tab(buyer.address, seller, network=NETWORK)
    assert tab.tab_id == first.tab_id
    payments = []
    for amount, req_id in ((2**62, tab.next_req_id), (2**62 - 1, tab.next_req_id + 1)):
        claims = buyer.claims(tab, amount, req_id=req_id, timestamp=int(core.clock()))
        expected = Expected(network=NETWORK, pay_to=seller, asset=tab.asset_address, amount=amount)
        payments.append((buyer.sign(claims, chain_id=84532), expected))
    outcomes: list[str] = []

    def payer(payment: tuple[Any, Expected]) -> Callable[[Core], None]:
        def pay(own: Core) -> None:
            try:
                own.accept(*payment)
                outcomes.append("accepted")
            except GuaranteeRejected as exc:
                outcomes.append(exc.reason)

        return pay

    assert _race(postgres_url, *(payer(p) for p in payments)) == []
    assert sorted(outcomes) == ["accepted", "tab_total_exceeded"]
    assert core.open_tab(buyer.address, seller, network=NETWORK).tab_id != tab.tab_id  # retired
    assert core.audit() == []
    core.close()


def test_an_audit_under_load_sees_one_state(postgres_url: str) -> None:
    """Each of the audit's statements read its own snapshot (READ COMMITTED): deposits
    committing in between made it report money not conserved that always was."""
    Core(postgres_url).close()
    stop = threading.Event()
    found: list[list[str]] = []

    def depositor(core: Core) -> None:
        buyers = [TestBuyer.new().address for _ in range(5)]
        for i in range(100_000):
            if stop.is_set():
                return
            core.deposit(buyers[i % 5], 7, network=NETWORK)

    def auditor(core: Core) -> None:
        try:
            for _ in range(150):
                found.append(core.audit())
        finally:
            stop.set()

    assert _race(postgres_url, depositor, depositor, auditor) == []
    assert len(found) == 150 and [problems for problems in found if problems] == []


@pytest.mark.parametrize("ordered", [True, False], ids=["by-payer", "unordered"])
def test_queued_voids_of_several_cores_over_the_same_buyers_all_commit(
    postgres_url: str, ordered: bool
) -> None:
    """Each Core commits its queued completions (a gate's refunds and scores) as one batch.
    Batches of different processes locked the buyers' positions in opposite orders and
    deadlocked: PostgreSQL's victim was a batch, whose voids failed with a raw driver error
    (refunds left to the reconciler), or an acceptance caught in the cycle, refused (a 503
    for a valid payment). A batch takes its jobs by payer now (the gate names it), and a
    transaction that lost the race runs again, unordered jobs included."""
    import random

    setup = Core(postgres_url)
    buyers = [TestBuyer.new() for _ in range(6)]
    for buyer in buyers:
        setup.deposit(buyer.address, 10**9, network=NETWORK)
    seller = TestBuyer.new().address
    setup.close()
    failed: list[str] = []

    def worker(seed: int) -> Callable[[Core], None]:
        def run(core: Core) -> None:
            rnd = random.Random(seed)
            for _ in range(8):
                order = rnd.sample(buyers, len(buyers))
                accepted = [core.accept(*buyer.pay(core, seller, 1)) for buyer in order]
                rnd.shuffle(accepted)
                for one in accepted:
                    core.resolve_later(
                        one.guarantee_id,
                        by=seller,
                        score=None,
                        failed=lambda exc: failed.append(f"{type(exc).__name__}: {exc}"),
                        payer=one.payer if ordered else "",
                    )
                core.store.deferred.drain()

        return run

    assert _race(postgres_url, worker(1), worker(2), worker(3)) == []
    assert failed == []
    core = Core(postgres_url)
    try:
        assert [core.position(b.address, network=NETWORK).locked for b in buyers] == [0] * 6
        assert len(core.guarantees(state="voided", limit=1000)) == 3 * 8 * 6
        assert core.audit() == []
    finally:
        core.close()


def test_a_factor_change_made_a_deadlocks_victim_runs_again(postgres_url: str) -> None:
    """A factor change locks every position of the asset, in no set order: a change that
    locks several of them (here another connection) can deadlock with it. The change was
    not run again, so the operator's `factor` failed with a store error."""
    import psycopg

    core = Core(postgres_url)
    first, second = TestBuyer.new().address, TestBuyer.new().address
    for address in (first, second):
        core.deposit(address, 1_000, network=NETWORK)
    lock = "UPDATE fx_positions SET locked = locked WHERE address = %s"
    failures: list[str] = []

    def change() -> None:
        try:
            core.set_factor(NETWORK, None, "1/2")  # locks the first, waits for the second
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    with psycopg.connect(postgres_url) as other:
        other.execute(lock, (second,))
        thread = threading.Thread(target=change)
        thread.start()
        thread.join(0.3)
        other.execute(lock, (first,))  # waits for the change, which waited first: its victim
    thread.join(30)
    assert failures == []
    assert [p.credit_limit for p in core.positions(network=NETWORK)] == [500, 500]
    assert core.audit() == []
    core.close()


def test_a_withdrawals_cancel_made_a_deadlocks_victim_runs_again(postgres_url: str) -> None:
    """A cancel locks the withdrawal, then the position: a change taking them the other way
    round can deadlock with it. Unlike the other changes it was not run again: the buyer's
    cancel failed with a store error (503) and the withdrawal stayed pending."""
    import psycopg

    core = Core(postgres_url)
    buyer = TestBuyer.new().address
    core.deposit(buyer, 1_000, network=NETWORK)
    pending = core.request_withdrawal(buyer, 400, network=NETWORK)
    failures: list[str] = []

    def cancel() -> None:
        try:
            core.cancel_withdrawal(pending.withdrawal_id)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    with psycopg.connect(postgres_url) as other:
        other.execute("UPDATE fx_positions SET locked = locked WHERE address = %s", (buyer,))
        thread = threading.Thread(target=cancel)
        thread.start()
        thread.join(0.3)  # the cancel holds the withdrawal and waits for the position
        other.execute(
            "UPDATE fx_withdrawals SET amount = amount WHERE withdrawal_id = %s",
            (pending.withdrawal_id,),
        )  # waits for the cancel, which waited first: its victim
    thread.join(30)
    assert failures == []
    assert core.withdrawal(pending.withdrawal_id).status == "cancelled"
    assert core.position(buyer, network=NETWORK).pending_withdrawal == 0
    assert core.audit() == []
    core.close()


def test_an_expiry_racing_the_validators_scores_in_the_other_order_does_not_deadlock(
    postgres_url: str,
) -> None:
    """The expiry takes the due guarantees in id order and their positions after; a validator
    scores the same guarantees newest first, each locking its guarantee, then its position (a
    low score) or its cycle's pair (a high one): neither may be killed as a deadlock victim."""
    buyer, _, ids = _pending(postgres_url, 150)
    validator = test_policy().validator
    # the ticker's clock is past every deadline, the validator's before them: both act
    ticker, scorer = _core(postgres_url, 1.2), _core(postgres_url, 0.8)
    outcomes: Counter[str] = Counter()

    def scores(_: Core) -> None:
        for n, gid in enumerate(sorted(ids, reverse=True)):
            try:
                scorer.post_validation(gid, validator=validator, score=100 if n % 2 else 0)
                outcomes["scored"] += 1
            except CoreError as exc:  # cancelled by the expiry first
                outcomes[exc.reason] += 1

    try:
        failures = _race(postgres_url, lambda _: ticker.tick(), scores)
    finally:
        ticker.close(), scorer.close()
    assert failures == []
    refused = outcomes["invalid_state"] + outcomes["validation_expired"]  # its clock moves on
    assert outcomes["scored"] + refused == len(ids), outcomes
    core = Core(postgres_url, config=_CONFIG)
    assert core.audit() == []
    payable = sum(core.guarantee(gid).state == "payable" for gid in ids)
    assert core.position(buyer.address, network=NETWORK).locked == 10 * payable
    core.close()


def test_a_tabs_first_guarantee_signed_early_racing_another_keeps_both_in_its_window(
    postgres_url: str,
) -> None:
    """A first guarantee signed up to the clock skew before its tab moves the tab's start (and
    end) back. Two first guarantees checked the tab before either committed: the early one
    moved the end back past the other's timestamp, signed near the old end, and both stood (a
    guarantee outside its tab). Whichever locks the buyer's position second is checked again
    on the tab as it is then."""
    import psycopg

    opened = Core(postgres_url, clock=FakeClock(1_000_000))
    buyer, seller = TestBuyer.new(), TestBuyer.new().address
    opened.deposit(buyer.address, 10**6, network=NETWORK)
    signed, expected = buyer.pay(opened, seller, 100)
    start, ttl = 1_000_000, opened.config.tab_ttl
    opened.close()
    now = start + ttl - 6  # the early one still ends after now, the late one is not ahead
    early = buyer.sign(replace(signed.claims, req_id=1, timestamp=start - 5))
    late = buyer.sign(replace(signed.claims, req_id=2, timestamp=start + ttl - 2))
    with psycopg.connect(postgres_url) as holder:  # both check the tab, then wait here
        held = holder.execute(
            "SELECT 1 FROM fx_positions WHERE address = %s FOR UPDATE", (buyer.address,)
        ).fetchall()
        assert held
        results: dict[int, str] = {}
        racers = [
            threading.Thread(target=_accept, args=(postgres_url, now, g, expected, results))
            for g in (early, late)
        ]
        for racer in racers:
            racer.start()
        time.sleep(1.5)
        holder.rollback()
        for racer in racers:
            racer.join(30)
    assert sorted(results.values()) == ["accepted", "timestamp_outside_tab"], results
    core = Core(postgres_url)
    tab = core.tab(signed.claims.tab_id)
    assert tab is not None
    for guarantee in (early, late):
        if results[guarantee.claims.req_id] == "accepted":
            ts = guarantee.claims.timestamp
            assert tab.start_timestamp <= ts <= tab.start_timestamp + tab.ttl_seconds
    assert core.audit() == []
    core.close()


def _accept(url: str, now: float, signed: Any, expected: Expected, out: dict[int, str]) -> None:
    core = Core(url, clock=FakeClock(now))
    try:
        core.accept(signed, expected)
        out[signed.claims.req_id] = "accepted"
    except GuaranteeRejected as exc:
        out[signed.claims.req_id] = str(exc.reason)
    finally:
        core.close()


def test_a_guarantee_after_its_tabs_end_moved_back_by_a_racing_first_one_is_refused(
    postgres_url: str,
) -> None:
    """The first guarantee, signed early, moved the tab's end back; another one checked the
    tab before that committed, at a moment past the new end, and was accepted on a tab that
    had ended (``tab_expired`` is decided on the tab as locked too)."""
    import psycopg

    opened = Core(postgres_url, clock=FakeClock(1_000_000))
    buyer, seller = TestBuyer.new(), TestBuyer.new().address
    opened.deposit(buyer.address, 10**6, network=NETWORK)
    signed, expected = buyer.pay(opened, seller, 100)
    start, ttl = 1_000_000, opened.config.tab_ttl
    opened.close()
    early = buyer.sign(replace(signed.claims, req_id=1, timestamp=start - 5))
    late = buyer.sign(replace(signed.claims, req_id=2, timestamp=start + ttl - 6))
    results: dict[int, str] = {}
    with psycopg.connect(postgres_url) as holder:  # both check the tab, then wait in turn
        assert holder.execute(
            "SELECT 1 FROM fx_positions WHERE address = %s FOR UPDATE", (buyer.address,)
        ).fetchall()
        racers = []
        for guarantee, now in ((early, start + ttl - 6), (late, start + ttl - 4)):
            racers.append(
                threading.Thread(
                    target=_accept, args=(postgres_url, now, guarantee, expected, results)
                )
            )
            racers[-1].start()
            time.sleep(0.75)  # the early one queues for the row first
        holder.rollback()
        for racer in racers:
            racer.join(30)
    assert results == {1: "accepted", 2: "tab_expired"}, results
