"""The ``fourmica-x402`` command line."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ._eth import parse_address
from .config import DEFAULT_DB
from .errors import FourmicaError

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fourmica-x402")
def main() -> None:
    """Sell an API per request with the 4Mica credit flow on top of x402."""


@main.command()
@click.option("--quick", is_flag=True, help="A short run (≤ 30 s).")
@click.option(
    "--serve", is_flag=True, help="Keep the sellers and the dashboard running afterwards."
)
def demo(quick: bool, serve: bool) -> None:
    """Run the end-to-end demo on the embedded Core (exit 0 only if every invariant held)."""
    try:
        from .adapters.demo import run_demo
    except ImportError as exc:
        raise click.ClickException(
            f'the demo needs every framework: pip install "fourmica-x402[all]" ({exc})'
        ) from None
    sys.exit(run_demo(quick=quick, serve=serve))


def _core(db: str) -> Any:
    from .core import Core

    try:
        return Core(db)
    except FourmicaError as exc:
        raise click.ClickException(exc.message) from None


def _amount(value: str, network: str, asset: str | None) -> int:
    """'$5' or '5.00' → dollars of the asset; '5000000u' → atomic units."""
    from .networks import default_asset, find_asset, to_atomic

    if value.endswith("u") and value[:-1].isdigit():
        return int(value[:-1])
    token = find_asset(network, asset) if asset else default_asset(network)
    if token is None:
        raise click.BadParameter("unknown asset: give the amount in atomic units, e.g. 5000000u")
    try:
        return to_atomic(value, token)
    except FourmicaError as exc:
        raise click.BadParameter(exc.message) from None


_db = click.option(
    "--db",
    envvar="FOURMICA_X402_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Core database URL (or set FOURMICA_X402_DB).",
)
_network = click.option(
    "--network", default="eip155:84532", show_default=True, help="CAIP-2 network."
)
_asset = click.option("--asset", default=None, help="Token address (default: the network's USDC).")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4021, show_default=True, type=int)
@_db
@click.option(
    "--sandbox", is_flag=True, help="Enable the sandbox API (deposits, cycles, debit payments)."
)
@click.option(
    "--api-key",
    envvar="FOURMICA_X402_API_KEY",
    default=None,
    help="Require this bearer token on seller and sandbox calls (the operator's key).",
)
@click.option(
    "--seller-key",
    "seller_keys",
    multiple=True,
    envvar="FOURMICA_X402_SELLER_KEYS",
    metavar="TOKEN=0xADDRESS",
    help="A bearer token that may void, score and settle for that seller address only "
    "(repeatable; the environment variable takes them space-separated).",
)
@_network
def serve(
    host: str,
    port: int,
    db: str,
    sandbox: bool,
    api_key: str | None,
    seller_keys: tuple[str, ...],
    network: str,
) -> None:
    """Run the Core as an HTTP service (facilitator API, Core API, dashboard, metrics)."""
    keys: dict[str, str] = {}
    for item in seller_keys:
        token, sep, address = item.partition("=")
        try:
            if not sep or not token:
                raise ValueError("expected TOKEN=0xADDRESS")
            keys[token] = parse_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--seller-key") from None
    try:
        import uvicorn

        from .adapters.service import create_app
    except ImportError:
        raise click.ClickException(
            'serve needs the server extra: pip install "fourmica-x402[server]"'
        ) from None
    app = create_app(_core(db), sandbox=sandbox, api_key=api_key, seller_keys=keys, network=network)
    click.echo(
        f"fourmica-x402 Core on http://{host}:{port}  (dashboard: /, metrics: /metrics, sandbox: {sandbox})"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command()
@_db
@_network
@_asset
@click.argument("address")
@click.argument("amount")
def deposit(db: str, network: str, asset: str | None, address: str, amount: str) -> None:
    """Add sandbox collateral: AMOUNT like '$5' (or '5000000u' for atomic units)."""
    core = _core(db)
    try:
        position = core.deposit(
            address, _amount(amount, network, asset), network=network, asset=asset
        )
    except (FourmicaError, ValueError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    click.echo(json.dumps(position.to_dict(), indent=2))


@main.command()
@_db
@_network
@_asset
@click.option(
    "--finalize", "finalize_id", type=int, default=None, help="Finalize this pending withdrawal."
)
@click.option(
    "--cancel", "cancel_id", type=int, default=None, help="Cancel this pending withdrawal."
)
@click.argument("address", required=False)
@click.argument("amount", required=False)
def withdraw(
    db: str,
    network: str,
    asset: str | None,
    finalize_id: int | None,
    cancel_id: int | None,
    address: str | None,
    amount: str | None,
) -> None:
    """Request a withdrawal (ADDRESS AMOUNT), or --finalize/--cancel a pending one."""
    core = _core(db)
    try:
        if finalize_id is not None:
            result = core.finalize_withdrawal(finalize_id)
        elif cancel_id is not None:
            result = core.cancel_withdrawal(cancel_id)
        elif address and amount:
            result = core.request_withdrawal(
                address, _amount(amount, network, asset), network=network, asset=asset
            )
        else:
            raise click.UsageError("give ADDRESS AMOUNT, --finalize ID or --cancel ID")
    except (FourmicaError, ValueError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    click.echo(json.dumps(result.to_dict(), indent=2))


@main.group()
def cycle() -> None:
    """Clearing cycles: close one now, or keep them running."""


@cycle.command("close")
@_db
@_network
@_asset
def cycle_close(db: str, network: str, asset: str | None) -> None:
    """Close the open cycle now and net its guarantees."""
    core = _core(db)
    closed = core.close_cycle(network=network, asset=asset)
    click.echo(
        json.dumps(
            {
                "cycle": closed.to_dict(),
                "positions": [p.to_dict() for p in core.cycle_positions(closed.cycle_id)],
            },
            indent=2,
        )
    )


@cycle.command("run")
@_db
@click.option("--interval", default=5.0, show_default=True, help="Seconds between ticks.")
@click.option("--once", is_flag=True, help="Advance what is due once and exit.")
def cycle_run(db: str, interval: float, once: bool) -> None:
    """Advance cycles (close, resolve, finalize with default coverage) as they fall due."""
    import time

    core = _core(db)
    while True:
        done = core.tick()
        if any(done.values()):
            click.echo(json.dumps(done))
        if once:
            return
        time.sleep(interval)


@main.command()
@_db
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def positions(db: str, as_json: bool) -> None:
    """Collateral, locks and capacity of every participant."""
    core = _core(db)
    rows = core.positions()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"positions ({db})")
    for column in ("address", "network", "collateral", "locked", "pending", "capacity"):
        table.add_column(
            column, justify="right" if column not in ("address", "network") else "left"
        )
    for p in rows:
        table.add_row(
            p.address,
            p.network,
            f"{p.collateral:,}",
            f"{p.locked:,}",
            f"{p.pending_withdrawal:,}",
            f"{p.capacity:,}",
        )
    Console().print(table)


@main.command()
@click.argument("url")
@click.option(
    "--key",
    envvar="FOURMICA_X402_KEY",
    required=True,
    help="Buyer private key (hex); or set FOURMICA_X402_KEY.",
)
@click.option(
    "--max-price", default=None, help="Refuse to pay more than this per request, e.g. '$0.05'."
)
@click.option("--method", default="GET", show_default=True, help="HTTP method.")
@click.option("--data", default=None, help="JSON request body.")
@click.option("--receipts", default=None, help="Append the receipt to this SQLite ledger file.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds per HTTP call.")
def pay(
    url: str,
    key: str,
    max_price: str | None,
    method: str,
    data: str | None,
    receipts: str | None,
    timeout: float,
) -> None:
    """Make one paid request, like curl; print the body and the receipt as JSON."""
    import httpx

    from .client import RECEIPT_KEY, PaymentTransport, ReceiptLedger, SpendingPolicy
    from .errors import PaymentRefused

    try:
        body = json.loads(data) if data is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    try:
        transport = PaymentTransport(
            key,
            policy=SpendingPolicy(max_per_request=max_price),
            ledger=ReceiptLedger(receipts) if receipts else None,
        )
    except ValueError:
        raise click.BadParameter("not a 32-byte hex private key", param_hint="--key") from None
    with httpx.Client(transport=transport, timeout=timeout) as client:
        try:
            response = client.request(method.upper(), url, json=body)
        except PaymentRefused as exc:
            receipt = exc.receipt.to_dict() if exc.receipt is not None else None  # type: ignore[attr-defined]
            click.echo(
                json.dumps(
                    {
                        "paid": False,
                        "error": exc.reason,
                        "message": exc.message,
                        "receipt": receipt,
                    },
                    indent=2,
                )
            )
            sys.exit(1)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise click.ClickException(f"request failed: {exc}") from None
        receipt = response.extensions.get(RECEIPT_KEY)
        try:
            shown: object = response.json()
        except ValueError:
            shown = response.text
        click.echo(
            json.dumps(
                {
                    "status": response.status_code,
                    "body": shown,
                    "receipt": receipt.to_dict() if receipt is not None else None,
                },
                indent=2,
            )
        )
        if response.status_code >= 400:
            sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--quick", is_flag=True, help="Fewer iterations (noisier).")
@click.option("--only", multiple=True, help="Run only these benchmarks (repeatable).")
@click.option("--check", is_flag=True, help="Exit 1 when a target is missed.")
def bench(as_json: bool, quick: bool, only: tuple[str, ...], check: bool) -> None:
    """Measure the hot paths against baselines taken in the same run."""
    from . import bench as benchmarks

    try:
        results = benchmarks.run(list(only) or None, quick=quick)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        _print_table(results)
    if check and any(r.met is False for r in results):
        sys.exit(1)


def _print_table(results: list) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fourmica-x402 bench")
    for column in ("id", "what", "ours", "baseline", "ratio", "target", "met"):
        table.add_column(column)
    for r in results:
        base = "—" if r.baseline is None else f"{r.baseline:,.1f} {r.unit}"
        ratio = "—" if r.ratio is None else f"{r.ratio:.3f}"
        met = {True: "yes", False: "NO", None: "—"}[r.met]
        table.add_row(
            r.id,
            r.title,
            f"{r.ours:,.1f} {r.unit}",
            f"{base}\n({r.baseline_name})",
            ratio,
            r.target,
            met,
        )
    Console().print(table)
