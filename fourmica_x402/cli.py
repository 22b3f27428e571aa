"""The ``fourmica-x402`` command line."""

from __future__ import annotations

import json
import sys

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fourmica-x402")
def main() -> None:
    """Sell an API per request with the 4Mica credit flow on top of x402."""


@main.command()
@click.option("--quick", is_flag=True, help="A short run (≤ 30 s).")
def demo(quick: bool) -> None:
    """Run the end-to-end demo on the embedded Core."""
    click.echo(
        "The end-to-end demo is coming soon: it needs the embedded Core and the seller\n"
        "adapters, which are not built yet. Today this package ships the x402 wire codec,\n"
        "4mica-credit guarantee signing and verification, and `fourmica-x402 bench`."
    )


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
