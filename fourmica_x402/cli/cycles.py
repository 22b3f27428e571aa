"""The ``cycle`` commands: close the open clearing cycle now (``cycle close``), or keep cycles
advancing as they fall due (``cycle run``), saying what each tick did and what falls due next.

Like every Core command but ``serve``, they work on the seller's existing database; the cycle
settings are this process's own (docs/operations.md, "Operator settings").
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ..errors import FourmicaError
from ._args import (
    CYCLE_SETTINGS,
    asset_option,
    core_settings,
    db_error,
    db_option,
    describe,
    network_option,
    open_core,
    safe_url,
)
from ._format import Duration, duration, span, utc, with_times

#: How often an idle ``cycle run`` says it is still there (seconds).
IDLE_EVERY = 60.0


@click.group()
def cycle() -> None:
    """Clearing cycles: close one now, or keep them running."""


@cycle.command("close")
@db_option
@network_option
@asset_option
@core_settings(*CYCLE_SETTINGS, note="Used for this close only.")
def cycle_close(db: str, network: str, asset: str | None, config: Any) -> None:
    """Close the open cycle now and net its guarantees (times in UTC, amounts atomic).

    Durations take seconds (90) or a unit: 90s, 15m, 6h, 22d.
    """
    core = open_core(db, config=config)
    try:
        closed = core.close_cycle(network=network, asset=asset)
        rows = core.cycle_positions(closed.cycle_id)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    click.echo(
        json.dumps(
            {"cycle": with_times(closed.to_dict()), "positions": [p.to_dict() for p in rows]},
            indent=2,
        )
    )


@cycle.command("run")
@db_option
@click.option(
    "--interval",
    default=5.0,
    show_default=True,
    type=Duration(),
    help="Time between ticks: seconds (5) or with a unit (30s, 1m).",
)
@click.option("--once", is_flag=True, help="Advance what is due once and exit.")
@core_settings(*CYCLE_SETTINGS, note="Used for as long as this process runs.")
def cycle_run(db: str, interval: float, once: bool, config: Any) -> None:
    """Advance cycles (close, resolve, finalize with default coverage) as they fall due.

    Prints a line when it starts, one per tick that did something, and, when nothing is due,
    an "idle" line at most once a minute (times in UTC). Durations take seconds (90) or a
    unit: 90s, 15m, 6h, 22d.
    """
    import time

    core = open_core(db, config=config)
    every = "once" if once else f"every {span(interval)}"
    click.echo(
        f"{utc(core.clock())} cycle run: Core {_where(db)}, ticking {every} "
        f"({describe(core.config, CYCLE_SETTINGS)})"
    )
    said = -IDLE_EVERY  # when a tick last printed (monotonic): the first idle tick says so
    while True:
        try:
            steps = _steps(core.tick())
            if steps:
                said = time.monotonic()
                click.echo(f"{utc(core.clock())} {steps}")
            elif once or time.monotonic() - said >= IDLE_EVERY:
                said = time.monotonic()
                click.echo(f"{utc(core.clock())} idle: nothing due; {_next_due(core)}")
        except FourmicaError as exc:
            raise db_error(exc, db) from None
        if once:
            return
        time.sleep(interval)


def _where(db: str) -> str:
    """The database as the operator finds it: a SQLite file by its full path."""
    path = db[len("sqlite:///") :] if db.startswith("sqlite:///") else None
    if path is None or path == ":memory:" or os.path.isabs(path):
        return safe_url(db)
    return f"{db} ({os.path.abspath(path)})"


def _steps(done: dict[str, int]) -> str:
    """``closed 1 cycle, cancelled 2 guarantees …``: what one tick did ("" when nothing)."""
    said = []
    for key, one, many in (
        ("closed", "closed {} cycle", "closed {} cycles"),
        ("resolved", "resolved {} cycle", "resolved {} cycles"),
        ("finalized", "finalized {} cycle", "finalized {} cycles"),
        (
            "validations_expired",
            "cancelled {} guarantee past its validation timeout",
            "cancelled {} guarantees past their validation timeout",
        ),
    ):
        count = done.get(key, 0)
        if count:
            said.append((one if count == 1 else many).format(count))
    return ", ".join(said)


def _next_due(core: Any) -> str:
    """What falls due next, and when: ``next: cycle 3 closes at 2025-06-01T12:00:00Z``."""
    due = []
    for cycle in core.cycles(status="open"):
        due.append((cycle.closes_at, f"cycle {cycle.cycle_id} closes"))
    for cycle in core.cycles(status="closed"):
        if cycle.resolve_at is not None:
            due.append((cycle.resolve_at, f"cycle {cycle.cycle_id} resolves"))
    for cycle in core.cycles(status="resolved"):
        if cycle.final_at is not None:
            due.append((cycle.final_at, f"cycle {cycle.cycle_id} is finalized"))
    if not due:
        return "no cycle open yet (one opens with the first payment or `cycle close`)"
    at, what = min(due)
    return f"next: {what} at {utc(at)} (in {duration(at - core.clock())})"
