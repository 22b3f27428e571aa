"""``GET /`` and ``GET /dashboard``: the Core at a glance, as one self-refreshing HTML page
(positions, cycles with their net positions and pairwise obligations, recent guarantees,
defaults, withdrawals). Every value from the Core is HTML-escaped.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from fourmica_x402.core import Core
from fourmica_x402.networks import find_asset, get_network, networks

from .base import Call, Page

if TYPE_CHECKING:
    from .context import Service

__all__ = ["dashboard", "render_dashboard"]


def dashboard(service: Service, call: Call) -> Page:
    return Page(render_dashboard(service.core), "text/html")


def _money(amount: int, network: str, asset: str) -> str:
    """An amount for a table cell, marked so its column is right-aligned."""
    token = find_asset(network, asset)
    if token is None:
        return f'<span class="num">{amount:,}</span>'
    from decimal import Decimal

    human = Decimal(amount).scaleb(-token.decimals).normalize()
    return f'<span class="num">{human:f} {html.escape(token.symbol)}</span>'


def _badge(text: str) -> str:
    """A state or role as a small coloured label (the text stays exactly the state name)."""
    safe = html.escape(text)
    return f'<span class="st st-{safe}">{safe}</span>'


def _short(address: str | None) -> str:
    if not address:
        return "—"
    return f'<code title="{html.escape(address)}">{html.escape(address[:6])}…{html.escape(address[-4:])}</code>'


def _table(title: str, headers: list[str], rows: list[list[str]], table_id: str) -> str:
    # A column of amounts is right-aligned, its header too, so the digits line up.
    money = {
        i for i in range(len(headers)) if rows and all('class="num"' in row[i] for row in rows)
    }

    def cell(tag: str, i: int, content: str) -> str:
        return (
            f'<{tag} class="num">{content}</{tag}>' if i in money else f"<{tag}>{content}</{tag}>"
        )

    head = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="empty">nothing yet</td></tr>'
    return (
        f'<section id="{table_id}"><h2>{html.escape(title)}</h2><div class="scroll">'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"
    )


def render_dashboard(core: Core) -> str:
    """The dashboard page: positions, cycles and their net positions, guarantees, defaults, withdrawals."""
    positions = core.positions()
    cycles = core.cycles(limit=20)
    recent = core.guarantees(limit=25)
    withdrawals = core.withdrawals(limit=20)
    # An open cycle's totals are only written at close: show what it holds so far.
    live = {
        c.cycle_id: (sum(p.guarantee_count for p in pairs), sum(p.amount for p in pairs))
        for c in cycles
        if c.status == "open" and (pairs := core.cycle_pairs(c.cycle_id))
    }
    defaults = [e for e in core.events(type="position.defaulted", limit=1000)][-20:]
    sections = [
        _table(
            "Positions",
            ["participant", "network", "collateral", "locked", "pending withdrawal", "capacity"],
            [
                [
                    _short(p.address),
                    html.escape(get_network(p.network).name),
                    _money(p.collateral, p.network, p.asset),
                    _money(p.locked, p.network, p.asset),
                    _money(p.pending_withdrawal, p.network, p.asset),
                    _money(p.capacity, p.network, p.asset),
                ]
                for p in positions
            ],
            "positions",
        ),
        _table(
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
                    _badge(c.status),
                    f"{live.get(c.cycle_id, (c.guarantee_count, 0))[0]:,}",
                    _money(live.get(c.cycle_id, (0, c.gross))[1], c.network, c.asset),
                    f"{c.net_transfers:,}",
                    _money(c.total_debit, c.network, c.asset),
                    _money(c.collected, c.network, c.asset),
                    _short(c.merkle_root),
                ]
                for c in cycles
            ],
            "cycles",
        ),
    ]
    for c in cycles:
        if c.status == "open":
            continue
        net_rows = [
            [
                _short(p.address),
                _badge(p.role),
                _money(p.gross_in, c.network, c.asset),
                _money(p.gross_out, c.network, c.asset),
                _money(p.net, c.network, c.asset)
                if p.net >= 0
                else "−" + _money(-p.net, c.network, c.asset),
                _badge(p.status),
                _money(p.covered, c.network, c.asset),
                _money(p.shortfall, c.network, c.asset),
            ]
            for p in core.cycle_positions(c.cycle_id)
        ]
        pair_rows = [
            [
                _short(p.payer),
                _short(p.payee),
                _money(p.amount, c.network, c.asset),
                f"{p.guarantee_count:,}",
            ]
            for p in core.cycle_pairs(c.cycle_id)[:50]
        ]
        sections.append(
            f'<div class="cycle" id="cycle-{c.cycle_id}">'
            + _table(
                f"Cycle #{c.cycle_id}: net positions",
                ["participant", "role", "in", "out", "net", "status", "covered", "shortfall"],
                net_rows,
                f"cycle-{c.cycle_id}-positions",
            )
            + _table(
                f"Cycle #{c.cycle_id}: pairwise obligations",
                ["payer", "payee", "amount", "guarantees"],
                pair_rows,
                f"cycle-{c.cycle_id}-pairs",
            )
            + "</div>"
        )
    sections.append(
        _table(
            "Recent guarantees",
            ["guarantee", "payer", "recipient", "amount", "state", "cycle"],
            [
                [
                    _short(g.guarantee_id),
                    _short(g.user_address),
                    _short(g.recipient_address),
                    _money(g.amount, g.network, g.asset),
                    _badge(g.state),
                    str(g.cycle_id or "—"),
                ]
                for g in recent
            ],
            "guarantees",
        )
    )
    sections.append(
        _table(
            "Defaults",
            ["participant", "cycle", "unpaid", "covered from collateral", "shortfall"],
            [
                [
                    _short(e.address),
                    str(e.data.get("cycle_id")),
                    _money(int(e.data.get("unpaid", 0)), e.network or "", e.asset or ""),
                    _money(int(e.data.get("covered", 0)), e.network or "", e.asset or ""),
                    _money(int(e.data.get("shortfall", 0)), e.network or "", e.asset or ""),
                ]
                for e in defaults
            ],
            "defaults",
        )
    )
    sections.append(
        _table(
            "Withdrawals",
            ["id", "participant", "amount", "status", "available at (UTC)"],
            [
                [
                    str(w.withdrawal_id),
                    _short(w.address),
                    _money(w.amount, w.network, w.asset),
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
.sub{{color:#5b6576;margin:0 0 1rem}}
</style></head><body>
<h1>fourmica-x402 Core</h1>
<p class="sub">Netted credit for x402 payments · networks: {nets} · updated {updated} UTC</p>
{"".join(sections)}
</body></html>"""
