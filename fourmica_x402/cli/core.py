"""The Core's commands: serve it, fund and withdraw collateral, show positions, set an asset's
collateral factor; the ``cycle`` commands are in :mod:`.cycles` (importable from here too).

Every command but ``serve`` (and ``deposit --create``) works on an existing database: the
seller's (docs/operations.md, "The embedded Core"). The Core's durations are settings of each
process that opens it, given as options or ``FOURMICA_X402_*`` variables; the collateral
factor is kept in the database (docs/operations.md, "Operator settings").
"""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction
from typing import Any

import click

from .._eth import parse_address
from ..errors import FourmicaError
from ._args import (
    SETTINGS,
    TOKEN,
    asset_option,
    check_address,
    check_db,
    core_settings,
    db_error,
    db_option,
    missing_extra,
    network_option,
    open_core,
    safe_url,
)
from ._format import atomic_amount, duration, utc, with_times
from .cycles import IDLE_EVERY as IDLE_EVERY
from .cycles import cycle as cycle
from .cycles import cycle_close as cycle_close
from .cycles import cycle_run as cycle_run

#: The largest collateral factor taken: credit of 100× the collateral is surely a typo.
MAX_FACTOR = 100
_FACTOR = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+|\d+/\d+)\Z")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4021, show_default=True, type=click.IntRange(1, 65535))
@db_option
@click.option(
    "--sandbox", is_flag=True, help="Enable the sandbox API (deposits, cycles, debit payments)."
)
@click.option(
    "--api-key",
    envvar="FOURMICA_X402_API_KEY",
    show_envvar=True,
    default=None,
    help="Require this bearer token on seller and sandbox calls (the operator's key).",
)
@click.option(
    "--seller-key",
    "seller_keys",
    multiple=True,
    envvar="FOURMICA_X402_SELLER_KEYS",
    show_envvar=True,
    metavar="TOKEN=0xADDRESS",
    help="A bearer token that may void, score and settle for that seller address only "
    "(repeatable; the environment variable takes them space-separated).",
)
@click.option(
    "--alerts",
    envvar="FOURMICA_X402_ALERTS",
    default=None,
    metavar="RULE=VALUE,…",
    help="Alert rules the service checks, as rule=value pairs separated by commas (or set "
    "FOURMICA_X402_ALERTS), e.g. default=0,settlement_deadline=15m (docs/operations.md, Alerts).",
)
@click.option(
    "--public-url",
    envvar="FOURMICA_X402_PUBLIC_URL",
    show_envvar=True,
    default=None,
    metavar="URL",
    help="The service's public base URL (https://core.example): handed out as its Core API "
    "address instead of the request's Host, and a name browsers may reach it by.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    envvar="FOURMICA_X402_ALLOWED_HOSTS",
    show_envvar=True,
    metavar="NAME",
    help="Without --api-key, a host name browsers may reach the service by besides localhost, "
    "IP addresses and --public-url's (repeatable; the environment variable takes them "
    "space-separated): a reverse proxy's upstream name, a LAN name.",
)
@network_option
@core_settings(*SETTINGS, note="Used for as long as the service runs.")
def serve(
    host: str,
    port: int,
    db: str,
    sandbox: bool,
    api_key: str | None,
    seller_keys: tuple[str, ...],
    alerts: str | None,
    public_url: str | None,
    allowed_hosts: tuple[str, ...],
    network: str,
    config: Any,
) -> None:
    """Run the Core as an HTTP service (facilitator API, Core API, dashboard, metrics).

    Durations take seconds (90) or a unit: 90s, 15m, 6h, 22d. They are this process's
    settings, not the database's: give `cycle run`, `cycle close` and `withdraw` on the same
    database the same ones (the FOURMICA_X402_* variables do it for all).
    """
    import socket

    keys: dict[str, str] = {}
    for item in seller_keys:
        token, sep, address = item.rpartition("=")  # an address has no '=', a token may
        try:
            if not sep:
                raise ValueError("no '=' between TOKEN and ADDRESS")
            if not token:
                raise ValueError("the token is empty")
            if not TOKEN.match(token):
                raise ValueError("the token must be printable ASCII without spaces")
            try:
                bound = parse_address(address)
            except ValueError:
                raise ValueError("ADDRESS is not an address") from None
            if keys.setdefault(token, bound) != bound:  # the last would act for both sellers
                raise ValueError("one token is given for two addresses: give each seller its own")
        except ValueError as exc:  # never the value itself: its halves may be swapped
            raise click.BadParameter(
                f"{exc} (expected TOKEN=0xADDRESS)", param_hint="'--seller-key'"
            ) from None
    rules = None
    if alerts:
        from ..core.alerts import AlertRules

        try:
            rules = AlertRules.parse(alerts)
        except FourmicaError as exc:
            raise click.BadParameter(exc.message, param_hint="'--alerts'") from None
    if public_url is not None:
        from .._urls import check_http_url, check_public_url

        try:
            check_http_url(public_url)
            check_public_url(public_url)
        except ValueError as exc:
            raise click.BadParameter(
                f"{exc}: give an http(s) URL such as https://core.example",
                param_hint="'--public-url'",
            ) from None
        public_url = public_url.rstrip("/")
    from ..server.base import check_host_name

    for name in allowed_hosts:
        try:
            check_host_name(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--allowed-host'") from None
    if api_key is not None and not TOKEN.match(api_key):
        # An empty key would let every request through as the operator.
        raise click.BadParameter(
            "give a token of printable ASCII without spaces (or leave the option out)",
            param_hint="'--api-key'",
        )
    check_db(db)
    try:
        family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise click.BadParameter(
            f"cannot resolve {host!r:.80}: {exc}", param_hint="'--host'"
        ) from None
    try:  # say so now, rather than after the Core is open and the server half started
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    try:
        import uvicorn

        from ..adapters.service import create_app
    except ImportError as exc:
        if missing_extra(exc) is None:
            raise
        raise click.ClickException(
            'serve needs the server extra: pip install "fourmica-x402[server]"'
        ) from None
    path = db[len("sqlite:///") :] if db.startswith("sqlite:///") else ":memory:"
    made = path != ":memory:" and not os.path.exists(path)
    core = open_core(db, create=True, config=config)  # the service's Core: made here when new
    if made:  # every other command refuses a missing file: say this one made it
        click.echo(
            f"note: there was no database at {os.path.abspath(path)}: a new, empty Core was "
            "made there (sellers and the CLI name this file)",
            err=True,
        )
    try:  # the webhooks' schema may be newer than this release's
        app = create_app(
            core,
            sandbox=sandbox,
            api_key=api_key,
            seller_keys=keys,
            network=network,
            alerts=rules,
            public_url=public_url,
            allowed_hosts=allowed_hosts,
        )
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    click.echo(
        f"fourmica-x402 Core on http://{host}:{port}  (dashboard: /, metrics: /metrics, sandbox: {sandbox})"
    )
    if api_key is None and not keys and not sandbox:
        click.echo(
            "warning: no --api-key and no --seller-key: sellers' void and validation calls are "
            "refused, so their refunds fail and their delivery scores never land (their G-v2 "
            "payments are cancelled at the validation timeout). Give each seller a key "
            "(docs/operations.md, Keys).",
            err=True,
        )
    if sandbox and api_key is None:
        reach = "this machine" if host in ("127.0.0.1", "localhost", "::1") else f"{host}"
        what = "void and score payments, " if not keys else ""
        click.echo(
            f"warning: --sandbox without --api-key: anyone who reaches {reach} may deposit "
            f"sandbox collateral, close cycles, {what}subscribe webhooks "
            "(docs/operations.md, Keys). For development only.",
            err=True,
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command()
@db_option
@network_option
@asset_option
@click.option(
    "--create",
    is_flag=True,
    help="Make the SQLite database if it does not exist (without it, a missing file is refused: "
    "deposit into the seller's database).",
)
@click.argument("address")
@click.argument("amount")
def deposit(
    db: str, network: str, asset: str | None, create: bool, address: str, amount: str
) -> None:
    """Add sandbox collateral: AMOUNT like '$5' (or '5000000u' for atomic units)."""
    address = check_address(address)
    atomic = atomic_amount(amount, network, asset)
    core = open_core(db, create=create, can_create=True)
    try:
        position = core.deposit(address, atomic, network=network, asset=asset)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(position.to_dict(), indent=2))


@click.command()
@db_option
@network_option
@asset_option
@click.option(
    "--finalize",
    "finalize_id",
    type=click.IntRange(min=1),
    default=None,
    help="Finalize this pending withdrawal.",
)
@click.option(
    "--cancel",
    "cancel_id",
    type=click.IntRange(min=1),
    default=None,
    help="Cancel this pending withdrawal.",
)
@click.argument("address", required=False)
@click.argument("amount", required=False)
@core_settings("withdrawal_grace", note="Used for this request only.")
def withdraw(
    db: str,
    network: str,
    asset: str | None,
    finalize_id: int | None,
    cancel_id: int | None,
    address: str | None,
    amount: str | None,
    config: Any,
) -> None:
    """Request a withdrawal (ADDRESS AMOUNT), or --finalize/--cancel a pending one.

    AMOUNT like '$1' (or '1000000u' for atomic units), as deposit takes it. The JSON printed
    counts atomic units; its times are in UTC (ISO 8601).
    """
    from ..errors import CoreError

    if finalize_id is not None and cancel_id is not None:
        raise click.UsageError("give --finalize ID or --cancel ID, not both")
    if finalize_id is None and cancel_id is None:
        if not (address and amount):
            raise click.UsageError("give ADDRESS AMOUNT, --finalize ID or --cancel ID")
        address = check_address(address)
        atomic = atomic_amount(amount, network, asset)
    elif address or amount:
        raise click.UsageError("--finalize and --cancel take no ADDRESS or AMOUNT")
    core = open_core(db, config=config)
    try:
        if finalize_id is not None:
            try:
                result = core.finalize_withdrawal(finalize_id)
            except CoreError as exc:
                if exc.reason != "withdrawal_not_ready":
                    raise
                ready = core.withdrawal(finalize_id).available_at
                raise click.ClickException(
                    f"the grace period of withdrawal {finalize_id} has not passed: it runs until "
                    f"{utc(ready)} (UTC, {duration(ready - core.clock())} from now)"
                ) from None
        elif cancel_id is not None:
            result = core.cancel_withdrawal(cancel_id)
        else:
            assert address is not None
            result = core.request_withdrawal(address, atomic, network=network, asset=asset)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(with_times(result.to_dict()), indent=2))


@click.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (amounts in atomic units).")
def positions(db: str, as_json: bool) -> None:
    """Collateral, locks and capacity of every participant (in dollars; --json: atomic)."""
    from ..networks import find_asset, format_amount

    core = open_core(db)
    try:
        rows = core.positions()
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("collateral", "locked", "pending", "capacity")
    shown = []
    for p in rows:
        token = find_asset(p.network, p.asset)
        amounts = (p.collateral, p.locked, p.pending_withdrawal, p.capacity)
        shown.append((p.address, p.network, *(format_amount(a, token) for a in amounts)))
    title = f"positions ({safe_url(db)})"
    table = Table(title=title)
    table.add_column("address", no_wrap=True)
    table.add_column("network", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in shown:
        table.add_row(*row)
    console = Console()
    headers = ("address", "network", *columns)
    widths = [max(len(text) for text in column) for column in zip(headers, *shown, strict=True)]
    if 1 + sum(width + 3 for width in widths) <= console.width:  # "│ cell " per column, "│"
        console.print(table)
        return
    # Too narrow for the table: one block per position, addresses always written out in full.
    click.echo(title)
    if not shown:
        click.echo("(none)")
    for row in shown:
        click.echo(f"\n{row[0]}\n  network     {row[1]}")
        for column, text in zip(columns, row[2:], strict=True):
            click.echo(f"  {column:<11} {text}")


@click.command()
@db_option
@network_option
@asset_option
@click.argument("value", required=False)
def factor(db: str, network: str, asset: str | None, value: str | None) -> None:
    """Show an asset's collateral factor, or set it to VALUE (0.5, or 1/2).

    A position's credit limit is its collateral × the factor (1 unless set; above 1 is credit
    beyond collateral). The factor is kept in the database: every process on it uses the new
    one at once, and every position's credit limit is recomputed.
    """
    from ..core import collateral

    number = None if value is None else _check_factor(value)
    core = open_core(db)
    try:
        token = collateral.asset_address(network, asset)
        if number is not None:
            core.set_factor(network, token, number)
        with core.store.transaction(write=False) as tx:
            current = collateral.read_factor(tx, network, token)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    click.echo(
        json.dumps(
            {
                "network": network,
                "asset": token,
                "factor": str(current),
                "as_decimal": float(current),
            },
            indent=2,
        )
    )


def _check_factor(value: str) -> Fraction:
    text = value.strip()
    if len(text) > 40 or not _FACTOR.match(text):
        raise click.BadParameter(
            f"{value!r:.60} is not a factor: give a decimal (0.5) or a fraction (1/2)",
            param_hint="VALUE",
        )
    _, _, denominator = text.partition("/")
    if denominator and int(denominator) == 0:
        raise click.BadParameter(f"{value!r} divides by zero", param_hint="VALUE")
    number = Fraction(text)
    if not 0 < number <= MAX_FACTOR:
        raise click.BadParameter(
            f"{value!r} must be above 0 and at most {MAX_FACTOR}", param_hint="VALUE"
        )
    return number
