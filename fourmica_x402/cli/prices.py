"""``fourmica-x402 reprice``: change route prices at run time for every seller process on one
database, or list the prices in force and the changes (docs/operations.md, "Repricing")."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ConfigurationError, FourmicaError
from ._args import check_db, db_error, db_option, require_existing
from ._format import utc


def _change(text: str) -> tuple[str, str]:
    route, sep, price = text.rpartition("=")
    if not sep or not route.strip() or not price.strip():
        raise click.BadParameter(
            f"{text!r:.80} is not ROUTE=PRICE, e.g. 'GET /premium=$0.02'", param_hint="CHANGES"
        )
    from ..networks import resolve_price

    try:  # a dollar or token price, as a route table takes it
        resolve_price(price.strip(), "eip155:84532")
    except (ConfigurationError, ValueError) as exc:
        raise click.BadParameter(f"{price.strip()!r:.40}: {exc}", param_hint="CHANGES") from None
    return route.strip(), price.strip()


@click.command()
@db_option
@click.argument("changes", nargs=-1, metavar="['ROUTE=PRICE'...]")
@click.option(
    "--reset", "resets", multiple=True, metavar="ROUTE", help="Back to the configured price."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reprice(db: str, changes: tuple[str, ...], resets: tuple[str, ...], as_json: bool) -> None:
    """Change route prices without a restart: 'GET /premium=$0.02' (the route as the seller's
    table or @paid names it; the seller's admin listing shows each key). Every seller process
    on this database applies it within its price_poll. Without changes: the prices in force.

    The records database is the Core's for an embedded seller (--db)."""
    from ..core.store import open_store
    from ..gate.prices import PriceBook, route_key

    check_db(db)
    require_existing(db)
    wanted: dict[str, Any] = dict(_change(text) for text in changes)
    reset = {route_key(r) for r in resets if r.strip()}
    if both := sorted(reset & {route_key(k) for k in wanted}):
        raise click.UsageError(f"{both[0]!r} is both given a price and reset: say one")
    wanted.update(dict.fromkeys(reset))
    try:
        book = PriceBook(open_store(db))
        if wanted:
            book.set(wanted, source="cli")
        _, current = book.current()
        history = book.history(limit=20)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    if changes:  # this database does not know the sellers' tables: say what happens to a typo
        click.echo(
            "note: stored; sellers on this database apply it within their price_poll. This "
            "database cannot tell which route keys they price: a route key no seller prices "
            "changes nothing, and each seller logs such a key once (check a key against the "
            "seller's admin listing: GET <prefix>/admin/prices)",
            err=True,
        )
    if as_json:
        listing = {"prices": current, "changes": [c.to_dict() for c in history]}
        click.echo(json.dumps(listing, indent=2))
        return
    if not current:
        click.echo("every route at its configured price")
    for route, price in sorted(current.items()):
        click.echo(f"{route}  {price}")
    if history:
        click.echo("\nchanges (newest first):")
    for change in history:
        shown = "configured price" if change.price is None else change.price
        click.echo(f"  {utc(change.changed_at)}  {change.route}  -> {shown}  ({change.source})")
