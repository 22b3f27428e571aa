"""The demo's agents and their workload: four funded wallets buying from each other at once.

The three sellers are agents too — each buys from the other two, so every one of them ends the
cycle with both gross debits and gross credits, which is what netting collapses. A customer
runs jobs that split a fee across all three under a per-job budget, so some calls are refused
before anything is signed. The validator over-buys on purpose: it becomes the cycle's debtor
that defaults (see :mod:`.report`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from fourmica_x402.client import RECEIPT_KEY, PaymentTransport, SpendingPolicy
from fourmica_x402.core import Core
from fourmica_x402.errors import PaymentRefused
from fourmica_x402.networks import default_asset, to_atomic
from fourmica_x402.testing import TestBuyer

from .sellers import NETWORK, PRICES

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Agent", "fund_agents", "run_workload"]


@dataclass
class Agent:
    """A wallet with collateral, a seller too once it has a ``url``, and what it bought."""

    name: str
    wallet: TestBuyer
    collateral: str
    url: str = ""
    paid: int = 0
    refused: int = 0
    spent: int = 0
    receipts: list[Any] = field(default_factory=list)


def fund_agents(core: Core, say: Callable[[str], None]) -> dict[str, Agent]:
    """Four agents with fresh wallets, each with sandbox collateral deposited in ``core``."""
    agents = {
        "planner": Agent("planner", TestBuyer.new(), "$5"),
        "data": Agent("data", TestBuyer.new(), "$5"),
        "validator": Agent("validator", TestBuyer.new(), "$2"),
        "customer": Agent("customer", TestBuyer.new(), "$10"),
    }
    for agent in agents.values():
        core.deposit(
            agent.wallet.address,
            to_atomic(agent.collateral, default_asset(NETWORK)),
            network=NETWORK,
        )
    say(
        "funded 4 agents with sandbox collateral: "
        + ", ".join(f"{a.name} {a.collateral}" for a in agents.values())
    )
    return agents


STOP = threading.Event()  # a Ctrl-C: buyers end the call under way, the sellers still up


def buy(
    agent: Agent, seller: Agent, calls: int, policy: SpendingPolicy, tick: Callable[[], None]
) -> None:
    path, _ = PRICES[seller.name]
    if STOP.is_set():
        return
    transport = PaymentTransport(agent.wallet.key, policy=policy)
    with httpx.Client(transport=transport, timeout=30) as client:
        for _ in range(calls):
            if STOP.is_set():
                break
            try:
                response = client.get(seller.url + path)
                receipt = response.extensions[RECEIPT_KEY]
                agent.receipts.append(receipt)
                if response.status_code == 200 and receipt.outcome == "paid":
                    agent.paid += 1
                    agent.spent += receipt.amount or 0
            except PaymentRefused as refused:
                agent.refused += 1
                agent.receipts.append(refused.receipt)
            tick()


def run_workload(agents: dict[str, Agent], *, quick: bool, console: Console) -> tuple[int, int]:
    """Every agent buys at once, with a progress bar; returns (paid calls, refused calls)."""
    from rich.progress import Progress

    scale = 1 if quick else 3
    jobs = 40 * scale
    plan = [  # (buyer, seller, calls): agent-to-agent in both directions, plus the customer's jobs
        ("planner", "data", 20 * scale),
        ("data", "planner", 12 * scale),
        ("planner", "validator", 10 * scale),
        ("data", "validator", 6 * scale),
        ("validator", "planner", 20 * scale),
        ("validator", "data", 20 * scale),
    ]
    total = sum(c for _, _, c in plan) + 4 * jobs
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("paid calls", total=total)
        lock = threading.Lock()

        def tick() -> None:
            with lock:
                progress.advance(bar)

        policies = {name: SpendingPolicy(max_per_request="$0.05", per_hour="$5") for name in agents}
        threads = [
            threading.Thread(target=buy, args=(agents[b], agents[s], n, policies[b], tick))
            for b, s, n in plan
        ]

        def customer_jobs() -> None:
            customer = agents["customer"]
            policy = policies["customer"]
            for i in range(jobs):
                with policy.task(
                    f"job {i}", budget="$0.035"
                ):  # the fee split: plan + data + validation
                    for seller in ("planner", "data", "validator", "planner"):
                        # the 4th call (a second plan) is over the job's budget: refused unsigned
                        buy(customer, agents[seller], 1, policy, tick)

        threads.append(threading.Thread(target=customer_jobs))
        STOP.clear()
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except KeyboardInterrupt:  # let the calls under way end before the sellers stop
            STOP.set()
            for t in threads:
                t.join(35)
            raise

    paid_calls = sum(a.paid for a in agents.values())
    refused = sum(a.refused for a in agents.values())
    return paid_calls, refused
