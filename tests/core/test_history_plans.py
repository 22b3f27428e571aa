"""What a long history costs: the statements a running seller repeats (each paid request,
each tick of the cycle loop) find their rows through an index, never by reading every
guarantee, record or event ever written (SQLite's plans, read with EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

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


def _plan(conn: sqlite3.Connection, seen: list[str]) -> list[str]:
    return [
        str(row[-1])
        for s in seen
        if s.split()[0].upper() in ("SELECT", "WITH")
        for row in conn.execute("EXPLAIN QUERY PLAN " + s).fetchall()
    ]


def test_the_newest_guarantees_read_only_their_page(tmp_path: Path) -> None:
    """The dashboard's 25 newest guarantees and each page of ``/api/guarantees`` sorted every
    guarantee ever accepted to keep the first few (a temporary b-tree of the whole history on
    each refresh): they are now read in the order of an index and no further than the page,
    and the next page starts at the key of the previous one's last guarantee (``before``)."""
    clock = FakeClock(1_800_000_000)
    core, _ = history(tmp_path, clock)
    try:
        conn = core.store._connection()  # type: ignore[attr-defined]
        last = core.guarantees(limit=5)[-1].guarantee_id
        for step in (lambda: core.guarantees(limit=5), lambda: core.guarantees(before=last)):
            with statements(conn) as seen:
                step()
            plan = _plan(conn, seen)
            assert not any("TEMP B-TREE" in p for p in plan), plan
            assert not [p for p in plan if p.startswith("SCAN") and "_recent" not in p], plan
    finally:
        core.close()


def test_pages_of_guarantees_walk_the_listing_once(tmp_path: Path) -> None:
    """Pages chained by ``before`` give the one long listing, ties on the acceptance time
    (a whole second of them) included; a ``before`` naming no guarantee is refused."""
    from fourmica_x402.errors import CoreError

    clock = FakeClock(1_800_000_000)
    core, buyer = history(tmp_path, clock, n=12)  # twelve in one second
    try:
        for _ in range(5):
            clock.advance(1)
            core.accept(*buyer.pay(core, SELLER, 7))
        everything = [g.guarantee_id for g in core.guarantees(limit=100)]
        assert len(everything) == 17
        pages: list[str] = []
        before = None
        while page := core.guarantees(limit=4, before=before):
            pages += [g.guarantee_id for g in page]
            before = page[-1].guarantee_id
        assert pages == everything
        mine = [g.guarantee_id for g in core.guarantees(address=buyer.address, limit=100)]
        assert mine == everything
        assert [
            g.guarantee_id
            for g in core.guarantees(address=buyer.address, limit=3, before=everything[5])
        ] == everything[6:9]
        try:
            core.guarantees(before="0x" + "00" * 32)
        except CoreError as exc:
            assert (exc.reason, exc.status) == ("unknown_guarantee", 404)
        else:
            raise AssertionError("a page after no guarantee")
    finally:
        core.close()


def test_an_address_finds_its_tabs_as_payer_through_an_index(tmp_path: Path) -> None:
    """``?address=`` starts from the address's tabs, as payer or payee: the payer side had
    no index, so each such read went through every tab ever opened."""
    clock = FakeClock(1_800_000_000)
    core, buyer = history(tmp_path, clock, n=3)
    try:
        conn = core.store._connection()  # type: ignore[attr-defined]
        with statements(conn) as seen:
            assert len(core.guarantees(address=buyer.address)) == 3
        plan = _plan(conn, seen)
        assert not [p for p in plan if p.startswith("SCAN fx_tabs")], plan
    finally:
        core.close()


def test_a_scrape_reads_the_tabs_not_every_guarantee(tmp_path: Path) -> None:
    """``/metrics`` (every 15 s, by every gate and the service) and the dashboard counted and
    summed every guarantee ever accepted per seller, and every pair of every closed cycle:
    the tabs keep their guarantees' count and running total, and each close adds its pairs
    to its payees' totals, so a scrape reads one row per tab and per seller."""
    clock = FakeClock(1_800_000_000)
    core, _ = history(tmp_path, clock)
    try:
        core.close_cycle(network=NETWORK)
        conn = core.store._connection()  # type: ignore[attr-defined]
        with statements(conn) as seen:
            [seller] = core.signals().sellers
        assert (seller.seller, seller.guarantees, seller.amount, seller.payers) == (
            SELLER,
            30,
            30_000,
            1,
        )
        assert (seller.cycles, seller.cycle_payers, seller.cycle_guarantees) == (1, 1, 20)
        plan = _plan(conn, seen)
        assert not [p for p in plan if "fx_guarantees" in p or p.startswith("SCAN p")], plan
    finally:
        core.close()


class _Spy:
    """A transaction that notes the statements read through it."""

    def __init__(self, tx: Any) -> None:
        self.tx, self.seen = tx, []  # type: list[tuple[str, Any]]

    def one(self, sql: str, params: Any = ()) -> Any:
        return self.tx.one(sql, params)

    def all(self, sql: str, params: Any = ()) -> Any:
        self.seen.append((sql, params))
        return self.tx.all(sql, params)


@pytest.mark.postgres
def test_postgresql_reads_the_newest_guarantees_in_its_index_order(postgres_url: str) -> None:
    """On PostgreSQL too the page comes off the index in order (its guarantee ids compared
    in byte order, as the listing sorts them), never a sort of every guarantee."""
    from fourmica_x402.core import queries

    clock = FakeClock(1_800_000_000)
    core = Core(postgres_url, clock=clock)
    buyer = TestBuyer.new()
    try:
        core.deposit(buyer.address, 10**9, network=NETWORK)
        for _ in range(3):
            core.accept(*buyer.pay(core, SELLER, 1_000))
        last = core.guarantees(limit=1)[0].guarantee_id
        for before in (None, last):
            with core.store.transaction(write=False) as tx:
                spy = _Spy(tx)
                queries.guarantees(spy, None, None, None, 2, before)  # type: ignore[arg-type]
                [(sql, params)] = spy.seen
                tx.execute("SET LOCAL enable_seqscan = off")  # as on a table of millions
                plan = " | ".join(str(r[0]) for r in tx.all("EXPLAIN " + sql, params))
            assert "fx_guarantees_recent" in plan and "Sort" not in plan, plan
    finally:
        core.close()


def test_pages_skip_and_repeat_nothing_while_new_guarantees_arrive(tmp_path: Path) -> None:
    """A client paging back while buyers keep paying (in the same second as the ten at the
    start, and later): every guarantee there was at the first page shows up once, none twice;
    a newer one heads page one."""
    clock = FakeClock(1_800_000_000)
    core, buyer = history(tmp_path, clock, n=10)  # ten in one second
    try:
        there = {g.guarantee_id for g in core.guarantees(limit=100)}
        seen: list[str] = []
        before = None
        while page := core.guarantees(limit=3, before=before):
            seen += [g.guarantee_id for g in page]
            before = page[-1].guarantee_id
            core.accept(*buyer.pay(core, SELLER, 7))  # in the second of the ten: anywhere in it
            clock.advance(0.25)
            new = core.accept(*buyer.pay(core, SELLER, 7)).guarantee_id  # later: page one's head
            assert core.guarantees(limit=1)[0].guarantee_id == new
        assert len(seen) == len(set(seen))
        assert there <= set(seen)
    finally:
        core.close()
