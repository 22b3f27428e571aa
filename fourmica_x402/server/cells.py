"""The pieces the HTML pages are built of: amounts, addresses, state labels and tables. Every
value is HTML-escaped here, so the pages assemble trusted markup only."""

from __future__ import annotations

import html
from decimal import Decimal

from fourmica_x402.networks import find_asset, get_network

__all__ = ["amount_text", "asset_label", "badge", "money", "short", "table"]


def amount_text(amount: int, network: str, asset: str) -> str:
    """An amount as plain text: ``1.5 USDC`` for a known token, else its atomic units."""
    token = find_asset(network, asset)
    if token is None:
        return f"{amount:,}"
    human = Decimal(amount).scaleb(-token.decimals).normalize()
    return f"{human:f} {token.symbol}"


def money(amount: int, network: str, asset: str) -> str:
    """An amount for a table cell, marked so its column is right-aligned."""
    return f'<span class="num">{html.escape(amount_text(amount, network, asset))}</span>'


def network_name(network: str) -> str:
    """``Base Sepolia``; the CAIP-2 id of a network this process does not know (one a seller's
    process registered, say)."""
    try:
        return get_network(network).name
    except Exception:
        return network


def asset_label(network: str, asset: str) -> str:
    """``USDC · Base Sepolia`` (plain text; the address when the token is unknown)."""
    token = find_asset(network, asset)
    return f"{token.symbol if token else asset} · {network_name(network)}"


def badge(text: str) -> str:
    """A state or role as a small coloured label (the text stays exactly the state name)."""
    safe = html.escape(text)
    return f'<span class="st st-{safe}">{safe}</span>'


def short(address: str | None) -> str:
    if not address:
        return "—"
    return f'<code title="{html.escape(address)}">{html.escape(address[:6])}…{html.escape(address[-4:])}</code>'


def table(title: str, headers: list[str], rows: list[list[str]], table_id: str) -> str:
    # A column of amounts is right-aligned, its header too, so the digits line up.
    numeric = {
        i for i in range(len(headers)) if rows and all('class="num"' in row[i] for row in rows)
    }

    def cell(tag: str, i: int, content: str) -> str:
        return (
            f'<{tag} class="num">{content}</{tag}>' if i in numeric else f"<{tag}>{content}</{tag}>"
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
