"""What a long history costs: the statements a running seller repeats (each paid request,
each tick of the cycle loop) find their rows through an index, never by reading every
guarantee, record or event ever written (SQLite's plans, read with EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer, test_policy

SELLER = TestBuyer.new().address
#: Tables whose rows grow with every paid request.
HISTORY = ("fx_guarantees", "fx_records", "fx_events", "fx_flows", "fx_stream_slices")


@contextmanager
def statements(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """Every statement ``conn`` runs meanwhile, with its parameters written in."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def scans(conn: sqlite3.Connection, sql: list[str]) -> list[tuple[str, str]]:
    """The (statement, plan step) pairs that read a history table from end to end."""
    found = []
    for s in sql:
        if s.split()[0].upper() not in ("SELECT", "UPDATE", "DELETE", "WITH", "INSERT"):
            continue
        for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall():
            step = str(row[-1])
            if step.startswith("SCAN") and any(f" {t}" in f" {step[5:]}" for t in HISTORY):
                found.append((s[:120], step))
    return found


def history(tmp_path: Path, clock: FakeClock, n: int = 30) -> tuple[Core, TestBuyer]:
    core = Core(str(tmp_path / "core.db"), clock=clock)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**12, network=NETWORK)
    for i in range(n):  # payable ones, and some awaiting a validator's score
        policy = test_policy() if i % 3 == 0 else None
        core.accept(*buyer.pay(core, SELLER, 1_000, policy=policy))
    return core, buyer


def run(core: Core, step: Callable[[], Any]) -> list[tuple[str, str]]:
    conn = core.store._connection()  # type: ignore[attr-defined]
    with statements(conn) as seen:
        step()
    return scans(conn, seen)


def test_expiring_validations_reads_only_the_pending_ones(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    core, _ = history(tmp_path, clock)
    try:
        # Every tick of the cycle loop (and a gate's follow-ups) run this in a write
        # transaction: read in guarantee-id order off the unique index, it went through
        # every guarantee ever accepted while paid requests waited for the lock.
        assert run(core, core.expire_validations) == []
        clock.advance(10 * 86_400)
        assert run(core, core.tick) == []
    finally:
        core.close()


def test_a_gates_start_up_recovery_reads_only_the_unfinished_records(tmp_path: Path) -> None:
    """Every worker a server boots (gunicorn's, a restart, a recycle) runs the recovery of what
    a dead process left: its statements read every record ever written, so a worker's start
    grew with the seller's whole history."""
    from fourmica_x402 import PaymentConfig
    from fourmica_x402.gate import Gate
    from fourmica_x402.gate.background import recover, recover_apart, recover_unsettled

    pay_to = "0x" + "22" * 20
    for shared, settle in ((True, "before"), (False, "after")):
        db = tmp_path / f"{settle}.db"
        core = Core(str(db))
        records = None if shared else str(tmp_path / f"{settle}-records.db")
        config = PaymentConfig(
            pay_to=pay_to, core=core, routes={"GET /p": "$0.01"}, settle=settle,  # type: ignore[arg-type]
            records=records,
        )  # fmt: skip
        gate = Gate(config)
        try:
            conn = gate.records.store._connection()  # type: ignore[attr-defined]
            steps = (recover,) if shared else (recover_unsettled, recover_apart)
            with statements(conn) as seen:
                for step in steps:
                    step(gate)
            plans = [
                (s[:80], str(row[-1]))
                for s in seen
                if s.split()[0].upper() in ("SELECT", "UPDATE")
                for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
                if str(row[-1]).startswith("SCAN")  # "SCAN r": an alias of fx_records
            ]
            assert seen and plans == []
        finally:
            gate.records.store.close()
            core.close()


def test_a_jobs_start_up_reads_only_the_jobs_without_a_seller(tmp_path: Path) -> None:
    """Every gate selling staged work opens :class:`Jobs` at its start, which looks for open
    jobs whose seller was never named: with every job named, that look read every job ever
    opened, so each worker's boot grew with the seller's history of staged work."""
    from fourmica_x402.core.store import open_store
    from fourmica_x402.jobs import Jobs, Stage
    from fourmica_x402.records import Records

    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        Records(store)  # a gate's records share the database: their schema is there
        jobs = Jobs(store)
        for _ in range(5):
            jobs.open(Stage("report", 1, of=3), "0x" + "11" * 20, None, 1_000, pay_to=SELLER)
        conn = store._connection()  # type: ignore[attr-defined]
        with statements(conn) as seen:
            Jobs(store)
        plans = [
            (s[:80], str(row[-1]))
            for s in seen
            if s.split()[0].upper() in ("SELECT", "UPDATE")
            for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
            if str(row[-1]).startswith("SCAN")
        ]
        assert seen and plans == []
    finally:
        store.close()


@contextmanager
def five_events_queued(tmp_path: Path) -> Iterator[Any]:
    """A webhook worker on a fresh Core, its receiver answering 200, five events queued."""
    import httpx

    from fourmica_x402.webhooks import Webhooks

    clock = FakeClock(1_800_000_000)
    core = Core(str(tmp_path / "core.db"), clock=clock)
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    hooks = Webhooks(core, client=client, clock=clock)
    try:
        hooks.subscribe("https://hooks.example/in", ["*"], "s3cret")
        for _ in range(5):
            core.deposit(SELLER, 100, network=NETWORK)
        hooks.enqueue()
        yield hooks
    finally:
        client.close()
        core.close()


def test_the_delivery_log_by_status_reads_only_deliveries_in_that_status(tmp_path: Path) -> None:
    """``GET /admin/webhooks/deliveries?status=failed`` (and ``pending``): read newest first
    through the whole outbox, the few failed deliveries were found only after every delivered
    one ever made, a page that grew with every event the service sent."""
    with five_events_queued(tmp_path) as hooks:
        hooks.deliver_due()
        conn = hooks.store._connection()  # type: ignore[attr-defined]
        for status in ("failed", "pending", "delivered"):
            with statements(conn) as seen:
                hooks.deliveries(status=status, limit=20)
            plans = [
                (s[:80], str(row[-1]))
                for s in seen
                if s.startswith("SELECT")
                for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
                if str(row[-1]).startswith("SCAN")  # "SCAN d": the outbox, by its alias
            ]
            assert seen and plans == [], status


def test_a_webhook_round_reads_only_due_and_aged_deliveries(tmp_path: Path) -> None:
    """Each round of the worker fails the deliveries pending past ``max_age``: found through
    the outbox's age index, not by reading a dead receiver's whole backlog every round."""
    with five_events_queued(tmp_path) as hooks:
        conn = hooks.store._connection()  # type: ignore[attr-defined]
        with statements(conn) as seen:
            hooks.deliver_due()
        plans = [
            (s[:80], str(row[-1]))
            for s in seen
            if s.split()[0].upper() in ("SELECT", "UPDATE")
            for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
            # a scan, or every pending delivery through the index of the log by status
            if str(row[-1]).startswith("SCAN fx_webhook_deliveries")
            or "fx_webhook_deliveries_status (status=?)" in str(row[-1])
        ]
        assert any("max_age" in s for s in seen) and plans == []


def test_a_gate_reading_a_price_change_reads_each_routes_last_change_only(tmp_path: Path) -> None:
    """Each process serving the app reads the price book when it changed (on the request that
    finds its poll due): it read every change ever made and replayed them, so a seller whose
    prices change every minute paid, on a request, for its whole repricing history."""
    from fourmica_x402.core.store import open_store
    from fourmica_x402.gate.prices import PriceBook

    store = open_store(f"sqlite:///{tmp_path / 'prices.db'}")
    try:
        book = PriceBook(store)
        for cents in range(1, 6):
            book.set({"GET /a": f"${cents / 100}", "GET /b": f"${cents / 100}"}, source="test")
        book.set({"GET /b": None, "GET /c": "$0.07"}, source="test")
        conn = store._connection()  # type: ignore[attr-defined]
        with statements(conn) as seen:
            last, prices = book.current()
        assert (last, prices) == (12, {"GET /a": "$0.05", "GET /c": "$0.07"})
        plans = [
            (s[:80], str(row[-1]))
            for s in seen
            if s.split()[0].upper() in ("SELECT", "WITH")
            for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
            if str(row[-1]).startswith("SCAN fx_prices")
        ]
        assert seen and plans == []
    finally:
        store.close()


def test_the_default_alert_reads_only_the_cycles_finalised_since_its_last_check(
    tmp_path: Path,
) -> None:
    """Every check of the ``default`` rule (every 10 s, in every gate) read every defaulted
    position ever, and one alert state per row; one under the threshold, never alerted, was
    read again on every check for good. Now a check starts at the oldest cycle that was not
    final at the last one."""
    from fourmica_x402.core import AlertRules, CoreConfig

    clock = FakeClock(1_800_000_000)
    config = CoreConfig(cycle_window=86_400, resolution_delay=10, payment_window=10, finality=10)
    core = Core(str(tmp_path / "core.db"), config=config, clock=clock)
    rules = AlertRules(default=500)
    try:
        cycles = []
        for amount in (1_000, 100, 100):  # one default over the threshold, two under it
            buyer = TestBuyer.new()
            core.deposit(buyer.address, 10_000, network=NETWORK)
            core.accept(*buyer.pay(core, SELLER, amount))
            cycles.append(core.close_cycle(network=NETWORK).cycle_id)
            clock.advance(40)
            core.tick()
            core.tick()
        assert [a.value for a in core.check_alerts(rules)] == [1_000]
        conn = core.store._connection()  # type: ignore[attr-defined]
        with statements(conn) as seen:
            assert core.check_alerts(rules) == []
        [read] = [s for s in seen if "p.status = 'defaulted'" in s]
        assert f"p.cycle_id >= {max(cycles) + 1} " in read  # none of the old cycles
        plan = [str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + read).fetchall()]
        assert any("fx_cycle_positions_defaulted (cycle_id>?)" in step for step in plan), plan
    finally:
        core.close()
