"""Alerts (docs/operations.md, "Alerts"), each rule driven through a real Core (SQLite file;
PostgreSQL where available): it fires when its condition starts to hold, not again while it
holds, and again after it cleared and holds anew. Several Cores on one database checking at
once fire a crossing once in total. Each firing is an ``alert.fired`` event, stored with the
flip, that reaches a webhook subscriber signed like every event, and a log line.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fourmica_x402.alerts import InvalidPaymentAlerts
from fourmica_x402.core import Alert, AlertRules, Core, CoreConfig
from fourmica_x402.errors import (
    ConfigurationError,
    GuaranteeRejected,
    MalformedPayment,
    Reason,
    Unavailable,
)
from fourmica_x402.gate.types import RequestView
from fourmica_x402.networks import default_asset
from fourmica_x402.records import Records
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer
from fourmica_x402.webhooks import Webhooks, verify_signature

START = 1_800_000_000.0
USDC = default_asset(NETWORK).address
FAST = CoreConfig(
    cycle_window=86_400, resolution_delay=10, payment_window=10, finality=10, withdrawal_grace=100
)


class World:
    """A Core on a fake clock, a seller, and buyers made on demand."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FakeClock(START)
        self.core = Core(url, config=FAST, clock=self.clock)
        self.seller = TestBuyer.new().address

    def buyer(self, collateral: int = 10_000) -> TestBuyer:
        buyer = TestBuyer.new()
        self.core.deposit(buyer.address, collateral, network=NETWORK)
        return buyer

    def pay(self, buyer: TestBuyer, amount: int) -> str:
        return self.core.accept(*buyer.pay(self.core, self.seller, amount)).guarantee_id

    def fired(self, rules: AlertRules, **kw: Any) -> list[tuple[str, str]]:
        return [(a.rule, a.subject) for a in self.core.check_alerts(rules, **kw)]

    def events(self) -> list[dict[str, Any]]:
        return [e.data for e in self.core.events(type="alert.fired")]

    def resolve_cycle(self) -> int:
        """Close the open cycle now and resolve it (its payment deadline 10 s later)."""
        cycle_id = self.core.close_cycle(network=NETWORK).cycle_id
        self.clock.advance(10)
        assert self.core.tick()["resolved"] == 1
        return cycle_id


def position(address: str) -> str:
    return f"{NETWORK}/{USDC}/{address}"


@pytest.fixture
def world(store_url: str) -> Iterator[World]:
    w = World(store_url)
    yield w
    assert w.core.audit() == []
    w.core.close()


# -- the rules ----------------------------------------------------------------------------------


def test_rules_are_checked_and_parsed() -> None:
    rules = AlertRules.parse(
        "collateral_floor=1_000_000, settlement-deadline=15m, default=0, "
        "reconciler_backlog_age=1h30m, invalid_payments_per_ip=50, invalid_window=30s"
    )
    assert (rules.collateral_floor, rules.settlement_deadline, rules.default) == (1_000_000, 900, 0)
    assert (rules.reconciler_backlog_age, rules.invalid_payments_per_ip) == (5400, 50)
    assert rules.invalid_window == 30
    assert rules.database_rules == [
        "collateral_floor",
        "settlement_deadline",
        "default",
        "reconciler_backlog_age",
    ]
    assert rules.payment_rules == ["invalid_payments_per_ip"]
    assert AlertRules(collateral_floor={(NETWORK, None): 5}).collateral_floor == {
        (NETWORK, USDC): 5
    }
    for bad in (
        {"collateral_floor": 0},
        {"collateral_floor": {("eip155:1", None): 5}},  # an unknown network
        {"invalid_payments_per_ip": 0},
        {"default": -1},
        {"withdrawal_requested": True},
        {"settlement_deadline": -1},
        {"invalid_window": 0},
        {"interval": 100_000},
        # beyond the database's 64-bit integers: no check could ever compare it
        {"collateral_floor": 2**63},
        {"collateral_floor": {(NETWORK, None): 10**30}},
        {"withdrawal_requested": 2**63},
        {"default": 10**30},
        {"reconciler_backlog": 2**63},
    ):
        with pytest.raises(ConfigurationError):
            AlertRules(**bad)
    for text in ("nope=1", "default", "default=x", "default=1.5", "settlement_deadline=5y"):
        with pytest.raises(ConfigurationError):
            AlertRules.parse(text)
    assert AlertRules().database_rules == [] and AlertRules().payment_rules == []
    assert AlertRules(collateral_floor=2**63 - 1, default=2**63 - 1).default == 2**63 - 1


@pytest.mark.parametrize("name", ["settlement_deadline", "reconciler_backlog_age"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_duration_that_is_no_number_of_seconds_is_refused(name: str, value: float) -> None:
    """NaN and infinity passed the "≥ 0" check: a NaN settlement deadline never fired on
    SQLite (NULL compares with nothing) and fired at once on PostgreSQL (NaN is above every
    number); a NaN backlog age fired on the first open follow-up, whatever its age. The
    operator believed a rule on that was not what it said. A 400-digit number parsed from
    ``--alerts`` is infinity too."""
    with pytest.raises(ConfigurationError, match=name):
        AlertRules(**{name: value})
    with pytest.raises(ConfigurationError, match=name):
        AlertRules.parse(f"{name}={'9' * 400}")


def test_collateral_floor_fires_once_per_crossing(world: World) -> None:
    rules = AlertRules(collateral_floor=5_000)
    buyer = world.buyer(10_000)
    assert world.fired(rules) == []
    world.pay(buyer, 3_000)  # free 7 000
    assert world.fired(rules) == []
    second = world.pay(buyer, 3_000)  # free 4 000: crosses
    [alert] = world.core.check_alerts(rules)
    assert (alert.rule, alert.subject, alert.value, alert.threshold) == (
        "collateral_floor",
        position(buyer.address),
        4_000,
        5_000,
    )
    assert (alert.network, alert.asset, alert.address) == (NETWORK, USDC, buyer.address)
    third = world.pay(buyer, 1_000)  # still under: no second firing
    assert world.fired(rules) == [] and world.fired(rules) == []
    world.core.void(second, by=world.seller)
    world.core.void(third, by=world.seller)  # free 7 000: cleared, armed again
    assert world.fired(rules) == []
    world.pay(buyer, 4_000)  # free 3 000: the second crossing
    assert world.fired(rules) == [("collateral_floor", position(buyer.address))]
    assert world.fired(rules) == []
    assert [(e["rule"], e["value"], e["locked"]) for e in world.events()] == [
        ("collateral_floor", 4_000, 6_000),
        ("collateral_floor", 3_000, 7_000),
    ]
    # A floor per asset: another asset's floor leaves USDC alone.
    assert world.fired(AlertRules(collateral_floor={(NETWORK, "0x" + "77" * 20): 9_999})) == []


def test_a_missed_settlement_deadline_fires_once_per_crossing(world: World) -> None:
    rules = AlertRules(settlement_deadline=5)
    late, punctual = world.buyer(), world.buyer()
    world.pay(late, 1_000)
    world.pay(punctual, 500)
    first = world.resolve_cycle()  # payment deadline: now + 10
    world.core.pay_net_debit(first, punctual.address)
    assert world.fired(rules) == []
    world.clock.advance(14)  # 4 s past the deadline: within the grace
    assert world.fired(rules) == []
    world.clock.advance(1)
    [alert] = world.core.check_alerts(rules)
    assert (alert.subject, alert.value, alert.threshold) == (position(late.address), 5, 5)
    assert dict(alert.detail) == {"cycle_ids": [first], "unpaid": 1_000}
    assert world.fired(rules) == []
    world.core.pay_net_debit(first, late.address)  # paid late, before finality: cleared
    assert world.fired(rules) == []
    world.pay(late, 2_000)
    second = world.resolve_cycle()  # and finalises the first, paid in full
    world.clock.advance(15)
    assert world.fired(rules) == [("settlement_deadline", position(late.address))]
    assert world.fired(rules) == []
    world.clock.advance(10)
    assert world.core.tick()["finalized"] == 1  # finality: a default now, no longer late
    assert world.fired(rules) == []
    assert [(e["cycle_ids"], e["unpaid"]) for e in world.events()] == [
        ([first], 1_000),
        ([second], 2_000),
    ]


def test_each_default_fires_once(world: World) -> None:
    rules = AlertRules(default=0)
    debtor, payer = world.buyer(), world.buyer()
    world.pay(debtor, 1_000)
    world.pay(payer, 700)
    first = world.resolve_cycle()
    world.core.pay_net_debit(first, payer.address)
    world.clock.advance(20)
    assert world.core.tick()["finalized"] == 1
    assert world.fired(AlertRules(default=1_001)) == []  # less unpaid than that threshold
    [alert] = world.core.check_alerts(rules)
    assert (alert.subject, alert.value, alert.address) == (
        f"{first}/{debtor.address}",
        1_000,
        debtor.address,
    )
    assert dict(alert.detail) == {"cycle_id": first, "covered": 1_000, "shortfall": 0}
    assert world.fired(rules) == [] and world.fired(rules) == []  # a default never clears
    world.pay(debtor, 300)
    second = world.resolve_cycle()
    world.clock.advance(20)
    world.core.tick()
    assert world.fired(rules) == [("default", f"{second}/{debtor.address}")]
    assert world.fired(rules) == []
    assert [e["subject"] for e in world.events()] == [
        f"{first}/{debtor.address}",
        f"{second}/{debtor.address}",
    ]


def test_a_default_fires_once_however_the_checks_fall_around_its_cycle(world: World) -> None:
    """A check reads only the cycles that were not final at its last one: a default made
    final after a check (its cycle resolved, or still open, then) fires at the next; another
    process's checker, starting from the first cycle, fires none twice."""
    rules = AlertRules(default=0)
    debtor = world.buyer()
    world.pay(debtor, 1_000)
    assert world.fired(rules) == []  # the cycle is open
    first = world.resolve_cycle()
    assert world.fired(rules) == []  # resolved, not final
    world.pay(debtor, 400)  # in the next cycle, open meanwhile
    world.clock.advance(20)
    assert world.core.tick()["finalized"] == 1
    assert world.fired(AlertRules(default=5_000)) == []  # another threshold reads on its own
    assert world.fired(rules) == [("default", f"{first}/{debtor.address}")]
    second = world.resolve_cycle()
    world.clock.advance(20)
    world.core.tick()
    other = Core(world.url, config=FAST, clock=world.clock)  # another process
    try:
        assert other.check_alerts(rules)[0].subject == f"{second}/{debtor.address}"
        assert other.check_alerts(rules) == []
    finally:
        other.close()
    assert world.fired(rules) == [] and world.fired(AlertRules(default=300)) == []
    assert [(e["subject"], e["value"]) for e in world.events()] == [
        (f"{first}/{debtor.address}", 1_000),
        (f"{second}/{debtor.address}", 400),
    ]


def test_withdrawal_requests_fire_while_pending(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    rules = AlertRules(withdrawal_requested=1_000)
    buyer = world.buyer(10_000)
    world.core.request_withdrawal(buyer.address, 500, network=NETWORK)  # under the threshold
    assert world.fired(rules) == []
    big = world.core.request_withdrawal(buyer.address, 2_000, network=NETWORK)
    with caplog.at_level(logging.WARNING, logger="fourmica_x402.alerts"):
        assert world.fired(rules) == [("withdrawal_requested", str(big.withdrawal_id))]
    [line] = [r.getMessage() for r in caplog.records if r.name == "fourmica_x402.alerts"]
    assert line.startswith(f"alert withdrawal_requested fired: {big.withdrawal_id} value=2000")
    assert "threshold=1000" in line and f"withdrawal_id={big.withdrawal_id}" in line
    assert world.fired(rules) == []
    world.core.cancel_withdrawal(big.withdrawal_id)
    assert world.fired(rules) == []
    again = world.core.request_withdrawal(buyer.address, 3_000, network=NETWORK)
    assert world.fired(rules) == [("withdrawal_requested", str(again.withdrawal_id))]
    world.clock.advance(100)
    world.core.finalize_withdrawal(again.withdrawal_id)
    assert world.fired(rules) == [] and world.fired(rules) == []
    [first, second] = world.events()
    assert (first["value"], first["threshold"], second["value"]) == (2_000, 1_000, 3_000)
    assert second["available_at"] == START + 100


def test_the_reconciler_backlog_fires_once_per_crossing(world: World) -> None:
    rules = AlertRules(reconciler_backlog=2, reconciler_backlog_age=60)
    assert world.fired(rules) == []  # no records in this database yet
    records = Records(world.core.store)
    records.add_followup("0x" + "01" * 32, world.seller, "refund")
    now = time.time()
    assert world.fired(rules, now=now) == []
    records.add_followup("0x" + "02" * 32, world.seller, "score", 100)
    assert world.fired(rules, now=now) == [("reconciler_backlog", "open")]
    assert world.fired(rules, now=now + 61) == [("reconciler_backlog_age", "oldest")]
    assert world.fired(rules, now=now + 120) == []
    records.update_followup("0x" + "01" * 32, status="voided")
    records.update_followup("0x" + "02" * 32, status="scored")
    assert world.fired(rules, now=now + 121) == []  # both cleared
    records.add_followup("0x" + "03" * 32, world.seller, "refund")
    records.add_followup("0x" + "04" * 32, world.seller, "refund")
    assert world.fired(rules, now=time.time()) == [("reconciler_backlog", "open")]
    assert [(e["rule"], e["value"]) for e in world.events()][::2] == [
        ("reconciler_backlog", 2),
        ("reconciler_backlog", 2),
    ]


# -- once in total, whatever the number of processes ----------------------------------------------


def test_cores_on_one_database_checking_at_once_fire_a_crossing_once(world: World) -> None:
    rules = AlertRules(collateral_floor=5_000, withdrawal_requested=0)
    others = [Core(world.url, config=FAST, clock=world.clock) for _ in range(3)]
    cores = [world.core, *others]
    buyer = world.buyer(10_000)

    def check_all() -> list[Alert]:
        barrier, fired, lock = threading.Barrier(len(cores)), [], threading.Lock()

        def run(core: Core) -> None:
            barrier.wait(10)
            got = core.check_alerts(rules)
            with lock:
                fired.extend(got)

        threads = [threading.Thread(target=run, args=(c,)) for c in cores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return fired

    try:
        for _ in range(3):  # three crossings, each fired once in total
            gid = world.pay(buyer, 6_000)
            withdrawal = world.core.request_withdrawal(buyer.address, 100, network=NETWORK)
            fired = check_all()
            assert sorted(a.rule for a in fired) == ["collateral_floor", "withdrawal_requested"]
            assert check_all() == []
            world.core.void(gid, by=world.seller)
            world.core.cancel_withdrawal(withdrawal.withdrawal_id)
            assert check_all() == []  # cleared, by whichever got there first
        assert len(world.events()) == 6
    finally:
        for core in others:
            core.close()


# -- the event: stored with the flip, delivered by webhooks, signed ------------------------------


def test_the_alert_event_reaches_a_webhook_subscriber_signed(world: World) -> None:
    sent: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    client = httpx.Client(transport=httpx.MockTransport(receive))
    hooks = Webhooks(world.core, client=client, clock=world.clock)
    sub = hooks.subscribe("https://hooks.example/alerts", events=["alert.fired"])
    seen: list[str] = []
    world.core.subscribe(lambda event: seen.append(event.type))
    buyer = world.buyer(10_000)
    world.core.request_withdrawal(buyer.address, 1_000, network=NETWORK)
    [alert] = world.core.check_alerts(AlertRules(withdrawal_requested=0))
    assert seen == ["collateral.deposited", "withdrawal.requested", "alert.fired"]
    assert hooks.run_once() == 1 and hooks.run_once() == 0
    [request] = sent
    headers, body = request.headers, request.content
    assert headers["x-fourmica-event"] == "alert.fired"
    assert verify_signature(
        sub.secret,
        headers["x-fourmica-timestamp"],
        body,
        headers["x-fourmica-signature"],
        now=world.clock(),
    )
    event = json.loads(body)
    assert (event["type"], event["address"], event["network"]) == (
        "alert.fired",
        buyer.address,
        NETWORK,
    )
    assert event["data"] == {**alert.data(), "available_at": START + 100}
    assert [d.status for d in hooks.deliveries()] == ["delivered"]
    hooks.close()


# -- invalid payments: counted by the process that refused them -----------------------------------


def request(client: str = "10.0.0.1", path: str = "/premium", **headers: str) -> RequestView:
    return RequestView("GET", path, path, "", tuple(headers.items()), client=client)


def test_invalid_payments_fire_once_per_crossing_of_the_window(world: World) -> None:
    now = [0.0]
    calls: list[str] = []
    hook = InvalidPaymentAlerts(
        AlertRules(invalid_payments_per_ip=3, invalid_payments_per_route=4, invalid_window=10),
        core=world.core,
        route_of=lambda r: "GET /premium",
        then=lambda req, err: calls.append(err.reason) or "then's answer",
        clock=lambda: now[0],
    )
    bad = MalformedPayment("garbage")
    assert hook(request(), bad) == "then's answer"
    hook(request(), bad)
    assert hook.observe(request(), "malformed_payment") != []  # the third: the IP crosses
    assert [a.rule for a in hook.observe(request(), "malformed_payment")] == [
        "invalid_payments_per_route"
    ]
    assert hook.observe(request(), "malformed_payment") == []  # both still over
    hook(request("10.0.0.2"), bad)  # another address: its own count
    hook(request(), Unavailable("down"))  # a facilitator down is no invalid payment
    now[0] = 5.0
    assert hook.observe(request(), "malformed_payment") == []
    now[0] = 14.9  # the hits of t=0 left the window: one left (t=5), armed again
    assert hook.observe(request(), "malformed_payment") == []
    assert [a.subject for a in hook.observe(request(), "malformed_payment")] == ["10.0.0.1"]
    assert calls == ["malformed_payment"] * 3 + ["facilitator_unavailable"]
    world.core.store.deferred.drain()  # written off the request's path
    got = [(e["rule"], e["subject"], e["value"], e["reason"]) for e in world.events()]
    assert got == [
        ("invalid_payments_per_ip", "10.0.0.1", 3, "malformed_payment"),
        ("invalid_payments_per_route", "GET /premium", 4, "malformed_payment"),
        ("invalid_payments_per_ip", "10.0.0.1", 3, "malformed_payment"),
    ]


def test_a_stream_of_new_addresses_past_the_key_cap_is_not_swept_on_every_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the cap on keys a window swept its stale keys; one new address a second, each one
    stale a window later, left one stale key per sweep, so every refusal from then on read
    every key (100 000 of them), under the lock every refusal takes."""
    from fourmica_x402 import alerts

    monkeypatch.setattr(alerts, "MAX_KEYS", 100)
    read: list[int] = []
    sweep = alerts._Window._sweep

    def counted(self: Any, now: float) -> None:
        read.append(len(self._hits))
        sweep(self, now)

    monkeypatch.setattr(alerts._Window, "_sweep", counted)
    now = [0.0]
    hook = InvalidPaymentAlerts(
        AlertRules(invalid_payments_per_ip=2, invalid_window=100), clock=lambda: now[0]
    )
    for i in range(1_000):
        now[0] = float(i)
        hook.observe(request(f"10.0.{i // 250}.{i % 250}"), "malformed_payment")
    window = hook._windows["invalid_payments_per_ip"]
    assert len(window._hits) <= 100
    assert sum(read) <= 3 * 1_000  # a key read a few times in all, not once per refusal


def test_invalid_payments_from_one_ipv6_site_count_as_one_address(world: World) -> None:
    """A sender rotating through its IPv6 /64 (one host's or site's share) was a new address
    at every payment: the per-IP rule never fired, while the throttle counts that /64 as one
    sender (docs/protocol.md, "Reason codes")."""
    hook = InvalidPaymentAlerts(AlertRules(invalid_payments_per_ip=3), core=world.core)
    bad = MalformedPayment("garbage")
    for n in range(1, 3):
        hook(request(f"2001:db8:1:2::{n}"), bad)
    [alert] = hook.observe(request("2001:db8:1:2::ff"), "malformed_payment")
    assert (alert.rule, alert.subject, alert.value) == (
        "invalid_payments_per_ip",
        "2001:db8:1:2::/64",
        3,
    )
    assert hook.observe(request("2001:db8:1:3::1"), "malformed_payment") == []  # another /64
    assert hook.observe(request("10.0.0.1"), "malformed_payment") == []  # IPv4 as it is


def test_only_a_signed_refusal_counts_against_its_payer(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from fourmica_x402.wire import PaymentPayloadV1, encode_header

    buyer = TestBuyer.new()
    signed, _ = buyer.pay(world.core, world.seller, 1_000)
    payload = PaymentPayloadV1(
        x402Version=1, scheme="4mica-credit", network=NETWORK, payload=signed.to_json()
    )
    header = {"x-payment": encode_header(payload)}
    hook = InvalidPaymentAlerts(AlertRules(invalid_payments_per_payer=2))  # no Core: logs only
    for _ in range(3):  # anyone can name a payer in a bad signature: not counted
        hook(request(**header), GuaranteeRejected(reason=Reason.INVALID_SIGNATURE))
    hook(request(**header), GuaranteeRejected(reason=Reason.INSUFFICIENT_COLLATERAL))
    with caplog.at_level(logging.WARNING, logger="fourmica_x402.alerts"):
        [alert] = hook.observe(request("10.9.9.9", **header), Reason.INSUFFICIENT_COLLATERAL)
    assert (alert.subject, alert.address, alert.value) == (buyer.address, buyer.address, 2)
    assert f"alert invalid_payments_per_payer fired: {buyer.address} value=2" in caplog.text
    assert world.events() == []


@pytest.mark.postgres
def test_a_default_of_a_cycle_committed_after_a_later_one_still_fires(postgres_url: str) -> None:
    """PostgreSQL hands out cycle ids as rows are inserted, not as they commit: a cycle opened
    (id 1) in a transaction that committed after another asset's (id 2) was not yet visible to
    a check, whose floor became 2; the floor only rose from there, so that cycle's default,
    final later, was never read by this process's checks again."""
    import psycopg

    core = Core(postgres_url, config=FAST, clock=FakeClock(1_800_000_000))
    rules = AlertRules(default=1)
    debtor = TestBuyer.new().address
    insert = (
        "INSERT INTO fx_cycles (network, asset, status, opened_at, closes_at) "
        "VALUES (%s, %s, 'open', 0, 1e12) RETURNING cycle_id"
    )
    try:
        with psycopg.connect(postgres_url) as late, psycopg.connect(postgres_url) as other:
            other.autocommit = True
            [(first,)] = late.execute(insert, (NETWORK, "0xasset-a")).fetchall()  # not committed
            [(second,)] = other.execute(insert, (NETWORK, "0xasset-b")).fetchall()
            assert first < second
            assert core.check_alerts(rules) == []  # sees the second only
            late.commit()
            assert core.check_alerts(rules) == []  # the first is open now
            other.execute("UPDATE fx_cycles SET status = 'final' WHERE cycle_id = %s", (first,))
            other.execute(
                "INSERT INTO fx_cycle_positions (cycle_id, address, gross_in, gross_out, net, "
                "role, debit, status) VALUES (%s, %s, 0, 900, -900, 'debtor', 900, 'defaulted')",
                (first, debtor),
            )
            assert [a.subject for a in core.check_alerts(rules)] == [f"{first}/{debtor}"]
    finally:
        core.close()
