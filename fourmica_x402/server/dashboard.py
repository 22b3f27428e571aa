"""``GET /`` and ``GET /dashboard``: the Core at a glance, as one self-refreshing HTML page
(positions, cycles, the monitoring signals with their charts (:mod:`.charts`), each cycle's net
positions and pairwise obligations, recent guarantees with their dispute state, defaults,
withdrawals). Every value from the Core is HTML-escaped.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from fourmica_x402.core import Core
from fourmica_x402.evidence.disputes import latest_states
from fourmica_x402.networks import networks

from .base import Call, Page
from .cells import badge, money, network_name, short, table
from .charts import CSS, signals_section

if TYPE_CHECKING:
    from .context import Service

__all__ = ["CHART_CYCLES", "dashboard", "recent_defaults", "render_dashboard"]

#: How many closed cycles of each asset the signal charts show.
CHART_CYCLES = 20


def dashboard(service: Service, call: Call) -> Page:
    return Page(render_dashboard(service.core), "text/html")


def recent_defaults(core: Core, limit: int = 20) -> list[tuple[str, int, int, int, int, str, str]]:
    """The newest defaulted positions, newest cycle first: ``(address, cycle_id, unpaid,
    covered, shortfall, network, asset)``. Read from the positions (an index holds the
    defaulted ones), not the event feed, which reads oldest first."""
    with core.store.transaction(write=False) as tx:
        rows = tx.all(
            "SELECT p.address, p.cycle_id, p.debit - p.paid, p.covered, p.shortfall, c.network, "
            "c.asset FROM fx_cycle_positions p JOIN fx_cycles c ON c.cycle_id = p.cycle_id "
            "WHERE p.status = 'defaulted' ORDER BY p.cycle_id DESC, p.address COLLATE BINARY "
            "LIMIT ?",
            (int(limit),),
        )
    return [(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5], r[6]) for r in rows]


def render_dashboard(core: Core) -> str:
    """The dashboard page: positions, cycles and their net positions, guarantees, defaults, withdrawals."""
    positions = core.positions()
    cycles = core.cycles(limit=20)
    recent = core.guarantees(limit=25)
    disputed = latest_states(core.store, (g.guarantee_id for g in recent))  # the sellers' records
    withdrawals = core.withdrawals(limit=20)
    # An open cycle's totals are only written at close: show what it holds so far.
    live = {
        c.cycle_id: (sum(p.guarantee_count for p in pairs), sum(p.amount for p in pairs))
        for c in cycles
        if c.status == "open" and (pairs := core.cycle_pairs(c.cycle_id))
    }
    defaults = recent_defaults(core)
    sections = [
        table(
            "Positions",
            ["participant", "network", "collateral", "locked", "pending withdrawal", "capacity"],
            [
                [
                    short(p.address),
                    html.escape(network_name(p.network)),
                    money(p.collateral, p.network, p.asset),
                    money(p.locked, p.network, p.asset),
                    money(p.pending_withdrawal, p.network, p.asset),
                    money(p.capacity, p.network, p.asset),
                ]
                for p in positions
            ],
            "positions",
        ),
        table(
            "Clearing cycles",
            [
                "cycle",
                "status",
                "guarantees",
                "gross",
                "net transfers",
                "net debits",
                "collected",
                "merkle root",
            ],
            [
                [
                    f'<a href="#cycle-{c.cycle_id}">#{c.cycle_id}</a>',
                    badge(c.status),
                    f"{live.get(c.cycle_id, (c.guarantee_count, 0))[0]:,}",
                    money(live.get(c.cycle_id, (0, c.gross))[1], c.network, c.asset),
                    f"{c.net_transfers:,}",
                    money(c.total_debit, c.network, c.asset),
                    money(c.collected, c.network, c.asset),
                    short(c.merkle_root),
                ]
                for c in cycles
            ],
            "cycles",
        ),
        signals_section(core.signals(cycles=CHART_CYCLES)),
    ]
    for c in cycles:
        if c.status == "open":
            continue
        net_rows = [
            [
                short(p.address),
                badge(p.role),
                money(p.gross_in, c.network, c.asset),
                money(p.gross_out, c.network, c.asset),
                money(p.net, c.network, c.asset)
                if p.net >= 0
                else "−" + money(-p.net, c.network, c.asset),
                badge(p.status),
                money(p.covered, c.network, c.asset),
                money(p.shortfall, c.network, c.asset),
            ]
            for p in core.cycle_positions(c.cycle_id)
        ]
        pair_rows = [
            [
                short(p.payer),
                short(p.payee),
                money(p.amount, c.network, c.asset),
                f"{p.guarantee_count:,}",
            ]
            for p in core.cycle_pairs(c.cycle_id)[:50]
        ]
        sections.append(
            f'<div class="cycle" id="cycle-{c.cycle_id}">'
            + table(
                f"Cycle #{c.cycle_id}: net positions",
                ["participant", "role", "in", "out", "net", "status", "covered", "shortfall"],
                net_rows,
                f"cycle-{c.cycle_id}-positions",
            )
            + table(
                f"Cycle #{c.cycle_id}: pairwise obligations",
                ["payer", "payee", "amount", "guarantees"],
                pair_rows,
                f"cycle-{c.cycle_id}-pairs",
            )
            + "</div>"
        )
    sections.append(
        table(
            "Recent guarantees",
            ["guarantee", "payer", "recipient", "amount", "state", "cycle", "dispute"],
            [
                [
                    short(g.guarantee_id),
                    short(g.user_address),
                    short(g.recipient_address),
                    money(g.amount, g.network, g.asset),
                    badge(g.state),
                    str(g.cycle_id or "—"),
                    badge(disputed[g.guarantee_id]) if g.guarantee_id in disputed else "—",
                ]
                for g in recent
            ],
            "guarantees",
        )
    )
    sections.append(
        table(
            "Defaults",
            ["participant", "cycle", "unpaid", "covered from collateral", "shortfall"],
            [
                [
                    short(address),
                    str(cycle_id),
                    money(unpaid, network, asset),
                    money(covered, network, asset),
                    money(shortfall, network, asset),
                ]
                for address, cycle_id, unpaid, covered, shortfall, network, asset in defaults
            ],
            "defaults",
        )
    )
    sections.append(
        table(
            "Withdrawals",
            ["id", "participant", "amount", "status", "available at (UTC)"],
            [
                [
                    str(w.withdrawal_id),
                    short(w.address),
                    money(w.amount, w.network, w.asset),
                    html.escape(w.status),
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(w.available_at)),
                ]
                for w in withdrawals
            ],
            "withdrawals",
        )
    )
    nets = ", ".join(html.escape(n.name) for n in networks())
    updated = time.strftime("%H:%M:%S", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fourmica-x402 Core</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta http-equiv="refresh" content="30">
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2430;background:#fafbfc}}
h1{{font-size:1.4rem;margin:0 0 .2rem}} h2{{font-size:1.05rem;margin:1.4rem 0 .4rem}}
table{{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}}
th,td{{border-bottom:1px solid #e3e7ee;padding:.35rem .5rem;text-align:left}} th{{background:#f0f3f7}}
td.empty{{color:#8a94a6;font-style:italic}} code{{font-size:.85em}} .cycle{{margin-left:1rem}}
td{{font-variant-numeric:tabular-nums}} .st{{padding:.05rem .4rem;border-radius:.6rem;background:#eef1f5}}
th.num,td.num{{text-align:right;white-space:nowrap}} .scroll{{overflow-x:auto}}
.st-defaulted,.st-default_covered,.st-cancelled{{background:#fde8e7;color:#b42318}}
.st-paid,.st-settled,.st-creditor,.st-final{{background:#e7f6ec;color:#067647}}
.st-debtor,.st-pending_validation,.st-pending{{background:#fff4e5;color:#93370d}}
.st-opened{{background:#fde8e7;color:#b42318}} .st-resolved{{background:#e7f6ec;color:#067647}}
.sub{{color:#5b6576;margin:0 0 1rem}} h3{{font-size:.95rem;margin:.8rem 0 .3rem}}
{CSS}
</style></head><body>
<h1>fourmica-x402 Core</h1>
<p class="sub">Netted credit for x402 payments · networks: {nets} · updated {updated} UTC</p>
{"".join(sections)}
</body></html>"""
