"""The demo's story after the workload: one clearing cycle settled, then checked and shown.

Close the cycle and show how many guarantees became how many net transfers; let every debtor
but one pay its net debit; let the validator default and be covered from its collateral once
the payment window and finality have passed; let creditors claim. Then the invariants: the
Core's own audit (money is conserved), net debits equal net credits, claims add up to what was
collected, and every guarantee of the cycle reached a final state. The demo's exit code is 0
only if none is broken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fourmica_x402.core import Core, CoreConfig, Cycle, CyclePosition

from .sellers import NETWORK
from .workload import Agent

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "Settlement",
    "check_invariants",
    "money",
    "positions_table",
    "settle_cycle",
    "summary_table",
]


def money(atomic: int) -> str:
    """Atomic units of a 6-decimal dollar token as ``$1,234.5678`` (``-$…`` when negative)."""
    sign = "-" if atomic < 0 else ""
    return f"{sign}${abs(atomic) / 1_000_000:,.4f}"


@dataclass
class Settlement:
    """A settled cycle: its positions at the end, what each creditor claimed, who is who."""

    cycle: Cycle
    final: dict[str, CyclePosition]
    claimed: dict[str, int]
    names: dict[str, str]


def settle_cycle(
    core: Core,
    core_config: CoreConfig,
    agents: dict[str, Agent],
    say: Callable[[str], None],
    problems: list[str],
) -> Settlement:
    """Close, pay, default, claim (waiting out the short delays of ``core_config``)."""
    cycle = core.close_cycle(network=NETWORK)
    say(
        f"\n[bold]cycle #{cycle.cycle_id} closed[/bold]: {cycle.guarantee_count} guarantees, gross "
        f"{money(cycle.gross)} → {cycle.net_transfers} net transfers moving {money(cycle.total_debit)} "
        f"({cycle.guarantee_count / max(cycle.net_transfers, 1):.0f}× fewer transfers, "
        f"{cycle.gross / max(cycle.total_debit, 1):.1f}× less money moved)"
    )

    time.sleep(core_config.resolution_delay + 0.1)
    core.tick()
    positions = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
    names = {a.wallet.address: a.name for a in agents.values()}
    debtors = [p for p in positions.values() if p.role == "debtor"]
    validator = agents["validator"].wallet.address  # the agent that over-bought: it will default
    defaulter = next((p for p in debtors if p.address == validator), None)
    for p in debtors:
        if p is not defaulter:
            core.pay_net_debit(cycle.cycle_id, p.address)
            say(f"{names[p.address]} paid its net debit {money(p.debit)}")
    if defaulter is not None:
        say(f"{names[defaulter.address]} does not pay its net debit {money(defaulter.debit)} …")
    time.sleep(core_config.payment_window + core_config.finality + 0.1)
    core.tick()
    claimed = {
        p.address: core.claim_net_credit(cycle.cycle_id, p.address)
        for p in core.cycle_positions(cycle.cycle_id)
        if p.role == "creditor"
    }
    final = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
    if defaulter is not None:
        d = final[defaulter.address]
        say(
            f"… after finality its collateral covered {money(d.covered)} (shortfall {money(d.shortfall)})"
        )
        if d.status != "defaulted" or d.covered + d.shortfall != d.debit:
            problems.append("the default was not covered as it should be")
    return Settlement(cycle, final, claimed, names)


def positions_table(settled: Settlement) -> Table:
    """Each participant's gross and net position, how it settled, what it claimed."""
    from rich.table import Table

    cycle, final, claimed, names = settled.cycle, settled.final, settled.claimed, settled.names
    table = Table(title=f"cycle #{cycle.cycle_id}: net positions")
    for column in (
        "participant",
        "role",
        "paid out (gross)",
        "earned (gross)",
        "net",
        "settled by",
        "claimed",
    ):
        table.add_column(
            column,
            justify="left" if column in ("participant", "role", "settled by") else "right",
        )
    for p in sorted(final.values(), key=lambda p: p.net):
        how = {
            "paid": "paying its debit",
            "defaulted": f"collateral ({money(p.covered)})",
        }.get(p.status, "—")
        table.add_row(
            names.get(p.address, p.address),
            p.role,
            money(p.gross_out),
            money(p.gross_in),
            money(p.net),
            how,
            money(claimed.get(p.address, 0)),
        )
    return table


def check_invariants(core: Core, settled: Settlement) -> tuple[list[str], Cycle]:
    """The broken invariants, and the cycle read back after settlement."""
    final, claimed = settled.final, settled.claimed
    problems = core.audit()
    cycle = core.cycle(settled.cycle.cycle_id)
    if sum(p.debit for p in final.values()) != sum(p.credit for p in final.values()):
        problems.append("net debits and net credits differ")
    if (
        sum(claimed.values()) + (cycle.collected - cycle.claimed) != cycle.collected
        or cycle.claimed > cycle.collected
    ):
        problems.append("claims do not add up to what was collected")
    if any(
        g.state not in ("settled", "default_covered", "voided", "cancelled")
        for g in core.guarantees(cycle_id=cycle.cycle_id, limit=100_000)
    ):
        problems.append("a guarantee of the cycle did not reach a final state")
    return problems, cycle


def summary_table(
    *,
    paid_calls: int,
    refused: int,
    records: int,
    cycle: Cycle,
    final: dict[str, CyclePosition],
    problems: list[str],
    started: float,
) -> Table:
    """The run in one table: the workload, the netting, the default, the invariants, the time."""
    from rich.table import Table

    summary = Table(title="summary")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    for what, value in (
        ("paid calls (3 frameworks, loopback HTTP)", f"{paid_calls}"),
        ("refused before signing", f"{refused}"),
        ("payment records written before handlers ran", f"{records}"),
        ("guarantees netted", f"{cycle.guarantee_count}"),
        ("net transfers instead", f"{cycle.net_transfers}"),
        ("gross volume / money moved", f"{money(cycle.gross)} / {money(cycle.total_debit)}"),
        (
            "covered from a defaulter's collateral",
            money(sum(p.covered for p in final.values())),
        ),
        ("invariants", "all held" if not problems else f"{len(problems)} broken"),
        ("time", f"{time.monotonic() - started:.1f} s"),
    ):
        summary.add_row(what, value)
    return summary
