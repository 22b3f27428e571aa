"""``fourmica-x402 demo``: the whole system on one machine, in one command.

A Core on a fresh SQLite file; three sellers — a Starlette *planner*, a Flask *data*
service and a Django *validator* — on loopback, each with its own gate on that same
file; three agents that are those sellers and also buy from each other, plus a
customer whose jobs split a fee across all three. Then: close a clearing cycle and
show how many guarantees became how many net transfers, let debtors pay, let one
default and be covered from its collateral, check every invariant, show the
dashboard. Exit code 0 only if every invariant held.

This module runs the story; :mod:`.sellers` builds and serves the sellers, :mod:`.workload`
funds the agents and drives their purchases, :mod:`.report` settles the cycle, checks the
invariants and prints the tables.

The frameworks are imported only when the demo runs (``pip install "fourmica-x402[all]"``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.records import Records

from .report import check_invariants, positions_table, settle_cycle, summary_table
from .sellers import (
    NETWORK,
    PRICES,
    django_validator,
    flask_data,
    free_port,
    serve_asgi,
    serve_wsgi,
    starlette_planner,
    wait_up,
)
from .workload import fund_agents, run_workload

__all__ = ["run_demo"]


def run_demo(
    *, quick: bool = False, serve: bool = False, echo: Callable[[str], None] | None = None
) -> int:
    """Run the demo; returns the process exit code (0: every invariant held).

    Its Core lives in a temporary directory, removed when the demo ends (failed runs too).
    """
    workdir = Path(tempfile.mkdtemp(prefix="fourmica-demo-"))
    opened: list[Core] = []
    try:
        return _run_demo(workdir, opened, quick=quick, serve=serve, echo=echo)
    finally:
        for core in opened:
            core.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_demo(
    workdir: Path,
    opened: list[Core],
    *,
    quick: bool = False,
    serve: bool = False,
    echo: Callable[[str], None] | None = None,
) -> int:
    from rich.console import Console

    console = Console()
    say = echo or console.print
    started = time.monotonic()
    db = f"sqlite:///{workdir / 'core.db'}"
    # Seconds instead of hours, so a whole clearing cycle fits in the demo.
    core_config = CoreConfig(
        resolution_delay=1.0, payment_window=1.0, finality=1.0, withdrawal_grace=2.0
    )
    core = Core(db, config=core_config)
    opened.append(core)
    say(f"[bold]fourmica-x402 demo[/bold] · Core on {db}")
    agents = fund_agents(core, say)

    def config(name: str, price_in_config: bool) -> PaymentConfig:
        path, price = PRICES[name]
        return PaymentConfig(
            pay_to=agents[name].wallet.address,
            network=NETWORK,
            routes={f"GET {path}": price} if price_in_config else {},
            core=Core(db, config=core_config),
        )

    ports = {name: free_port() for name in PRICES}
    for name in PRICES:
        agents[name].url = f"http://127.0.0.1:{ports[name]}"
    apps = {
        "planner": starlette_planner(config("planner", True)),
        "data": flask_data(config("data", False)),
        "validator": django_validator(config("validator", False)),
    }
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(serve_asgi(apps["planner"], ports["planner"]))
        stack.enter_context(serve_wsgi(apps["data"], ports["data"]))
        stack.enter_context(serve_wsgi(apps["validator"], ports["validator"]))
        for name in PRICES:
            wait_up(agents[name].url)
        say(
            f"sellers up: planner (Starlette) {agents['planner'].url} · data (Flask) {agents['data'].url} · "
            f"validator (Django) {agents['validator'].url}"
        )

        paid_calls, refused = run_workload(agents, quick=quick, console=console)
        say(f"workload: {paid_calls} paid calls, {refused} refused by policy or collateral")
        records = len(Records(core.store).query(limit=100_000))  # all three sellers share the file
        if records < paid_calls:
            problems.append(f"{paid_calls} paid calls but only {records} payment records")
        deadline = time.monotonic() + 10
        while any(g.state == "pending_validation" for g in core.guarantees(limit=100_000)):
            if time.monotonic() > deadline:
                problems.append("delivery scores were not all posted")
                break
            time.sleep(0.05)  # the delivery score is posted just after each response

        settled = settle_cycle(core, core_config, agents, say, problems)
        console.print(positions_table(settled))

        broken, cycle = check_invariants(core, settled)
        problems += broken
        console.print(
            summary_table(
                paid_calls=paid_calls,
                refused=refused,
                records=records,
                cycle=cycle,
                final=settled.final,
                problems=problems,
                started=started,
            )
        )
        for problem in problems:
            say(f"[red]invariant broken:[/red] {problem}")

        if serve:  # a dashboard link is printed only while something serves it
            from ..service import create_app

            port = free_port()
            stack.enter_context(
                serve_asgi(create_app(core, tick_interval=None, webhooks=False), port)
            )
            say(f"dashboard: http://127.0.0.1:{port}/")
            say("serving the sellers and the dashboard; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
        else:
            say("run with --serve to keep the sellers and the dashboard up")
    return 0 if not problems else 1
