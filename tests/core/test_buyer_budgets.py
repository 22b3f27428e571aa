"""Budgets kept in the receipts ledger (docs/buyer.md, "Budgets"): they survive a restart, and
processes sharing one ledger file never overspend together. Real SQLite files, real processes."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fourmica_x402.client import BuyerFlow, ReceiptLedger, SpendingPolicy
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, TEST_KEYS

WORKER = Path(__file__).parent / "workers" / "budget_worker.py"
USDC = default_asset(NETWORK).address
SELLER = "0x" + "11" * 20


def ask(
    policy: SpendingPolicy,
    amount: int = 10_000,
    seller: str = SELLER,
    *,
    network: str = NETWORK,
    asset: str | None = None,
) -> str:
    """One payment decision; an approved one is committed, as a sent guarantee is."""
    asset = asset or default_asset(network).address
    decision = policy.check(seller=seller, url="u", amount=amount, asset=asset, network=network)
    if decision.reservation is not None:
        policy.commit(decision.reservation)
    return decision.outcome


@pytest.mark.slow
def test_four_processes_sharing_a_ledger_never_pass_the_cap(tmp_path: Path) -> None:
    ledger_file = tmp_path / "agent.db"
    ReceiptLedger(ledger_file).close()  # the file exists before the race
    go = tmp_path / "go"
    cap, amount, attempts = 100_000, 7_000, 10  # 40 tries of 7000 for 100000: 14 fit
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(ledger_file),
                str(go),
                str(attempts),
                str(amount),
                str(cap),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(0.5)  # let every worker open the ledger and wait at the line
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    won = sum(r["won"] for r in results)
    assert won == cap // amount == 14, results
    assert sum(r["refused"] for r in results) == 4 * attempts - won
    # Every process saw the others: the ledger holds exactly the committed spending.
    restarted = SpendingPolicy(per_hour=cap, ledger=ReceiptLedger(ledger_file))
    assert restarted.spent(USDC) == won * amount <= cap
    assert ask(restarted, amount) == "budget_exhausted"
    assert ask(restarted, cap - won * amount) == "paid"  # what is left still fits


def test_a_decision_waits_for_another_process_write_and_sees_it(tmp_path: Path) -> None:
    """Check and reserve are one write transaction: while another connection to the file is
    mid-decision (its reservation not yet committed), a decision elsewhere waits, then sees it."""
    import sqlite3

    ledger_file = tmp_path / "agent.db"
    made = ReceiptLedger(ledger_file)
    SpendingPolicy(ledger=made)  # makes the spending table
    made.close()
    other = sqlite3.connect(ledger_file, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute(
        "INSERT INTO spending (at, seller, asset, amount, task, state) "
        "VALUES (?, ?, ?, '100000', NULL, 'reserved')",
        (time.time(), SELLER, USDC.lower()),
    )
    go = tmp_path / "go"
    go.touch()
    args = [str(ledger_file), str(go), "1", "7000", "100000"]
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.5)
        assert worker.poll() is None, "the decision did not wait for the other write"
    finally:
        other.execute("COMMIT")
        other.close()
    out, _ = worker.communicate(timeout=60)
    assert json.loads(out) == {"won": 0, "refused": 1}


def test_a_restarted_policy_finds_what_was_spent(tmp_path: Path) -> None:
    ledger_file = tmp_path / "agent.db"
    first = SpendingPolicy(
        per_hour="$0.05", max_per_seller="$0.04", ledger=ReceiptLedger(ledger_file)
    )
    with first.task("research", budget="$0.03"):
        assert [ask(first) for _ in range(2)] == ["paid", "paid"]
    assert ask(first, seller="0x" + "22" * 20) == "paid"
    assert first.ledger is not None
    first.ledger.close()

    # The agent restarts: a new policy on the same file does not get a fresh budget.
    again = SpendingPolicy(
        per_hour="$0.05", max_per_seller="$0.04", ledger=ReceiptLedger(ledger_file)
    )
    assert again.spent(USDC) == 30_000 and again.spent(USDC, seller=SELLER) == 20_000
    with again.task("research", budget="$0.03") as task:
        assert ask(again) == "paid"  # the task's third cent
        assert ask(again) == "budget_exhausted"  # "research" is used up, across the restart
        assert task.spent == {USDC.lower(): 10_000}  # this block's own tally
    with again.task("other", budget="$0.03"):
        assert ask(again, seller="0x" + "33" * 20) == "paid"  # the hour's fifth cent
        assert ask(again, seller="0x" + "33" * 20) == "budget_exhausted"  # per hour: used up
    assert again.spent(USDC, since=time.time() - 3_600) == 50_000

    # The memory policy of before: each task block is a budget of its own, nothing persists.
    memory = SpendingPolicy()
    for _ in range(2):
        with memory.task("research", budget="$0.01"):
            assert ask(memory) == "paid"


def test_a_released_reservation_gives_the_budget_back_and_a_stale_one_counts(
    tmp_path: Path,
) -> None:
    ledger_file = tmp_path / "agent.db"
    policy = SpendingPolicy(per_day=20_000, ledger=ReceiptLedger(ledger_file))
    decision = policy.check(seller=SELLER, url="u", amount=20_000, asset=USDC, network=NETWORK)
    assert decision.outcome == "paid" and decision.reservation is not None
    # While reserved, another process on the file sees it (the cap is taken).
    other = SpendingPolicy(per_day=20_000, ledger=ReceiptLedger(ledger_file))
    assert ask(other) == "budget_exhausted"
    policy.release(decision.reservation)  # nothing was signed: the budget comes back
    assert other.spent(USDC) == 0
    stale = other.check(seller=SELLER, url="u", amount=20_000, asset=USDC, network=NETWORK)
    assert stale.outcome == "paid"
    # Its process dies before committing or releasing: whether it signed cannot be known, so
    # the reservation keeps counting for whoever opens the file next.
    assert ask(SpendingPolicy(per_day=20_000, ledger=ReceiptLedger(ledger_file))) == (
        "budget_exhausted"
    )


def test_new_seller_approval_remembers_sellers_paid_before_a_restart(tmp_path: Path) -> None:
    ledger_file = tmp_path / "agent.db"
    first = SpendingPolicy(approve_new_sellers=True, ledger=ReceiptLedger(ledger_file))
    assert ask(first, 1) == "needs_approval"
    assert ask(SpendingPolicy(ledger=first.ledger), 1) == "paid"  # no approval rule there
    again = SpendingPolicy(approve_new_sellers=True, ledger=ReceiptLedger(ledger_file))
    assert ask(again, 1) == "paid"  # paid before, as the file says
    assert ask(again, 1, seller="0x" + "44" * 20) == "needs_approval"


def test_the_flow_keeps_receipts_in_the_policy_ledger(tmp_path: Path) -> None:
    ledger = ReceiptLedger(tmp_path / "agent.db")
    flow = BuyerFlow(TEST_KEYS[0], policy=SpendingPolicy(ledger=ledger))
    assert flow.ledger is ledger
    other = ReceiptLedger()
    assert (
        BuyerFlow(TEST_KEYS[0], policy=SpendingPolicy(ledger=ledger), ledger=other).ledger is other
    )


def test_an_old_ledger_file_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the columns a ledger had before certificates
        conn.execute(
            "CREATE TABLE receipts (receipt_id INTEGER PRIMARY KEY AUTOINCREMENT, outcome TEXT, "
            "url TEXT, seller TEXT, amount TEXT, asset TEXT, network TEXT, request_id TEXT, "
            "tab_id TEXT, guarantee_id TEXT, status TEXT, reason TEXT, task TEXT, "
            "x402_version TEXT, started_at REAL, finished_at REAL)"
        )
        conn.execute("INSERT INTO receipts (outcome, url, amount) VALUES ('paid', 'u', '5')")
    ledger = ReceiptLedger(path)
    [old] = list(ledger)
    assert old.outcome == "paid" and old.amount == 5 and old.certificate is None
    policy = SpendingPolicy(per_hour=5, ledger=ledger)
    assert ask(policy, 5) == "paid" and ask(policy, 1) == "budget_exhausted"


def test_a_ledger_row_edited_into_no_number_refuses_every_payment_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spending row whose amount is not a number made every payment raise a bare
    ValueError (not a refusal, and no receipt). It counts as over every budget instead."""
    import sqlite3

    path = tmp_path / "agent.db"
    policy = SpendingPolicy(per_hour="$1", ledger=ReceiptLedger(path))
    assert ask(policy, 10_000) == "paid"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE spending SET amount = '1e4'")
    with caplog.at_level(logging.ERROR, logger="fourmica_x402.client"):
        assert ask(policy, 1) == "budget_exhausted"
        with policy.task("t", budget="$1"):
            assert ask(policy, 1) == "budget_exhausted"
    assert "not a number ('1e4')" in caplog.text


DOLLAR_NETWORKS = ("eip155:84532", "eip155:11155111", "eip155:8453")  # USDC on each


@pytest.mark.parametrize("cap", ["per_hour", "max_per_seller", "task"])
@pytest.mark.parametrize("kept", ["object", "ledger"])
def test_a_dollar_cap_is_one_budget_across_tokens_and_networks(
    tmp_path: Path, cap: str, kept: str
) -> None:
    """A seller switching networks (another USDC each time) still meets one "$1"."""
    ledger = ReceiptLedger(tmp_path / "agent.db") if kept == "ledger" else None
    policy = SpendingPolicy(**({} if cap == "task" else {cap: "$1"}), ledger=ledger)
    task = policy.task("t", budget="$1") if cap == "task" else contextlib.nullcontext()
    with task:
        outcomes = [ask(policy, 400_000, network=net) for net in DOLLAR_NETWORKS]
    assert outcomes == ["paid", "paid", "budget_exhausted"]
    # An atomic cap counts units of one token: it cannot add up different tokens.
    atomic = SpendingPolicy(per_hour=500_000)
    assert [ask(atomic, 400_000, network=net) for net in DOLLAR_NETWORKS] == ["paid"] * 3


def test_a_dollar_cap_scales_tokens_by_their_decimals(monkeypatch: pytest.MonkeyPatch) -> None:
    from fourmica_x402 import networks

    monkeypatch.setattr(networks, "_assets", {k: dict(v) for k, v in networks._assets.items()})
    dai = networks.register_asset(NETWORK, "0x" + "da" * 20, symbol="DAI", decimals=18)
    policy = SpendingPolicy(per_day="$1")
    assert ask(policy, 6 * 10**17, asset=dai.address) == "paid"  # $0.60
    assert ask(policy, 400_001) == "budget_exhausted"  # $0.400001 more: over $1
    assert ask(policy, 400_000) == "paid"
    assert ask(policy, 1, asset=dai.address) == "budget_exhausted"  # rounded up, never down


def test_a_dollar_cap_is_never_read_as_so_many_of_another_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "$0.05" for a registered WETH read as 0.05 WETH: a payment of 0.04 WETH went
    through a 5-cent cap. A price cap refuses another token, as an unknown one; an integer
    cap still counts its atomic units."""
    from fourmica_x402 import networks

    monkeypatch.setattr(networks, "_assets", {k: dict(v) for k, v in networks._assets.items()})
    weth = networks.register_asset(NETWORK, "0x" + "4e" * 20, symbol="WETH", decimals=18)
    for cap in ("max_per_request", "per_day", "max_per_seller"):
        policy = SpendingPolicy(**{cap: "$0.05"})  # type: ignore[arg-type]
        assert ask(policy, 4 * 10**16, asset=weth.address) == "budget_exhausted", cap
        assert ask(policy, 40_000) == "paid", cap  # USDC: 4 cents
    atomic = SpendingPolicy(max_per_request=5 * 10**16)
    assert ask(atomic, 4 * 10**16, asset=weth.address) == "paid"


@pytest.mark.parametrize("cap", ["max_per_request", "max_per_seller", "per_hour", "task"])
def test_a_dollar_cap_refusing_another_token_says_so(
    cap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "$0.01" cap refusing 10000 units of a token that is no dollar token said "over the
    per-request cap 0 atomic units": no cap the buyer gave. It says the cap is in dollars
    (docs/buyer.md, "Budgets")."""
    from fourmica_x402 import networks

    monkeypatch.setattr(networks, "_assets", {k: dict(v) for k, v in networks._assets.items()})
    weth = networks.register_asset(NETWORK, "0x" + "4e" * 20, symbol="WETH", decimals=18)
    unknown = "0x" + "ab" * 20
    policy = SpendingPolicy(**({} if cap == "task" else {cap: "$0.01"}))  # type: ignore[arg-type]
    task = policy.task("t", budget="$0.01") if cap == "task" else contextlib.nullcontext()
    named = {"max_per_request": "the per-request cap", "max_per_seller": "the per-seller cap"}
    what = named.get(cap, "the per hour budget" if cap == "per_hour" else "task 't' budget")
    with task:
        for asset, name in ((weth.address, "WETH"), (unknown, f"the unknown token {unknown}")):
            decision = policy.check(
                seller=SELLER, url="u", amount=10_000, asset=asset, network=NETWORK
            )
            assert decision.outcome == "budget_exhausted"
            assert decision.detail == (
                f"{what} $0.01 is a dollar price, which covers dollar tokens only: "
                f"not {name} on {NETWORK}"
            )
        assert ask(policy, 10_000) == "paid"  # USDC: the cap holds it


@pytest.mark.parametrize("name", ["blocked_sellers", "allowed_sellers", "allowed_assets"])
def test_a_list_of_addresses_refuses_what_is_no_address(name: str) -> None:
    """A typo in a block list blocked nothing (the list held the typo, never matched)."""
    address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    for bad in ({address[:-1]}, {address[2:]}, {"0xBad…"}, address):
        with pytest.raises(ValueError, match=name):
            SpendingPolicy(**{name: bad})  # type: ignore[arg-type]
    policy = SpendingPolicy(**{name: {address, address.upper().replace("0X", "0x")}})
    assert getattr(policy, name) == {address.lower()}


@pytest.mark.parametrize("kept", ["memory", "ledger"])
def test_a_task_inside_another_spends_from_both_budgets(kept: str, tmp_path: Path) -> None:
    """An inner task (a step's own budget) never lifts the outer one (docs/buyer.md)."""
    ledger = ReceiptLedger(tmp_path / "agent.db") if kept == "ledger" else None
    policy = SpendingPolicy(ledger=ledger)
    outcomes = []
    with policy.task("session", budget=50_000):
        for step in range(3):
            with policy.task(f"step-{step}", budget=100_000):
                outcomes.append(ask(policy, 20_000))
        outcomes.append(ask(policy, 10_000))  # what the session has left
        outcomes.append(ask(policy, 1))
    assert outcomes == ["paid", "paid", "budget_exhausted", "paid", "budget_exhausted"]
    assert policy.spent(USDC) == 50_000
    with policy.task("step-9", budget=30_000):  # the inner budget binds as well
        with policy.task("step-9b", budget=100_000):
            assert ask(policy, 20_000) == "paid"
            assert ask(policy, 20_000) == "budget_exhausted"
        decision = policy.check(seller=SELLER, url="u", amount=10_000, asset=USDC, network=NETWORK)
        assert decision.outcome == "paid" and decision.reservation is not None
        policy.release(decision.reservation)  # a released payment gives both budgets back
        assert ask(policy, 10_000) == "paid"
    if ledger is not None:  # by name, after a restart too
        restarted = SpendingPolicy(ledger=ReceiptLedger(tmp_path / "agent.db"))
        with restarted.task("session", budget=50_000):
            assert ask(restarted, 1) == "budget_exhausted"
        with restarted.task("step-9", budget=30_000):
            assert ask(restarted, 1) == "budget_exhausted"


def test_a_task_reaches_worker_threads_through_task_run(caplog: pytest.LogCaptureFixture) -> None:
    """A thread does not inherit the task it was started in: ten payments made by pool
    workers inside a $0.03 task all went through, outside its budget, and nothing said so."""
    policy = SpendingPolicy()
    with policy.task("research", budget=30_000) as task, ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: task.run(ask, policy), range(10)))
    assert outcomes.count("paid") == 3 and outcomes.count("budget_exhausted") == 7
    assert task.spent == {USDC.lower(): 30_000}
    with (
        caplog.at_level(logging.WARNING, logger="fourmica_x402.client"),
        policy.task("other", budget=10_000),
        ThreadPoolExecutor(2) as pool,
    ):  # without task.run a worker pays outside the task: allowed, and said once
        outside = list(pool.map(lambda _: ask(policy), range(3)))
    assert outside == ["paid"] * 3
    told = [r for r in caplog.records if "outside any task" in r.getMessage()]
    assert len(told) == 1
    # a task left in another thread than it was entered in (a misuse) still closes
    fresh = SpendingPolicy()

    def misuse() -> None:  # in a context of its own: the task it leaves set stays there
        block = fresh.task("moved", budget=10_000)
        block.__enter__()
        with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError):
            pool.submit(block.__exit__, None, None, None).result()

    contextvars.copy_context().run(misuse)
    assert SpendingPolicy.current_task() is None
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="fourmica_x402.client"),
        ThreadPoolExecutor(1) as pool,
    ):
        assert pool.submit(ask, fresh).result() == "paid"
    assert not [r for r in caplog.records if "outside any task" in r.getMessage()]


def test_a_new_seller_over_the_threshold_is_asked_about_both_at_once() -> None:
    """An approval for a new seller is not an approval of an amount over the threshold
    unless the question named both (docs/buyer.md, "Budgets")."""
    policy = SpendingPolicy(approve_new_sellers=True, approval_threshold=10_000)
    asked = policy.check(seller=SELLER, url="u", amount=50_000, asset=USDC, network=NETWORK)
    assert asked.outcome == "needs_approval" and asked.approval is not None
    assert asked.approval.reason == "new_seller_over_threshold"
    small = policy.check(seller=SELLER, url="u", amount=1, asset=USDC, network=NETWORK)
    assert small.approval is not None and small.approval.reason == "new_seller"
    first = "0x" + "55" * 20
    policy.check(seller=first, url="u", amount=1, asset=USDC, network=NETWORK, approved=True)
    later = policy.check(seller=first, url="u", amount=50_000, asset=USDC, network=NETWORK)
    assert later.approval is not None and later.approval.reason == "over_threshold"


@pytest.mark.parametrize(
    "cap",
    [
        {"max_per_request": "$0"},
        {"max_per_request": 0},
        {"max_per_seller": "$0"},
        {"per_minute": 0},
        {"per_day": "$0"},
        {"task": "$0"},
        {"task": 0},
    ],
    ids=lambda cap: "=".join(map(str, next(iter(cap.items())))),
)
@pytest.mark.parametrize("kept", ["memory", "ledger"])
def test_a_cap_of_zero_lets_nothing_through_not_even_an_amount_of_zero(
    cap: dict[str, object], kept: str, tmp_path: Path
) -> None:
    """docs/buyer.md ("Budgets"): "$0" or 0 lets nothing through. The caps compared amount
    > cap (and spent + amount > cap): 0 > 0 does not hold, so a zero price was allowed."""
    ledger = ReceiptLedger(tmp_path / "agent.db") if kept == "ledger" else None
    caps = {name: value for name, value in cap.items() if name != "task"}
    task = cap.get("task")
    policy = SpendingPolicy(ledger=ledger, **caps)  # type: ignore[arg-type]
    with policy.task("t", budget=task) if task is not None else contextlib.nullcontext():
        assert ask(policy, amount=0) == "budget_exhausted"
        assert ask(policy, amount=1) == "budget_exhausted"


def test_a_per_seller_cap_and_new_seller_check_read_that_sellers_payments_only(
    tmp_path: Path,
) -> None:
    """With a ledger, every payment under ``max_per_seller`` (or ``approve_new_sellers``) read
    the spending rows of every seller the agent ever paid in that token: an agent running for
    months paid, on every payment, for its whole history with everyone."""
    ledger = ReceiptLedger(tmp_path / "agent.db")
    before = SpendingPolicy(max_per_seller="$1000", approve_new_sellers=True, ledger=ledger)
    for n in (*range(1, 6), 0x11):
        decision = before.check(
            seller="0x" + f"{n:02x}" * 20, url="u", amount=10, asset=USDC, network=NETWORK,
            approved=True,
        )  # fmt: skip
        assert decision.reservation is not None
        before.commit(decision.reservation)
    restarted = SpendingPolicy(max_per_seller="$1000", approve_new_sellers=True, ledger=ledger)
    seen: list[str] = []
    ledger.connection.set_trace_callback(seen.append)
    try:
        assert ask(restarted) == "paid"  # paid before: no approval asked
    finally:
        ledger.connection.set_trace_callback(None)
    plans = {
        s: [str(row[-1]) for row in ledger.connection.execute("EXPLAIN QUERY PLAN " + s)]
        for s in seen
        if s.startswith("SELECT") and "seller = " in s
    }
    assert len(plans) >= 2  # the per-seller total, and "paid this seller before"
    for sql, steps in plans.items():  # found by the seller, not by the token or end to end
        assert steps and all("seller=?" in step for step in steps), (sql, steps)


def test_releasing_a_nested_tasks_reservation_finds_its_rows_by_id(tmp_path: Path) -> None:
    """A payment decided under nested tasks keeps a row per outer task; giving one back (it was
    never sent) deleted its rows by reading every outer-task row the agent ever wrote."""
    ledger = ReceiptLedger(tmp_path / "agent.db")
    policy = SpendingPolicy(ledger=ledger)
    with policy.task("outer", budget="$1"), policy.task("inner", budget="$1"):
        assert ask(policy) == "paid"
        decision = policy.check(seller=SELLER, url="u", amount=10, asset=USDC, network=NETWORK)
    assert decision.reservation is not None
    seen: list[str] = []
    ledger.connection.set_trace_callback(seen.append)
    try:
        policy.release(decision.reservation)
    finally:
        ledger.connection.set_trace_callback(None)
    plans = [
        (s, str(row[-1]))
        for s in seen
        if s.startswith("DELETE")
        for row in ledger.connection.execute("EXPLAIN QUERY PLAN " + s)
    ]
    assert plans and not [p for p in plans if p[1].startswith("SCAN")], plans
