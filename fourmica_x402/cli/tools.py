"""``demo`` (the end-to-end run on the embedded Core) and ``bench`` (the hot paths measured
against baselines taken in the same run)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ._args import EXTRAS, missing_extra

#: What the demo's sellers and servers import (a Starlette, a Flask and a Django seller).
_DEMO_NEEDS = ("starlette", "flask", "werkzeug", "django", "uvicorn")
#: What each benchmark needs beyond the base install (the module, then its extra).
_BENCH_NEEDS = {"P4-asgi": ("uvicorn",), "P4-wsgi": ("gunicorn",)}


@click.command()
@click.option("--quick", is_flag=True, help="A short run (≤ 30 s).")
@click.option(
    "--serve", is_flag=True, help="Keep the sellers and the dashboard running afterwards."
)
def demo(quick: bool, serve: bool) -> None:
    """Run the end-to-end demo on the embedded Core (exit 0 only if every invariant held)."""
    import importlib.util

    missing = [name for name in _DEMO_NEEDS if importlib.util.find_spec(name) is None]
    try:
        if missing:
            raise ModuleNotFoundError(name=missing[0])
        from ..adapters.demo import run_demo

        code = run_demo(quick=quick, serve=serve)
    except ImportError as exc:
        if missing_extra(exc) is None:
            raise
        raise click.ClickException(
            f"the demo needs every framework ({(exc.name or '').split('.')[0]} is not "
            'installed): pip install "fourmica-x402[all]"'
        ) from None
    sys.exit(code)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--quick", is_flag=True, help="Fewer iterations (noisier).")
@click.option("--only", multiple=True, help="Run only these benchmarks (repeatable).")
@click.option("--check", is_flag=True, help="Exit 1 when a target is missed.")
def bench(as_json: bool, quick: bool, only: tuple[str, ...], check: bool) -> None:
    """Measure the hot paths against baselines taken in the same run.

    Each benchmark says on stderr when it starts and finishes (a spinner on a terminal); the
    table, or the --json, is all that goes to stdout. The eth-account baselines (recover, P6)
    need the bench extra: pip install "fourmica-x402[bench]".
    """
    import importlib.util

    from .. import bench as benchmarks

    unknown = [name for name in only if name not in benchmarks.BENCHMARKS]
    if unknown:
        raise click.UsageError(
            f"unknown benchmark(s): {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(benchmarks.BENCHMARKS)}"
        )
    chosen = list(only or benchmarks.BENCHMARKS)
    for name in list(chosen):
        missing = [m for m in _BENCH_NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
        if not missing:
            continue
        extra = EXTRAS[missing[0]]
        why = f'needs {missing[0]}, which is not installed: pip install "fourmica-x402[{extra}]"'
        if only:  # asked for by name: say why it cannot run
            raise click.ClickException(f"benchmark {name} {why}")
        click.echo(f"bench: {name} skipped: {why}", err=True)
        chosen.remove(name)
    if not chosen:
        return
    spinner = _spinner()  # None: plain progress lines on stderr (bench.Lines)
    try:
        results = benchmarks.run(chosen, quick=quick, progress=spinner)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    except ImportError as exc:
        raise (missing_extra(exc) or exc) from None
    finally:
        if spinner is not None:
            spinner.close()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        _print_table(results)
    note = _missing_baselines(results)
    if note:
        click.echo(note, err=True)
    if check and any(r.met is False for r in results):
        sys.exit(1)


def _spinner() -> _Spinner | None:
    """On a terminal, ``bench`` shows a spinner on stderr while each benchmark runs."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return _Spinner(console)
    return None


class _Spinner:
    """On a terminal: a spinner while a benchmark runs, then one line saying it is done."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.status: Any = None

    def started(self, name: str, index: int, total: int) -> None:
        from rich.markup import escape

        from ..bench import summary

        self.close()
        what = f"[{index}/{total}] {name}: {summary(name)}"
        room = max(20, self.console.width - 12)  # one line beside the spinner, never wrapped
        if len(what) > room:
            what = what[: room - 1] + "…"
        self.status = self.console.status(f"bench {escape(what)}")
        self.status.start()

    def finished(self, name: str, index: int, total: int, seconds: float) -> None:
        from rich.markup import escape

        self.close()
        self.console.print(
            f"[green]✓[/] bench {escape(f'[{index}/{total}] {name}')} done in {seconds:.1f} s"
        )

    def skipped(self, name: str, index: int, total: int, reason: str) -> None:
        from rich.markup import escape

        self.close()
        self.console.print(f"[yellow]–[/] bench: {escape(name)} skipped: {escape(reason)}")

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _missing_baselines(results: list[Any]) -> str | None:
    """A note when eth-account baselines are missing because its extra is not installed."""
    missing = [
        r.id for r in results if r.baseline is None and r.baseline_name.startswith("eth-account")
    ]
    if not missing:
        return None
    try:
        import eth_account  # noqa: F401
    except ImportError:
        return (
            f"bench: no baseline for {', '.join(missing)}: eth-account is not installed: "
            f'pip install "fourmica-x402[{EXTRAS["eth_account"]}]"'
        )
    return None


def _print_table(results: list[Any]) -> None:
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
