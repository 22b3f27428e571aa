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
