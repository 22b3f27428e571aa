"""The dashboard's "Signals" section (docs/operations.md, "Monitoring signals"): per asset, one
small inline SVG bar chart per signal over its last closed cycles, then the current signals per
seller and per asset. No script and no external asset; every value is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from decimal import Decimal

from fourmica_x402.core.signals import CycleSignals, Signals

from .cells import amount_text, asset_label, money, short, table

__all__ = ["CSS", "signals_section"]

#: The section's styles, added to the dashboard's.
CSS = (
    ".charts{display:flex;flex-wrap:wrap;gap:.6rem}"
    " figure.chart{margin:0;background:#fff;border:1px solid #e3e7ee;padding:.3rem .4rem}"
    " figure.chart figcaption{font-size:.8rem;color:#5b6576}"
    " .bar{fill:#3b6fd8} .bar.bad{fill:#d92d20} .axis{stroke:#c5ccd8}"
    " svg text{font-size:9px;fill:#5b6576}"
)

WIDTH, HEIGHT, TOP, BASE = 200, 96, 14, 80  # the plot spans y = TOP … BASE
SLOTS = 10  # fewer cycles than this keep narrow bars, from the left

#: (id, caption, value of a cycle, is money, drawn as bad news)
CHARTS: list[tuple[str, str, Callable[[CycleSignals], int], bool, bool]] = [
    ("gross", "Gross", lambda c: c.gross, True, False),
    ("guarantees", "Guarantees", lambda c: c.guarantees, False, False),
    ("average", "Average payment", lambda c: c.average_payment, True, False),
    ("transfers", "Net transfers", lambda c: c.net_transfers, False, False),
    ("defaults", "Defaults", lambda c: c.defaults, False, True),
]


def _chart(chart_id: str, caption: str, bars: list[tuple[int, int, str]], bad: bool) -> str:
    """A bar chart of ``(cycle_id, value, value as text)``, oldest cycle first."""
    peak = max((value for _, value, _ in bars), default=0)
    slot = WIDTH / max(len(bars), SLOTS)
    width = max(slot * 0.7, 1.0)
    shapes = []
    for i, (cycle_id, value, text) in enumerate(bars):
        height = 0.0 if not peak else max(value / peak * (BASE - TOP), 1.0 if value else 0.0)
        shapes.append(
            f'<rect class="bar{" bad" if bad else ""}" x="{i * slot + (slot - width) / 2:.1f}" '
            f'y="{BASE - height:.1f}" width="{width:.1f}" height="{height:.1f}" '
            f'data-cycle="{cycle_id}" data-value="{value}">'
            f"<title>cycle #{cycle_id}: {html.escape(text)}</title></rect>"
        )
    top = next((text for _, value, text in bars if value == peak), "0")
    first = f"#{bars[0][0]}" if bars else ""  # the cycles under the first and last bars
    last = f"#{bars[-1][0]}" if len(bars) > 1 else ""
    label = html.escape(f"{caption} per cycle, last {len(bars)} closed cycles")
    return (
        f'<figure class="chart" id="{chart_id}"><figcaption>{html.escape(caption)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{label}">'
        f'<text x="2" y="9">max {html.escape(top)}</text>'
        f'<line class="axis" x1="0" y1="{BASE}" x2="{WIDTH}" y2="{BASE}"/>{"".join(shapes)}'
        f'<text x="2" y="{HEIGHT - 3}">{first}</text>'
        f'<text x="{len(bars) * slot:.1f}" y="{HEIGHT - 3}" text-anchor="end">{last}</text>'
        "</svg></figure>"
    )


def _charts(n: int, cycles: list[CycleSignals]) -> str:
    network, asset = cycles[0].network, cycles[0].asset
    figures = []
    for key, caption, of, is_money, bad in CHARTS:
        bars = [
            (c.cycle_id, of(c), amount_text(of(c), network, asset) if is_money else f"{of(c):,}")
            for c in cycles
        ]
        figures.append(_chart(f"chart-{n}-{key}", caption, bars, bad))
    return (
        f'<div class="asset-charts" id="signals-{n}"><h3>{html.escape(asset_label(network, asset))}'
        f'</h3><div class="charts">{"".join(figures)}</div></div>'
    )


def _ratio(part: int, whole: int, *, percent: bool = False) -> str:
    if not whole:
        return "—"
    value = Decimal(part * (100 if percent else 1)) / Decimal(whole)
    return f'<span class="num">{value.quantize(Decimal("0.1" if percent else "0.01"))}{"%" if percent else ""}</span>'


def _count(value: int) -> str:
    return f'<span class="num">{value:,}</span>'


def signals_section(signals: Signals) -> str:
    """The "Signals" section: charts over the last closed cycles of each asset, then tables."""
    groups: dict[tuple[str, str], list[CycleSignals]] = {}
    for c in signals.cycles:
        groups.setdefault((c.network, c.asset), []).append(c)
    charts = "".join(_charts(n, cycles) for n, cycles in enumerate(groups.values()))
    sellers = table(
        "Signals per seller",
        [
            "seller",
            "asset",
            "guarantees",
            "amount",
            "average payment",
            "payers",
            "per payer",
            "per cycle",
            "claimable",
        ],
        [
            [
                short(s.seller),
                html.escape(asset_label(s.network, s.asset)),
                _count(s.guarantees),
                money(s.amount, s.network, s.asset),
                money(s.average_payment, s.network, s.asset),
                _count(s.payers),
                _ratio(s.guarantees, s.payers),
                _ratio(s.cycle_guarantees, s.cycles),
                money(s.claimable, s.network, s.asset),
            ]
            for s in signals.sellers
        ],
        "signals-sellers",
    )
    assets = table(
        "Signals per asset",
        [
            "asset",
            "closed cycles",
            "net debits (final)",
            "paid in time",
            "covered",
            "shortfall",
            "success rate",
            "defaults",
            "defaulted",
            "unclaimed",
        ],
        [
            [
                html.escape(asset_label(a.network, a.asset)),
                _count(a.cycles),
                money(a.net_debit, a.network, a.asset),
                money(a.paid, a.network, a.asset),
                money(a.covered, a.network, a.asset),
                money(a.shortfall, a.network, a.asset),
                _ratio(a.paid, a.net_debit, percent=True),
                _count(a.defaulted),
                money(a.defaulted_amount, a.network, a.asset),
                money(a.unclaimed, a.network, a.asset),
            ]
            for a in signals.assets
        ],
        "signals-assets",
    )
    empty = "" if charts else '<p class="empty">no closed cycle yet</p>'
    return f'<section id="signals"><h2>Signals</h2>{charts or empty}{sellers}{assets}</section>'
