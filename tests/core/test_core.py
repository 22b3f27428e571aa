"""The Core on real databases (SQLite file; PostgreSQL where available)."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from py_ecc.bls import G2Basic

from fourmica_x402.core import Core, CoreConfig, Expected
from fourmica_x402.errors import CoreError, GuaranteeRejected
from fourmica_x402.guarantee import certificate_message
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer, test_policy

USDC = default_asset(NETWORK).address
OTHER_ASSET = "0x" + "77" * 20
DAY = 86_400.0
FAST = CoreConfig(
    cycle_window=DAY,
    resolution_delay=10,
    payment_window=10,
    finality=10,
    withdrawal_grace=100,
    validation_timeout=60,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000)


@pytest.fixture
def core(store_url: str, clock: FakeClock) -> Iterator[Core]:
    c = Core(store_url, config=FAST, clock=clock)
    yield c
    assert c.audit() == []  # every test leaves a consistent database
    c.close()


@pytest.fixture
def buyer(core: Core) -> TestBuyer:
    b = TestBuyer.new()
    core.deposit(b.address, 1_000_000, network=NETWORK)
    return b


SELLER = TestBuyer.new().address


def reason(exc: pytest.ExceptionInfo[GuaranteeRejected]) -> str:
    return str(exc.value.reason)


# -- acceptance --------------------------------------------------------------------------------


def test_accept_locks_capacity_and_records(core: Core, buyer: TestBuyer) -> None:
    signed, expected = buyer.pay(core, SELLER, 10_000)
    accepted = core.accept(signed, expected)
    assert accepted.state == "payable" and accepted.total_amount == 10_000
    position = core.position(buyer.address, network=NETWORK)
    assert (position.locked, position.capacity) == (10_000, 990_000)
    record = core.guarantee(accepted.guarantee_id)
    assert (record.amount, record.user_address, record.recipient_address) == (
        10_000,
        buyer.address,
        SELLER,
    )
    assert [e.type for e in core.events()][-1] == "guarantee.accepted"


def test_running_total_counts_every_guarantee_of_the_tab(core: Core, buyer: TestBuyer) -> None:
    totals = [core.accept(*buyer.pay(core, SELLER, amount)).total_amount for amount in (5, 7, 11)]
    assert totals == [5, 12, 23]


def test_a_tab_whose_running_total_would_pass_64_bits_refuses_the_payment(
    core: Core, clock: FakeClock
) -> None:
    # The total only grows (a void does not take it back): refused with a reason, never a crash,
    # verify agrees with accept, and the tab endpoint hands out a new tab from then on.
    whale = TestBuyer.new()
    core.deposit(whale.address, 2**63 - 1, network=NETWORK)
    big = core.accept(*whale.pay(core, SELLER, 2**63 - 1))
    core.void(big.guarantee_id, by=SELLER)
    tab = core.tab(big.tab_id)
    assert tab is not None
    same_tab = whale.sign(whale.claims(tab, 10, req_id=big.req_id + 1, timestamp=int(clock())))
    fresh, expected = whale.pay(core, SELLER, 10)
    assert fresh.claims.tab_id != big.tab_id  # a new tab
    for check in (core.verify, core.accept):
        with pytest.raises(GuaranteeRejected) as info:
            check(same_tab, expected)
        assert reason(info) == "tab_total_exceeded"
    assert core.position(whale.address, network=NETWORK).locked == 0
    assert core.accept(fresh, expected).total_amount == 10


def test_a_tab_that_refused_a_payment_as_full_is_not_handed_out_again(core: Core) -> None:
    whale = TestBuyer.new()
    core.deposit(whale.address, 2**63 - 1, network=NETWORK)
    first = core.accept(*whale.pay(core, SELLER, 4 * 10**18))
    core.void(first.guarantee_id, by=SELLER)
    signed, expected = whale.pay(core, SELLER, 6 * 10**18)
    assert signed.claims.tab_id == first.tab_id  # its total (4e18) still leaves room in general
    with pytest.raises(GuaranteeRejected) as info:
        core.accept(signed, expected)
    assert reason(info) == "tab_total_exceeded"
    again, again_expected = whale.pay(core, SELLER, 6 * 10**18)  # the buyer asks for a tab
    assert again.claims.tab_id != first.tab_id
    assert core.accept(again, again_expected).total_amount == 6 * 10**18


def test_verify_checks_capacity_and_changes_nothing(core: Core, buyer: TestBuyer) -> None:
    signed, expected = buyer.pay(core, SELLER, 10_000)
    assert core.verify(signed, expected) == buyer.address
    assert core.position(buyer.address, network=NETWORK).locked == 0
    big, big_expected = buyer.pay(core, SELLER, 2_000_000)
    with pytest.raises(GuaranteeRejected) as info:
        core.verify(big, big_expected)
    assert reason(info) == "insufficient_collateral"
    core.accept(signed, expected)  # verify did not consume the request id


def test_replays_are_rejected_forever(core: Core, buyer: TestBuyer) -> None:
    signed, expected = buyer.pay(core, SELLER, 10_000)
    gid = core.accept(signed, expected).guarantee_id
    for step in ("again", "after void", "after netting"):
        with pytest.raises(GuaranteeRejected) as info:
            core.accept(signed, expected)
        assert reason(info) == "replayed_request_id", step
        if step == "again":
            core.void(gid, by=SELLER)
        elif step == "after void":
            core.close_cycle(network=NETWORK)
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_guarantee_for_nothing_is_refused(core: Core, buyer: TestBuyer) -> None:
    """Terms asking for 0 atomic units (a seller's, or another facilitator client's) with claims
    for 0 were accepted, locking nothing: the route ran as though paid."""
    signed, expected = buyer.pay(core, SELLER, 0)
    for check in (core.verify, core.accept):
        with pytest.raises(GuaranteeRejected) as info:
            check(signed, expected)
        assert reason(info) == "invalid_amount"
    assert core.position(buyer.address, network=NETWORK).locked == 0


def _rejection(core: Core, signed, expected) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(GuaranteeRejected) as info:
        core.accept(signed, expected)
    return reason(info)


def test_every_reason_code_is_reachable(core: Core, buyer: TestBuyer, clock: FakeClock) -> None:
    stranger = TestBuyer.new()
    now = int(clock())

    signed, expected = buyer.pay(core, SELLER, 100)
    forged = stranger.sign(signed.claims)
    assert _rejection(core, forged, expected) == "invalid_signature"

    signed, expected = buyer.pay(core, SELLER, 100)
    assert _rejection(core, signed, dataclasses.replace(expected, amount=101)) == "amount_mismatch"
    assert (
        _rejection(core, signed, dataclasses.replace(expected, pay_to=buyer.address))
        == "recipient_mismatch"
    )
    assert (
        _rejection(core, signed, dataclasses.replace(expected, asset=OTHER_ASSET))
        == "asset_mismatch"
    )
    other_chain = dataclasses.replace(expected, network="eip155:11155111")
    resigned = buyer.sign(signed.claims, chain_id=11155111)
    assert _rejection(core, resigned, other_chain) == "network_mismatch"
    assert (
        _rejection(core, signed, dataclasses.replace(expected, network="eip155:1"))
        == "network_mismatch"
    )

    assert (
        _rejection(core, *buyer.pay(core, SELLER, 100, timestamp=now + 60)) == "timestamp_in_future"
    )
    assert (
        _rejection(core, *buyer.pay(core, SELLER, 100, timestamp=now - 3600))
        == "timestamp_outside_tab"
    )
    assert _rejection(core, *buyer.pay(core, SELLER, 100, tab_id=12345)) == "unknown_tab"

    poor = TestBuyer.new()
    core.deposit(poor.address, 50, network=NETWORK)
    assert _rejection(core, *poor.pay(core, SELLER, 100)) == "insufficient_collateral"
    nobody = TestBuyer.new()
    assert _rejection(core, *nobody.pay(core, SELLER, 100)) == "insufficient_collateral"

    # A G-v1 tab cannot take G-v2 claims (and vice versa): the tab is bound to a version.
    v1_signed, v1_expected = buyer.pay(core, SELLER, 100)
    tab = core.tab(v1_signed.claims.tab_id)
    assert tab is not None
    v2_claims = buyer.claims(tab, 100, req_id=99, timestamp=now, policy=test_policy())
    v2_expected = dataclasses.replace(v1_expected, policy=test_policy())
    assert _rejection(core, buyer.sign(v2_claims), v2_expected) == "tab_mismatch"

    core.suspend(buyer.address)
    assert _rejection(core, *buyer.pay(core, SELLER, 100)) == "payer_suspended"
    core.suspend(buyer.address, False)
    core.accept(*buyer.pay(core, SELLER, 100))

    clock.advance(DAY + 1)
    assert _rejection(core, v1_signed, v1_expected) == "tab_expired"


def test_validation_policy_reasons(core: Core, buyer: TestBuyer) -> None:
    policy = test_policy()
    signed, expected = buyer.pay(core, SELLER, 100, policy=policy)
    # The seller asked for another policy: refuse (a buyer must not pick its own validator).
    other = dataclasses.replace(policy, validator=buyer.address)
    assert (
        _rejection(core, signed, dataclasses.replace(expected, policy=other))
        == "validation_policy_mismatch"
    )
    assert (
        _rejection(core, signed, dataclasses.replace(expected, policy=None))
        == "validation_policy_mismatch"
    )

    bad_hash = buyer.sign(dataclasses.replace(signed.claims, validation_request_hash=b"\x01" * 32))
    assert _rejection(core, bad_hash, expected) == "invalid_validation_policy"
    zero_score = buyer.sign(dataclasses.replace(signed.claims, min_validation_score=0))
    assert _rejection(core, zero_score, expected) == "invalid_validation_policy"

    untrusted = dataclasses.replace(policy, registry="0x" + "99" * 20)
    assert (
        _rejection(core, *buyer.pay(core, SELLER, 100, policy=untrusted))
        == "untrusted_validation_registry"
    )
    assert core.accept(signed, expected).state == "pending_validation"


def test_unsupported_version(store_url: str, clock: FakeClock) -> None:
    core = Core(store_url, config=dataclasses.replace(FAST, accepted_versions=(1,)), clock=clock)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1000, network=NETWORK)
    v1 = core.open_tab(buyer.address, SELLER, network=NETWORK, asset=USDC)
    claims = buyer.claims(v1, 100, timestamp=int(clock()), policy=test_policy())
    expected = Expected(NETWORK, SELLER, USDC, 100, test_policy())
    assert _rejection(core, buyer.sign(claims), expected) == "unsupported_version"
    with pytest.raises(GuaranteeRejected):
        core.open_tab(buyer.address, SELLER, network=NETWORK, guarantee_version=2)
    core.close()


def test_check_order_follows_the_spec(core: Core, buyer: TestBuyer, clock: FakeClock) -> None:
    # Signature (step 2) is checked before the tab (step 6) and capacity (step 8).
    signed, expected = buyer.pay(core, SELLER, 5_000_000, tab_id=42)
    assert _rejection(core, TestBuyer.new().sign(signed.claims), expected) == "invalid_signature"
    # Replay (step 4) before timestamp (5) and capacity (8).
    ok, ok_expected = buyer.pay(core, SELLER, 100)
    core.accept(ok, ok_expected)
    clock.advance(DAY + 5)
    assert _rejection(core, ok, ok_expected) == "replayed_request_id"


# -- tabs --------------------------------------------------------------------------------------


def test_one_active_tab_per_identity_and_request_ids_increase(core: Core, clock: FakeClock) -> None:
    user = TestBuyer.new().address
    ids = [core.open_tab(user, SELLER, network=NETWORK) for _ in range(3)]
    assert len({t.tab_id for t in ids}) == 1
    assert [t.next_req_id for t in ids] == [0, 1, 2]
    v2 = core.open_tab(user, SELLER, network=NETWORK, guarantee_version=2)
    other_asset = core.open_tab(user, SELLER, network=NETWORK, asset=OTHER_ASSET)
    assert len({ids[0].tab_id, v2.tab_id, other_asset.tab_id}) == 3
    clock.advance(DAY + 1)
    fresh = core.open_tab(user, SELLER, network=NETWORK)
    assert fresh.tab_id != ids[0].tab_id and fresh.next_req_id == 0
    assert fresh.ttl_seconds == 86_400 and fresh.to_json()["nextReqId"] == "0x0"


def test_a_tab_past_its_end_by_a_fraction_of_a_second_is_not_handed_out(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """Acceptance reads the clock to the fraction of a second: the tab endpoint does too, or
    it hands out (for up to a second) a tab every payment on which is refused as expired."""
    first = core.open_tab(buyer.address, SELLER, network=NETWORK)
    clock.advance(DAY + 0.5)  # int(now) is still the tab's last second
    later = core.open_tab(buyer.address, SELLER, network=NETWORK)
    assert later.tab_id != first.tab_id and later.next_req_id == 0
    core.accept(*buyer.pay(core, SELLER, 100))


def test_a_tab_in_its_last_minutes_is_not_handed_out_again(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """A tab handed out in its last seconds took a guarantee signed then but accepted a little
    later (the request's trip, a settle-after seller's handler) as ``tab_expired``: the buyer
    had signed, the seller had worked. Near its end a new tab is opened instead."""
    first = core.open_tab(buyer.address, SELLER, network=NETWORK)
    clock.advance(DAY - 10)  # ten seconds left
    signed, expected = buyer.pay(core, SELLER, 100)
    clock.advance(30)  # the guarantee reaches the Core half a minute later
    core.accept(signed, expected)  # was refused: tab_expired
    assert signed.claims.tab_id != first.tab_id
    assert core.open_tab(buyer.address, SELLER, network=NETWORK).tab_id == signed.claims.tab_id
    # Up to the margin (300 s) before its end, the tab is still reused.
    early = core.open_tab(TestBuyer.new().address, SELLER, network=NETWORK)
    clock.advance(DAY - 301)
    assert core.open_tab(early.user_address, SELLER, network=NETWORK).tab_id == early.tab_id
    clock.advance(2)
    again = core.open_tab(early.user_address, SELLER, network=NETWORK)
    assert again.tab_id != early.tab_id and again.next_req_id == 0


def test_a_tab_starting_after_now_is_not_handed_out_once_the_clock_stepped_back(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """After the wall clock stepped back (NTP), the active tab started after now: every
    payment signed on it by the clock, as the buyer signs, was refused
    (``timestamp_outside_tab``, or ``timestamp_in_future`` signed at its start) until the clock
    caught up. A tab handed out starts no later than now: a new one is opened instead."""
    first = core.open_tab(buyer.address, SELLER, network=NETWORK)
    clock.advance(-30)
    signed, expected = buyer.pay(core, SELLER, 100)
    core.accept(signed, expected)  # was refused: timestamp_outside_tab
    assert signed.claims.tab_id != first.tab_id
    assert core.open_tab(buyer.address, SELLER, network=NETWORK).tab_id == signed.claims.tab_id


def test_a_tab_opens_at_its_first_guarantee_signed_by_a_clock_a_little_behind(
    core: Core, clock: FakeClock
) -> None:
    """A buyer whose clock is a second or two behind the Core's signs a timestamp before the
    tab the Core has just opened for it: the official buyer signs its own clock, and every first
    payment on a new tab was refused (``timestamp_outside_tab``). As 4Mica's Core does, a tab
    without a guarantee starts at its first guarantee's timestamp, here up to the clock skew
    earlier; later guarantees, and anything further back, are held to the window as before."""
    skew = core.config.max_clock_skew
    lagging = TestBuyer.new()
    core.deposit(lagging.address, 10_000, network=NETWORK)
    start = int(core.clock())
    first = lagging.pay(core, SELLER, 100, timestamp=start - 2)
    core.accept(*first)  # was refused: timestamp_outside_tab
    tab = core.open_tab(lagging.address, SELLER, network=NETWORK)
    assert (tab.tab_id, tab.start_timestamp) == (first[0].claims.tab_id, start - 2)
    # The tab has a guarantee now: its start no longer moves.
    assert _rejection(core, *lagging.pay(core, SELLER, 100, timestamp=start - 3)) == (
        "timestamp_outside_tab"
    )
    core.accept(*lagging.pay(core, SELLER, 100, timestamp=start - 2))
    # On a fresh tab, one second more than the skew is still outside it.
    other = TestBuyer.new()
    core.deposit(other.address, 10_000, network=NETWORK)
    clock.advance(1)
    late = int(core.clock())
    assert _rejection(core, *other.pay(core, SELLER, 100, timestamp=late - skew - 1)) == (
        "timestamp_outside_tab"
    )
    assert core.open_tab(other.address, SELLER, network=NETWORK).start_timestamp == late
    core.accept(*other.pay(core, SELLER, 100, timestamp=late - skew))
    assert core.open_tab(other.address, SELLER, network=NETWORK).start_timestamp == late - skew


def test_a_short_tab_is_reused_for_most_of_its_life(core: Core, clock: FakeClock) -> None:
    """The margin is at most a quarter of a tab's lifetime: a tab of a minute is reused for
    45 s, not replaced on every call (each new tab spends the buyer's budget of new tabs)."""
    user = TestBuyer.new().address
    tab = core.open_tab(user, SELLER, network=NETWORK, ttl_seconds=60)
    clock.advance(44)
    assert core.open_tab(user, SELLER, network=NETWORK, ttl_seconds=60).tab_id == tab.tab_id
    clock.advance(2)
    assert core.open_tab(user, SELLER, network=NETWORK, ttl_seconds=60).tab_id != tab.tab_id


def test_a_tab_lifetime_past_64_bits_is_a_clear_error(core: Core) -> None:
    with pytest.raises(CoreError) as info:
        core.open_tab(TestBuyer.new().address, SELLER, network=NETWORK, ttl_seconds=2**63)
    assert (info.value.reason, info.value.status) == ("invalid_ttl", 400)


# -- G-v2 validation, voids, certificates ------------------------------------------------------


def test_validation_makes_payable_or_cancels(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    policy = test_policy()
    good = core.accept(*buyer.pay(core, SELLER, 100, policy=policy))
    bad = core.accept(*buyer.pay(core, SELLER, 200, policy=policy))
    late = core.accept(*buyer.pay(core, SELLER, 300, policy=policy))
    assert core.position(buyer.address, network=NETWORK).locked == 600
    with pytest.raises(CoreError) as info:
        core.post_validation(good.guarantee_id, validator=buyer.address, score=100)
    assert info.value.reason == "not_validator"
    assert (
        core.post_validation(good.guarantee_id, validator=policy.validator, score=80).state
        == "payable"
    )
    assert (
        core.post_validation(bad.guarantee_id, validator=policy.validator, score=79).state
        == "cancelled"
    )
    with pytest.raises(CoreError):
        core.post_validation(good.guarantee_id, validator=policy.validator, score=0)  # once only
    clock.advance(61)
    assert core.tick()["validations_expired"] == 1
    assert core.guarantee(late.guarantee_id).state == "cancelled"
    assert core.position(buyer.address, network=NETWORK).locked == 100


def test_void_releases_the_lock_only_for_the_recipient(core: Core, buyer: TestBuyer) -> None:
    accepted = core.accept(*buyer.pay(core, SELLER, 500))
    with pytest.raises(CoreError) as info:
        core.void(accepted.guarantee_id, by=buyer.address)
    assert info.value.reason == "not_recipient"
    assert core.void(accepted.guarantee_id, by=SELLER).state == "voided"
    assert core.position(buyer.address, network=NETWORK).locked == 0
    with pytest.raises(CoreError):
        core.void(accepted.guarantee_id, by=SELLER)
    netted = core.accept(*buyer.pay(core, SELLER, 500))
    core.close_cycle(network=NETWORK)
    with pytest.raises(CoreError) as info:
        core.void(netted.guarantee_id, by=SELLER)
    assert info.value.reason == "invalid_state"


def test_work_joined_to_a_core_transaction_commits_or_rolls_back_with_it(
    core: Core, buyer: TestBuyer
) -> None:
    """``also=`` callbacks (the gate's records) share the Core's transaction: all or nothing."""
    policy = test_policy()

    def fail(*args: object) -> None:
        raise RuntimeError("the joined write failed")

    signed, expected = buyer.pay(core, SELLER, 400, policy=policy)
    with pytest.raises(RuntimeError):
        core.accept(signed, expected, also=fail)
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert core.guarantees(address=buyer.address) == []

    seen: list[str] = []
    accepted = core.accept(signed, expected, also=lambda tx, acc: seen.append(acc.guarantee_id))
    assert seen == [accepted.guarantee_id]  # the same guarantee, once rolled back, now accepted
    with pytest.raises(RuntimeError):
        core.resolve(accepted.guarantee_id, by=policy.validator, score=100, also=fail)
    assert core.guarantee(accepted.guarantee_id).state == "pending_validation"
    with pytest.raises(RuntimeError):
        core.resolve(accepted.guarantee_id, by=SELLER, score=None, also=fail)
    assert core.position(buyer.address, network=NETWORK).locked == 400  # the void rolled back
    core.resolve(accepted.guarantee_id, by=policy.validator, score=100, tag=policy.tag)
    assert core.guarantee(accepted.guarantee_id).state == "payable"


def test_a_validator_holds_its_pending_guarantees_open_past_the_timeout(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """A paid response still going out is not cancelled under it: the validator (the gate,
    under the delivery policy) pushes the deadline back. Nobody else can, and a cancelled
    guarantee stays cancelled."""
    policy = test_policy()
    gid = core.accept(*buyer.pay(core, SELLER, 400, policy=policy)).guarantee_id
    clock.advance(50)
    assert core.extend_validations([gid], by=SELLER) == 0  # the recipient is not the validator
    assert core.extend_validations([gid, "0x" + "00" * 32], by=policy.validator) == 1
    clock.advance(50)  # past the first deadline (60 s), before the new one (110 s)
    assert core.expire_validations() == 0
    assert core.guarantee(gid).state == "pending_validation"
    clock.advance(11)
    assert core.expire_validations() == 1 and core.guarantee(gid).state == "cancelled"
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert core.extend_validations([gid], by=policy.validator) == 0


def test_a_guarantee_past_its_validation_deadline_is_neither_scored_nor_held_open(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """Cancelled at the deadline (docs/protocol.md), even before a tick says so: a late score
    is refused and a late extension moves nothing, so the buyer is never charged for it."""
    policy = test_policy()
    late, held = (core.accept(*buyer.pay(core, SELLER, 400, policy=policy)) for _ in "ab")
    clock.advance(61)  # past both deadlines (60 s); no tick ran
    with pytest.raises(CoreError) as info:
        core.post_validation(late.guarantee_id, validator=policy.validator, score=100)
    assert (info.value.reason, info.value.status) == ("validation_expired", 409)
    assert core.extend_validations([held.guarantee_id], by=policy.validator) == 0
    assert core.expire_validations() == 2
    assert {core.guarantee(g.guarantee_id).state for g in (late, held)} == {"cancelled"}
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_the_validation_deadline_itself_is_past_it(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """From the deadline on (docs/protocol.md): at the very instant a score was taken and the
    deadline moved, while a tick at that instant cancelled nothing (whole-second clocks meet
    it exactly)."""
    policy = test_policy()
    late, held, idle = (core.accept(*buyer.pay(core, SELLER, 400, policy=policy)) for _ in "abc")
    clock.advance(60)  # exactly the deadline (60 s after acceptance)
    assert core.guarantee(late.guarantee_id).accepted_at + 60 == clock()
    with pytest.raises(CoreError) as info:
        core.post_validation(late.guarantee_id, validator=policy.validator, score=100)
    assert (info.value.reason, info.value.status) == ("validation_expired", 409)
    assert core.extend_validations([held.guarantee_id], by=policy.validator) == 0
    assert core.expire_validations() == 3
    assert {core.guarantee(g.guarantee_id).state for g in (late, held, idle)} == {"cancelled"}
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_score_that_waits_for_the_database_is_judged_when_it_gets_it(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """A score (or a hold) that waits for another writer is judged at the time it writes, not
    the time it asked: the deadline passed meanwhile, so the score is refused and the buyer
    is not charged (docs/protocol.md: "from the deadline on ... a score is refused")."""
    policy = test_policy()
    scored, held = (core.accept(*buyer.pay(core, SELLER, 400, policy=policy)) for _ in "ab")
    clock.advance(30)
    holding, release = threading.Event(), threading.Event()

    def hold_the_rows() -> None:  # another process's write, a batch of completions…
        lock = " FOR UPDATE" if core.store.dialect == "postgres" else ""
        with core.store.transaction() as tx:
            for g in (scored, held):
                tx.one(
                    "SELECT state FROM fx_guarantees WHERE guarantee_id = ?" + lock,
                    (g.guarantee_id,),
                )
            holding.set()
            release.wait(30)

    answers: dict[str, object] = {}

    def score() -> None:
        try:
            answers["score"] = core.post_validation(
                scored.guarantee_id, validator=policy.validator, score=100, tag=policy.tag
            )
        except CoreError as exc:
            answers["score"] = exc

    def extend() -> None:
        answers["extend"] = core.extend_validations([held.guarantee_id], by=policy.validator)

    holder = threading.Thread(target=hold_the_rows)
    holder.start()
    assert holding.wait(30)
    waiting = [threading.Thread(target=score), threading.Thread(target=extend)]
    for t in waiting:
        t.start()
    waiting[0].join(0.5)  # both wait for the rows, having asked at 30 s
    clock.advance(31)  # the deadline (60 s) passes while they wait
    release.set()
    for t in (holder, *waiting):
        t.join(30)
    refused = answers["score"]
    assert isinstance(refused, CoreError) and refused.reason == "validation_expired", refused
    assert answers["extend"] == 0
    assert core.expire_validations() == 2
    assert {core.guarantee(g.guarantee_id).state for g in (scored, held)} == {"cancelled"}
    assert core.position(buyer.address, network=NETWORK).locked == 0


@pytest.mark.parametrize("many", [False, True], ids=["certify", "certify_many"])
def test_a_guarantee_voided_while_its_certificate_is_signed_gets_none(
    core: Core, buyer: TestBuyer, many: bool
) -> None:
    """Signing happens outside any transaction: a refund that commits meanwhile wins, and no
    certificate is filed or handed out for the refunded guarantee."""
    gid = core.accept(*buyer.pay(core, SELLER, 100)).guarantee_id
    kept = core.accept(*buyer.pay(core, SELLER, 100)).guarantee_id
    operator = core.operator

    class RefundedMeanwhile:  # the Core's operator, but another thread refunds as it signs
        def certify(self, message: bytes):  # type: ignore[no-untyped-def]
            if core.guarantee(gid).state == "payable":
                worker = threading.Thread(target=core.void, args=(gid,), kwargs={"by": SELLER})
                worker.start()
                worker.join()
            return operator.certify(message)

    core.operator = RefundedMeanwhile()  # type: ignore[assignment]
    try:
        if many:
            assert set(core.certify_many([gid, kept])) == {kept}
        else:
            with pytest.raises(CoreError) as info:
                core.certify(gid)
            assert (info.value.reason, info.value.status) == ("guarantee_not_payable", 409)
    finally:
        core.operator = operator
    assert core.guarantee(gid).state == "voided" and core.guarantee(gid).certificate is None
    with pytest.raises(CoreError):
        core.certify(gid)


def test_no_new_certificate_for_a_refunded_or_cancelled_guarantee(
    core: Core, buyer: TestBuyer, clock: FakeClock
) -> None:
    """A certificate is the Core's word that a guarantee stands: none is made once it was
    voided or cancelled (one made before stays what it was)."""
    policy = test_policy()
    voided, certified, cancelled = (
        core.accept(*buyer.pay(core, SELLER, 100, policy=policy)).guarantee_id for _ in "abc"
    )
    before = core.certify(certified)
    for gid in (voided, certified):
        core.void(gid, by=SELLER)
    clock.advance(61)
    core.expire_validations()
    for gid in (voided, cancelled):
        with pytest.raises(CoreError) as info:
            core.certify(gid)
        assert (info.value.reason, info.value.status) == ("guarantee_not_payable", 409)
    assert core.certify(certified) == before
    assert core.certify_many([voided, certified, cancelled]) == {certified: before}


def test_certificate_is_bls_signed_in_4mica_format(store_url: str, clock: FakeClock) -> None:
    core = Core(store_url, config=FAST, clock=clock)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10_000, network=NETWORK)
    signed, expected = buyer.pay(core, SELLER, 700)
    core.accept(*buyer.pay(core, SELLER, 300))
    accepted = core.accept(signed, expected)
    cert = core.certify(accepted.guarantee_id)
    assert cert.claims == certificate_message(signed.claims, core.guarantee_domain(84532), 1000)
    assert len(cert.signature) == 96 and len(core.operator.public_key) == 48
    # The official SDK verifies with py_ecc's G2Basic: so do we.
    assert G2Basic.Verify(core.operator.public_key, cert.claims, cert.signature)
    assert core.certify(accepted.guarantee_id) == cert
    public_key = core.operator.public_key
    core.close()
    reopened = Core(store_url, config=FAST, clock=clock)  # the operator key survives a restart
    assert reopened.operator.public_key == public_key
    with pytest.raises(CoreError):
        reopened.certify("0x" + "00" * 32)
    reopened.close()


def test_a_refused_payment_still_commits_the_refunds_it_carried(tmp_path: Path) -> None:
    """On SQLite the completions a process queued (a refund, a score) ride along with its next
    write (docs/architecture.md, "Completion off the request path"). A refused payment is such
    a write: it commits them, not rolls them back with itself; else refused payments arriving
    faster than the window (a replay flood) held every refund and score back while they came,
    unseen by other processes and lost by a crash."""
    path = tmp_path / "core.db"
    core = Core(f"sqlite:///{path}")
    core.store.deferred.window = 1.0  # as PaymentConfig(completion_window=1.0) sets it
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10_000, network=NETWORK)
    paid = core.accept(*buyer.pay(core, SELLER, 700))
    replayed = buyer.pay(core, SELLER, 300)
    core.accept(*replayed)
    core.resolve_later(paid.guarantee_id, by=SELLER, score=None)  # the seller's refund, queued
    with pytest.raises(GuaranteeRejected) as info:
        core.accept(*replayed)
    assert reason(info) == "replayed_request_id"
    with contextlib.closing(sqlite3.connect(path)) as other:  # another process, at once
        state = other.execute(
            "SELECT state FROM fx_guarantees WHERE guarantee_id = ?", (paid.guarantee_id,)
        ).fetchone()
        locked = other.execute("SELECT locked FROM fx_positions").fetchone()
    assert (state, locked) == (("voided",), (300,))  # the refund, and nothing of the replay
    assert core.audit() == []
    core.close()


# -- netting -----------------------------------------------------------------------------------


def _fund(core: Core, *buyers: TestBuyer, amount: int = 1_000, asset: str = USDC) -> None:
    for b in buyers:
        core.deposit(b.address, amount, network=NETWORK, asset=asset)


def _positions(core: Core, cycle_id: int) -> dict[str, tuple[int, str]]:
    return {p.address: (p.net, p.role) for p in core.cycle_positions(cycle_id)}


def test_netting_example_a_owes_b_twenty(core: Core) -> None:
    a, b = TestBuyer.new(), TestBuyer.new()
    _fund(core, a, b)
    for amount in (20, 15, 10):
        core.accept(*a.pay(core, b.address, amount))
    for amount in (18, 7):
        core.accept(*b.pay(core, a.address, amount))
    cycle = core.close_cycle(network=NETWORK)
    assert _positions(core, cycle.cycle_id) == {
        a.address: (-20, "debtor"),
        b.address: (20, "creditor"),
    }
    assert (cycle.guarantee_count, cycle.gross, cycle.net_transfers, cycle.total_debit) == (
        5,
        70,
        2,
        20,
    )
    pairs = {
        (p.payer, p.payee): (p.amount, p.guarantee_count) for p in core.cycle_pairs(cycle.cycle_id)
    }
    assert pairs == {(a.address, b.address): (45, 3), (b.address, a.address): (25, 2)}


def test_netting_out_40_in_27_is_a_debit_of_13(core: Core) -> None:
    a, b, c = TestBuyer.new(), TestBuyer.new(), TestBuyer.new()
    _fund(core, a, b, c)
    core.accept(*a.pay(core, b.address, 25))
    core.accept(*a.pay(core, c.address, 15))
    core.accept(*b.pay(core, a.address, 20))
    core.accept(*c.pay(core, a.address, 7))
    cycle = core.close_cycle(network=NETWORK)
    positions = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
    assert (positions[a.address].gross_out, positions[a.address].gross_in) == (40, 27)
    assert (positions[a.address].debit, positions[a.address].role) == (13, "debtor")
    assert sum(p.debit for p in positions.values()) == sum(p.credit for p in positions.values())


def test_equal_and_opposite_nets_to_zero(core: Core) -> None:
    a, b = TestBuyer.new(), TestBuyer.new()
    _fund(core, a, b)
    core.accept(*a.pay(core, b.address, 33))
    core.accept(*b.pay(core, a.address, 33))
    cycle = core.close_cycle(network=NETWORK)
    assert _positions(core, cycle.cycle_id) == {
        a.address: (0, "balanced"),
        b.address: (0, "balanced"),
    }
    assert (cycle.net_transfers, cycle.total_debit) == (0, 0)


def test_different_assets_never_net(core: Core) -> None:
    a, b = TestBuyer.new(), TestBuyer.new()
    _fund(core, a, b)
    _fund(core, a, b, asset=OTHER_ASSET)
    core.accept(*a.pay(core, b.address, 50))
    core.accept(*b.pay(core, a.address, 50, asset=OTHER_ASSET))
    usdc = core.close_cycle(network=NETWORK)
    other = core.close_cycle(network=NETWORK, asset=OTHER_ASSET)
    assert _positions(core, usdc.cycle_id) == {
        a.address: (-50, "debtor"),
        b.address: (50, "creditor"),
    }
    assert _positions(core, other.cycle_id) == {
        a.address: (50, "creditor"),
        b.address: (-50, "debtor"),
    }


def test_merkle_root_commits_to_positions(core: Core) -> None:
    a, b = TestBuyer.new(), TestBuyer.new()
    _fund(core, a, b)
    core.accept(*a.pay(core, b.address, 10))
    first = core.close_cycle(network=NETWORK)
    core.accept(*a.pay(core, b.address, 11))
    second = core.close_cycle(network=NETWORK)
    empty = core.close_cycle(network=NETWORK)
    assert first.merkle_root and second.merkle_root and first.merkle_root != second.merkle_root
    assert empty.merkle_root == "0x" + "00" * 32


# -- a whole cycle: resolution, payment, claims, default coverage -------------------------------


def test_cycle_lifecycle_with_payment_and_default(core: Core, clock: FakeClock) -> None:
    payer, defaulter, c1, c2 = (TestBuyer.new() for _ in range(4))
    core.deposit(payer.address, 1_000, network=NETWORK)
    core.deposit(defaulter.address, 60, network=NETWORK)
    core.accept(*payer.pay(core, c1.address, 300))
    core.accept(*payer.pay(core, c2.address, 100))
    core.accept(*defaulter.pay(core, c1.address, 40))
    core.accept(*defaulter.pay(core, c2.address, 20))
    cycle = core.close_cycle(network=NETWORK)
    assert cycle.status == "closed" and cycle.total_debit == 460
    # Nothing can be paid before resolution; locks still cover the gross amounts.
    with pytest.raises(CoreError):
        core.pay_net_debit(cycle.cycle_id, payer.address)
    assert core.position(payer.address, network=NETWORK).locked == 400

    clock.advance(10)
    assert core.tick()["resolved"] == 1
    paid = core.pay_net_debit(cycle.cycle_id, payer.address)
    assert (paid.paid, paid.status) == (400, "paid")
    with pytest.raises(CoreError) as info:  # paid twice: said so, not "payment must be 1..0"
        core.pay_net_debit(cycle.cycle_id, payer.address)
    assert (info.value.reason, info.value.status) == ("already_paid", 409)
    assert core.position(payer.address, network=NETWORK).locked == 0
    # c1 is owed 340 of 460 owed in total; 400 has been paid in so far.
    assert core.claim_net_credit(cycle.cycle_id, c1.address) == 340 * 400 // 460
    with pytest.raises(CoreError) as info:
        core.claim_net_credit(cycle.cycle_id, payer.address)
    assert info.value.reason == "not_creditor"

    clock.advance(20)
    assert core.tick()["finalized"] == 1
    positions = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
    assert (positions[defaulter.address].covered, positions[defaulter.address].status) == (
        60,
        "defaulted",
    )
    assert core.position(defaulter.address, network=NETWORK).collateral == 0
    assert core.position(defaulter.address, network=NETWORK).locked == 0
    assert core.claim_net_credit(cycle.cycle_id, c1.address) == 340 - 340 * 400 // 460
    assert core.claim_net_credit(cycle.cycle_id, c2.address) == 120
    assert core.claim_net_credit(cycle.cycle_id, c2.address) == 0
    states = {g.user_address: g.state for g in core.guarantees(cycle_id=cycle.cycle_id)}
    assert states == {payer.address: "settled", defaulter.address: "default_covered"}
    assert core.cycle(cycle.cycle_id).status == "final"
    types = [e.type for e in core.events()]
    for expected_type in (
        "cycle.closed",
        "cycle.resolved",
        "debit.paid",
        "position.defaulted",
        "credit.claimed",
    ):
        assert expected_type in types


def test_default_shortfall_is_shared_pro_rata(core: Core, clock: FakeClock) -> None:
    debtor, c1, c2 = TestBuyer.new(), TestBuyer.new(), TestBuyer.new()
    core.set_factor(NETWORK, USDC, "2")  # credit: the debtor may promise twice its collateral
    core.deposit(debtor.address, 50, network=NETWORK)
    core.accept(*debtor.pay(core, c1.address, 75))
    core.accept(*debtor.pay(core, c2.address, 25))
    cycle = core.close_cycle(network=NETWORK)
    clock.advance(30)
    core.tick()
    positions = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
    assert (positions[debtor.address].covered, positions[debtor.address].shortfall) == (50, 50)
    assert positions[c1.address].shortfall == 75 - 75 * 50 // 100
    assert positions[c2.address].shortfall == 25 - 25 * 50 // 100
    assert core.claim_net_credit(cycle.cycle_id, c1.address) == 37
    assert core.claim_net_credit(cycle.cycle_id, c2.address) == 12


def test_scheduled_close_by_tick(core: Core, clock: FakeClock) -> None:
    a, b = TestBuyer.new(), TestBuyer.new()
    _fund(core, a)
    first = core.current_cycle(network=NETWORK)
    core.accept(*a.pay(core, b.address, 10))
    clock.advance(DAY)
    assert core.tick()["closed"] == 1
    closed = core.cycle(first.cycle_id)
    assert closed.status == "closed" and closed.guarantee_count == 1
    assert core.current_cycle(network=NETWORK).cycle_id != first.cycle_id


def test_tick_advances_every_due_cycle_however_many_wait(core: Core, clock: FakeClock) -> None:
    """``tick`` read the newest 1 000 cycles of each status and advanced the due ones among
    them: with more waiting (a short cycle window, or closes in a loop), the oldest, the only
    due ones, were never resolved or finalized, and their locks never released."""
    buyer, seller = TestBuyer.new(), TestBuyer.new()
    core.deposit(buyer.address, 1_000, network=NETWORK)
    core.accept(*buyer.pay(core, seller.address, 400))
    first = core.close_cycle(network=NETWORK).cycle_id
    clock.advance(5)
    for _ in range(1_050):  # empty closes, due 5 s after the first
        core.close_cycle(network=NETWORK)
    clock.advance(6)  # the first is due; the others not yet
    assert core.tick()["resolved"] == 1
    assert core.cycle(first).status == "resolved"
    assert core.pay_net_debit(first, buyer.address).paid == 400
    assert core.position(buyer.address, network=NETWORK).locked == 0
    clock.advance(30)  # now everything is due: all of it advances, in one tick
    done = core.tick()
    assert done["resolved"] == 1_050 and done["finalized"] == 1_051
    assert core.cycles(status="closed") == core.cycles(status="resolved") == []


def test_a_tick_advances_only_the_cycles_there_were_when_it_began(store_url: str) -> None:
    """A cycle window of 0 opens each next cycle due at once: a tick reading the due cycles
    page after page closed the one it had just opened, and the next, and never returned."""
    clock = FakeClock(1_800_000_000)
    core = Core(store_url, config=dataclasses.replace(FAST, cycle_window=0), clock=clock)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000, network=NETWORK)
    core.accept(*buyer.pay(core, SELLER, 400))
    assert core.tick()["closed"] == 1 and core.tick()["closed"] == 1
    assert core.audit() == []
    core.close()


def test_a_cycle_grossing_past_64_bits_closes_with_what_fits(core: Core, clock: FakeClock) -> None:
    """A cycle's amounts are 64-bit columns: the pairs that would pass 2**63 - 1 wait for the
    next cycle (smallest kept first), so no gross, however large, keeps a cycle open."""
    buyers = [TestBuyer.new() for _ in range(3)]
    for i, b in enumerate(buyers):
        core.deposit(b.address, 2**62 + i, network=NETWORK)
        core.accept(*b.pay(core, SELLER, 2**62 + i))
    first = core.close_cycle(network=NETWORK)
    assert (first.guarantee_count, first.gross) == (1, 2**62)  # the smallest pair fits alone
    second = core.close_cycle(network=NETWORK)
    assert (second.guarantee_count, second.gross) == (1, 2**62 + 1)
    third = core.close_cycle(network=NETWORK)
    assert (third.guarantee_count, third.gross) == (1, 2**62 + 2)
    assert core.audit() == []


def _buyer_starting(digits: str) -> TestBuyer:
    """A buyer whose address (EIP-55: mixed case) starts with one of ``digits`` after ``0x``."""
    while True:
        buyer = TestBuyer.new()
        if buyer.address[2] in digits:
            return buyer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def linguistic_url(request: pytest.FixtureRequest) -> str:
    """A fresh SQLite file, then a PostgreSQL database whose collation is not byte order."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_linguistic_url"
    url: str = request.getfixturevalue(name)
    return url


def test_addresses_sort_in_byte_order_whatever_the_databases_collation(
    linguistic_url: str, clock: FakeClock
) -> None:
    """EIP-55 addresses are mixed-case: every store sorts them in byte order ("0xB…" before
    "0xa…"), a PostgreSQL database with a linguistic collation too. So a cycle grossing past
    64 bits keeps the same one of two equal pairs on both, and the listings come in one order."""
    core = Core(linguistic_url, config=FAST, clock=clock)
    try:
        upper, lower = _buyer_starting("ABCDEF"), _buyer_starting("abcdef")
        amount = 2**62  # two such pairs pass 2**63 - 1: one waits for the next cycle
        for buyer in (lower, upper):
            core.deposit(buyer.address, amount, network=NETWORK)
            core.accept(*buyer.pay(core, SELLER, amount))
        first = core.close_cycle(network=NETWORK)
        assert [p.payer for p in core.cycle_pairs(first.cycle_id)] == [upper.address]
        assert [p.address for p in core.positions()] == [upper.address, lower.address]
        netted = [p.address for p in core.cycle_positions(first.cycle_id)]
        assert netted == sorted([upper.address, SELLER])
        second = core.close_cycle(network=NETWORK)
        assert [p.payer for p in core.cycle_pairs(second.cycle_id)] == [lower.address]
        assert core.audit() == []
    finally:
        core.close()


# -- collateral and withdrawals ----------------------------------------------------------------


def test_factor_scales_capacity(core: Core) -> None:
    b = TestBuyer.new()
    core.deposit(b.address, 1_000, network=NETWORK)
    core.set_factor(NETWORK, USDC, "0.5")
    assert core.position(b.address, network=NETWORK).capacity == 500
    core.deposit(b.address, 1, network=NETWORK)
    assert core.position(b.address, network=NETWORK).capacity == 500  # floor(1001 × 0.5)
    with pytest.raises(GuaranteeRejected):
        core.accept(*b.pay(core, SELLER, 501))


@pytest.mark.postgres
def test_a_factor_change_never_writes_over_collateral_committed_meanwhile(
    postgres_url: str,
) -> None:
    """A deposit (or payout) in flight while the factor changes stays whole: the change waits
    for it and writes only credit limits (PostgreSQL's writers run side by side)."""
    import threading

    import psycopg

    core = Core(postgres_url)
    b = TestBuyer.new().address
    core.deposit(b, 1_000, network=NETWORK)
    with psycopg.connect(postgres_url) as other:  # a deposit of 5 holding its row lock
        other.execute(
            "UPDATE fx_positions SET collateral = collateral + 5 WHERE address = %s", (b,)
        )
        change = threading.Thread(target=core.set_factor, args=(NETWORK, USDC, "1/2"))
        change.start()
        change.join(1.0)  # it waits on the row (or read it already, as it used to)
        other.commit()
    change.join(30)
    assert not change.is_alive()
    position = core.position(b, network=NETWORK)
    assert (position.collateral, position.capacity) == (1_005, 502)
    core.close()


def test_withdrawal_lifecycle_and_safety_rule(core: Core, clock: FakeClock) -> None:
    b = TestBuyer.new()
    core.deposit(b.address, 1_000, network=NETWORK)
    core.accept(*b.pay(core, SELLER, 300))
    with pytest.raises(CoreError):
        core.request_withdrawal(b.address, 701, network=NETWORK)
    w = core.request_withdrawal(b.address, 700, network=NETWORK)
    assert core.position(b.address, network=NETWORK).capacity == 0
    with pytest.raises(GuaranteeRejected):
        core.accept(*b.pay(core, SELLER, 1))
    with pytest.raises(CoreError) as info:
        core.finalize_withdrawal(w.withdrawal_id)
    assert info.value.reason == "withdrawal_not_ready"
    clock.advance(100)
    assert core.finalize_withdrawal(w.withdrawal_id).status == "finalized"
    assert core.position(b.address, network=NETWORK).collateral == 300
    # The safety rule: after a factor change, what would remain must still cover the locks.
    core.deposit(b.address, 100, network=NETWORK)
    w2 = core.request_withdrawal(b.address, 100, network=NETWORK)
    core.set_factor(NETWORK, USDC, "0.5")
    clock.advance(100)
    with pytest.raises(CoreError) as info:
        core.finalize_withdrawal(w2.withdrawal_id)
    assert info.value.reason == "withdrawal_unsafe"
    assert core.cancel_withdrawal(w2.withdrawal_id).status == "cancelled"
    core.set_factor(NETWORK, USDC, "1")
    assert core.position(b.address, network=NETWORK).pending_withdrawal == 0
    types = [e.type for e in core.events()]
    assert "withdrawal.requested" in types and "withdrawal.finalized" in types


def test_a_withdrawal_refused_says_how_much_is_free(core: Core) -> None:
    """A refused withdrawal named no amounts: the caller could not tell how far off it was."""
    b = TestBuyer.new()
    core.deposit(b.address, 1_000, network=NETWORK)
    core.accept(*b.pay(core, SELLER, 300))
    with pytest.raises(CoreError) as info:
        core.request_withdrawal(b.address, 701, network=NETWORK)
    assert info.value.reason == "insufficient_collateral"
    assert "701 asked, 700 free" in info.value.message
    nobody = TestBuyer.new().address  # no position at all: nothing is free
    with pytest.raises(CoreError) as info:
        core.request_withdrawal(nobody, 1, network=NETWORK)
    assert "1 asked, 0 free" in info.value.message


def test_a_withdrawal_leaves_credit_for_the_locks_and_the_other_withdrawals(
    core: Core, clock: FakeClock
) -> None:
    """With a factor above 1, paying one withdrawal out must still leave a credit limit that
    covers the locks plus the withdrawals still pending (the capacity rule)."""
    b = TestBuyer.new()
    core.set_factor(NETWORK, USDC, "2")
    core.deposit(b.address, 100, network=NETWORK)  # credit 200
    first, second = (core.request_withdrawal(b.address, 50, network=NETWORK) for _ in "ab")
    core.accept(*b.pay(core, SELLER, 100))  # capacity 200 - 100 locked - 100 pending = 0
    clock.advance(100)
    with pytest.raises(CoreError) as info:
        core.finalize_withdrawal(first.withdrawal_id)  # credit 100 < 100 locked + 50 pending
    assert info.value.reason == "withdrawal_unsafe"
    core.cancel_withdrawal(second.withdrawal_id)
    assert core.finalize_withdrawal(first.withdrawal_id).status == "finalized"
    position = core.position(b.address, network=NETWORK)
    assert (position.collateral, position.locked, position.capacity) == (50, 100, 0)
    assert core.audit() == []


def test_under_a_factor_below_1_all_collateral_not_backing_a_lock_may_leave(
    core: Core, clock: FakeClock
) -> None:
    """A factor below 1 made the credit limit smaller than the collateral, and a withdrawal was
    bounded by that capacity: 1000 units at 1/2 left 500 at a time, and the last unit never
    (its credit limit is 0). What stays after the withdrawals need only back the locks."""
    b, c = TestBuyer.new(), TestBuyer.new()
    core.set_factor(NETWORK, USDC, "1/2")
    core.deposit(b.address, 1_000, network=NETWORK)
    whole = core.request_withdrawal(b.address, 1_000, network=NETWORK)
    clock.advance(FAST.withdrawal_grace)
    assert core.finalize_withdrawal(whole.withdrawal_id).status == "finalized"
    assert core.position(b.address, network=NETWORK).collateral == 0
    core.deposit(c.address, 1_000, network=NETWORK)  # credit 500
    core.accept(*c.pay(core, SELLER, 100))  # backed by 200 of the collateral
    with pytest.raises(CoreError) as info:
        core.request_withdrawal(c.address, 801, network=NETWORK)
    assert "801 asked, 800 free" in info.value.message
    first = core.request_withdrawal(c.address, 500, network=NETWORK)
    second = core.request_withdrawal(c.address, 300, network=NETWORK)
    with pytest.raises(GuaranteeRejected):  # what stays backs the lock and nothing more
        core.accept(*c.pay(core, SELLER, 1))
    clock.advance(FAST.withdrawal_grace)
    for w in (second, first):
        assert core.finalize_withdrawal(w.withdrawal_id).status == "finalized"
    position = core.position(c.address, network=NETWORK)
    assert (position.collateral, position.credit_limit, position.locked) == (200, 100, 100)
    assert core.audit() == []


def test_bad_amounts_are_clear_errors(core: Core) -> None:
    b = TestBuyer.new().address
    for amount in (0, -1, 1 << 63, True, 1.5):
        with pytest.raises(CoreError) as info:
            core.deposit(b, amount, network=NETWORK)  # type: ignore[arg-type]
        assert info.value.status == 400


def test_events_reach_subscribers_after_commit(core: Core, buyer: TestBuyer) -> None:
    seen: list[str] = []

    def boom(event: object) -> None:
        raise RuntimeError("a broken subscriber")

    core.subscribe(boom)
    unsubscribe = core.subscribe(lambda e: seen.append(e.type))
    core.accept(*buyer.pay(core, SELLER, 10))
    signed, expected = buyer.pay(core, SELLER, 10**9)
    with pytest.raises(GuaranteeRejected):
        core.accept(signed, expected)  # rolled back: no event
    unsubscribe()
    core.deposit(buyer.address, 1, network=NETWORK)
    assert seen == ["guarantee.accepted"]


@pytest.mark.parametrize(
    "name",
    [
        "tab_ttl",
        "cycle_window",
        "finality",
        "withdrawal_grace",
        "validation_timeout",
        "max_clock_skew",
    ],
)
def test_a_negative_duration_is_refused_when_the_config_is_built(name: str) -> None:
    """A negative withdrawal grace let a withdrawal finish before the grace it promises
    the sellers; a negative validation timeout or clock skew made every check moot."""
    with pytest.raises(ValueError, match=name):
        CoreConfig(**{name: -1})


@pytest.mark.parametrize(
    "name",
    [
        "tab_ttl",
        "cycle_window",
        "resolution_delay",
        "payment_window",
        "finality",
        "withdrawal_grace",
        "validation_timeout",
        "max_clock_skew",
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_duration_that_is_no_number_of_seconds_is_refused(name: str, value: float) -> None:
    """NaN passed the "not negative" check: a NaN withdrawal grace wrote a NaN
    ``available_at``, which PostgreSQL's ``now < available_at`` never holds, so the
    withdrawal was paid out at once, with no grace (on SQLite the NaN is NULL: a traceback);
    a NaN finality left a cycle's unpaid debits uncovered for good. The command line's
    durations are finite already; the Python API now refuses the same."""
    with pytest.raises(ValueError, match=name):
        CoreConfig(**{name: value})


@pytest.mark.parametrize("big", [2**63, 2**70, -1])
def test_an_id_no_column_can_hold_names_no_withdrawal_or_cycle(core: Core, big: int) -> None:
    """On SQLite a withdrawal or cycle id of 2**63 or more was a bare OverflowError from the
    driver (``withdraw --finalize 9223372036854775808`` printed a traceback); PostgreSQL
    answered "no withdrawal". Both say there is none now."""
    who = TestBuyer.new().address
    calls = [
        (core.withdrawal, (big,), "unknown_withdrawal"),
        (core.finalize_withdrawal, (big,), "unknown_withdrawal"),
        (core.cancel_withdrawal, (big,), "unknown_withdrawal"),
        (core.cycle, (big,), "unknown_cycle"),
        (core.pay_net_debit, (big, who), "unknown_cycle"),
        (core.claim_net_credit, (big, who), "unknown_cycle"),
    ]
    for call, args, reason in calls:
        with pytest.raises(CoreError) as refused:
            call(*args)
        assert refused.value.reason == reason, call
    assert core.cycle_positions(big) == core.payer_counts(big) == core.cycle_pairs(big) == []


def test_a_withdrawal_beyond_the_credit_never_shows_a_negative_capacity(core: Core) -> None:
    """Under a factor below 1 a position with nothing locked may withdraw all its collateral,
    more than its credit limit: what it can still promise is 0, not a negative amount."""
    from fourmica_x402.core.alert_conditions import collateral_floor

    b = TestBuyer.new()
    core.set_factor(NETWORK, USDC, "1/2")
    core.deposit(b.address, 1_000, network=NETWORK)
    core.request_withdrawal(b.address, 1_000, network=NETWORK)
    position = core.position(b.address, network=NETWORK)
    assert (position.credit_limit, position.pending_withdrawal) == (500, 1_000)
    assert position.capacity == 0 and position.to_dict()["capacity"] == 0
    with core.store.transaction(write=False) as tx:
        (alert,) = collateral_floor(tx, 1, 0.0).values()
    assert alert.value == 0
