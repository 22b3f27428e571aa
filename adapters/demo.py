"""``fourmica-x402 demo``: the whole system on one machine, in one command.

A Core on a fresh SQLite file; three sellers — a Starlette *planner*, a Flask *data*
service and a Django *validator* — on loopback, each with its own gate on that same
file; three agents that are those sellers and also buy from each other, plus a
customer whose jobs split a fee across all three. Then: close a clearing cycle and
show how many guarantees became how many net transfers, let debtors pay, let one
default and be covered from its collateral, check every invariant, show the
dashboard. Exit code 0 only if every invariant held.

The frameworks are imported only when the demo runs (``pip install "fourmica-x402[all]"``).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fourmica_x402.client import RECEIPT_KEY, PaymentTransport, SpendingPolicy
from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.errors import PaymentRefused
from fourmica_x402.records import Records
from fourmica_x402.testing import TestBuyer

__all__ = ["run_demo"]

NETWORK = "eip155:84532"
PRICES = {
    "planner": ("/plan", "$0.02"),
    "data": ("/data", "$0.01"),
    "validator": ("/validate", "$0.005"),
}


@dataclass
class Agent:
    name: str
    wallet: TestBuyer
    collateral: str
    url: str = ""
    paid: int = 0
    refused: int = 0
    spent: int = 0
    receipts: list[Any] = field(default_factory=list)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the three sellers -------------------------------------------------------------------------


def _starlette_planner(config: PaymentConfig) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from .asgi import PaymentMiddleware

    async def plan(request: Request) -> JSONResponse:
        steps = ["gather data", "validate", "summarise"]
        return JSONResponse({"plan": steps, "for": request.state.payment.payer})

    async def free(request: Request) -> JSONResponse:
        return JSONResponse({"free": True})

    return Starlette(
        routes=[Route("/plan", plan), Route("/free", free)],
        middleware=[Middleware(PaymentMiddleware, config=config)],  # type: ignore[arg-type]
    )


def _flask_data(config: PaymentConfig) -> Any:
    from flask import Flask, g

    from .flask import FourmicaX402, paid

    app = Flask("fourmica_demo_data")
    FourmicaX402(app, config=config)

    @app.get("/data")
    @paid(price=PRICES["data"][1])
    def data() -> dict[str, Any]:
        return {"rows": [random.random() for _ in range(5)], "for": g.payment.payer}

    @app.get("/free")
    def free() -> dict[str, Any]:
        return {"free": True}

    return app


def _django_validator(config: PaymentConfig) -> Any:
    import django
    from django.conf import settings

    module = types.ModuleType("fourmica_demo_validator_urls")
    sys.modules[module.__name__] = module
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="demo-only-not-secret",
            ROOT_URLCONF=module.__name__,
            MIDDLEWARE=["fourmica_x402.adapters.django.PaymentMiddleware"],
            INSTALLED_APPS=[],
            DATABASES={},
            FOURMICA_X402_CONFIG=config,
            USE_TZ=True,
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpRequest, JsonResponse
    from django.urls import path

    from .django import paid

    @paid(price=PRICES["validator"][1])
    def validate(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"valid": True, "score": 100, "for": request.payment.payer})  # type: ignore[attr-defined]

    def free(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"free": True})

    module.urlpatterns = [path("validate", validate), path("free", free)]  # type: ignore[attr-defined]
    return WSGIHandler()


@contextlib.contextmanager
def _serve_wsgi(app: Any, port: int) -> Iterator[None]:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:  # the demo prints its own story
            pass

    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()


@contextlib.contextmanager
def _serve_asgi(app: Any, port: int) -> Iterator[None]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/free", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"seller at {url} did not start")


# -- the run -----------------------------------------------------------------------------------


def _buy(
    agent: Agent, seller: Agent, calls: int, policy: SpendingPolicy, tick: Callable[[], None]
) -> None:
    path, _ = PRICES[seller.name]
    with httpx.Client(
        transport=PaymentTransport(agent.wallet.key, policy=policy), timeout=30
    ) as client:
        for _ in range(calls):
            try:
                response = client.get(seller.url + path)
                receipt = response.extensions[RECEIPT_KEY]
                agent.receipts.append(receipt)
                if response.status_code == 200 and receipt.outcome == "paid":
                    agent.paid += 1
                    agent.spent += receipt.amount or 0
            except PaymentRefused as refused:
                agent.refused += 1
                agent.receipts.append(refused.receipt)
            tick()


def _money(atomic: int) -> str:
    sign = "-" if atomic < 0 else ""
    return f"{sign}${abs(atomic) / 1_000_000:,.4f}"


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
    from rich.progress import Progress
    from rich.table import Table

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

    agents = {
        "planner": Agent("planner", TestBuyer.new(), "$5"),
        "data": Agent("data", TestBuyer.new(), "$5"),
        "validator": Agent("validator", TestBuyer.new(), "$2"),
        "customer": Agent("customer", TestBuyer.new(), "$10"),
    }
    for agent in agents.values():
        from fourmica_x402.networks import default_asset, to_atomic

        core.deposit(
            agent.wallet.address,
            to_atomic(agent.collateral, default_asset(NETWORK)),
            network=NETWORK,
        )
    say(
        "funded 4 agents with sandbox collateral: "
        + ", ".join(f"{a.name} {a.collateral}" for a in agents.values())
    )

    def config(name: str, price_in_config: bool) -> PaymentConfig:
        path, price = PRICES[name]
        return PaymentConfig(
            pay_to=agents[name].wallet.address,
            network=NETWORK,
            routes={f"GET {path}": price} if price_in_config else {},
            core=Core(db, config=core_config),
        )

    ports = {name: _port() for name in PRICES}
    for name in PRICES:
        agents[name].url = f"http://127.0.0.1:{ports[name]}"
    apps = {
        "planner": _starlette_planner(config("planner", True)),
        "data": _flask_data(config("data", False)),
        "validator": _django_validator(config("validator", False)),
    }
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_serve_asgi(apps["planner"], ports["planner"]))
        stack.enter_context(_serve_wsgi(apps["data"], ports["data"]))
        stack.enter_context(_serve_wsgi(apps["validator"], ports["validator"]))
        for name in PRICES:
            _wait_up(agents[name].url)
        say(
            f"sellers up: planner (Starlette) {agents['planner'].url} · data (Flask) {agents['data'].url} · "
            f"validator (Django) {agents['validator'].url}"
        )

        scale = 1 if quick else 3
        jobs = 40 * scale
        plan = [  # (buyer, seller, calls): agent-to-agent in both directions, plus the customer's jobs
            ("planner", "data", 20 * scale),
            ("data", "planner", 12 * scale),
            ("planner", "validator", 10 * scale),
            ("data", "validator", 6 * scale),
            ("validator", "planner", 20 * scale),
            ("validator", "data", 20 * scale),
        ]
        total = sum(c for _, _, c in plan) + 4 * jobs
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("paid calls", total=total)
            lock = threading.Lock()

            def tick() -> None:
                with lock:
                    progress.advance(bar)

            policies = {
                name: SpendingPolicy(max_per_request="$0.05", per_hour="$5") for name in agents
            }
            threads = [
                threading.Thread(target=_buy, args=(agents[b], agents[s], n, policies[b], tick))
                for b, s, n in plan
            ]

            def customer_jobs() -> None:
                customer = agents["customer"]
                policy = policies["customer"]
                for i in range(jobs):
                    with policy.task(
                        f"job {i}", budget="$0.035"
                    ):  # the fee split: plan + data + validation
                        for seller in ("planner", "data", "validator", "planner"):
                            # the 4th call (a second plan) is over the job's budget: refused unsigned
                            _buy(customer, agents[seller], 1, policy, tick)

            threads.append(threading.Thread(target=customer_jobs))
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        paid_calls = sum(a.paid for a in agents.values())
        refused = sum(a.refused for a in agents.values())
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

        cycle = core.close_cycle(network=NETWORK)
        say(
            f"\n[bold]cycle #{cycle.cycle_id} closed[/bold]: {cycle.guarantee_count} guarantees, gross "
            f"{_money(cycle.gross)} → {cycle.net_transfers} net transfers moving {_money(cycle.total_debit)} "
            f"({cycle.guarantee_count / max(cycle.net_transfers, 1):.0f}× fewer transfers, "
            f"{cycle.gross / max(cycle.total_debit, 1):.1f}× less money moved)"
        )

        time.sleep(core_config.resolution_delay + 0.1)
        core.tick()
        positions = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
        names = {a.wallet.address: a.name for a in agents.values()}
        debtors = [p for p in positions.values() if p.role == "debtor"]
        validator = agents[
            "validator"
        ].wallet.address  # the agent that over-bought: it will default
        defaulter = next((p for p in debtors if p.address == validator), None)
        for p in debtors:
            if p is not defaulter:
                core.pay_net_debit(cycle.cycle_id, p.address)
                say(f"{names[p.address]} paid its net debit {_money(p.debit)}")
        if defaulter is not None:
            say(
                f"{names[defaulter.address]} does not pay its net debit {_money(defaulter.debit)} …"
            )
        time.sleep(core_config.payment_window + core_config.finality + 0.1)
        core.tick()
        claimed = {
            p.address: core.claim_net_credit(cycle.cycle_id, p.address)
            for p in core.cycle_positions(cycle.cycle_id)
            if p.role == "creditor"
        }
        final = {p.address: p for p in core.cycle_positions(cycle.cycle_id)}
        if defaulter is not None:
            d = final[defaulter.address]
            say(
                f"… after finality its collateral covered {_money(d.covered)} (shortfall {_money(d.shortfall)})"
            )
            if d.status != "defaulted" or d.covered + d.shortfall != d.debit:
                problems.append("the default was not covered as it should be")

        table = Table(title=f"cycle #{cycle.cycle_id}: net positions")
        for column in (
            "participant",
            "role",
            "paid out (gross)",
            "earned (gross)",
            "net",
            "settled by",
            "claimed",
        ):
            table.add_column(
                column,
                justify="left" if column in ("participant", "role", "settled by") else "right",
            )
        for p in sorted(final.values(), key=lambda p: p.net):
            how = {
                "paid": "paying its debit",
                "defaulted": f"collateral ({_money(p.covered)})",
            }.get(p.status, "—")
            table.add_row(
                names.get(p.address, p.address),
                p.role,
                _money(p.gross_out),
                _money(p.gross_in),
                _money(p.net),
                how,
                _money(claimed.get(p.address, 0)),
            )
        console.print(table)

        problems += core.audit()
        cycle = core.cycle(cycle.cycle_id)
        if sum(p.debit for p in final.values()) != sum(p.credit for p in final.values()):
            problems.append("net debits and net credits differ")
        if (
            sum(claimed.values()) + (cycle.collected - cycle.claimed) != cycle.collected
            or cycle.claimed > cycle.collected
        ):
            problems.append("claims do not add up to what was collected")
        if any(
            g.state not in ("settled", "default_covered", "voided", "cancelled")
            for g in core.guarantees(cycle_id=cycle.cycle_id, limit=100_000)
        ):
            problems.append("a guarantee of the cycle did not reach a final state")

        summary = Table(title="summary")
        summary.add_column("what")
        summary.add_column("value", justify="right")
        for what, value in (
            ("paid calls (3 frameworks, loopback HTTP)", f"{paid_calls}"),
            ("refused before signing", f"{refused}"),
            ("payment records written before handlers ran", f"{records}"),
            ("guarantees netted", f"{cycle.guarantee_count}"),
            ("net transfers instead", f"{cycle.net_transfers}"),
            ("gross volume / money moved", f"{_money(cycle.gross)} / {_money(cycle.total_debit)}"),
            (
                "covered from a defaulter's collateral",
                _money(sum(p.covered for p in final.values())),
            ),
            ("invariants", "all held" if not problems else f"{len(problems)} broken"),
            ("time", f"{time.monotonic() - started:.1f} s"),
        ):
            summary.add_row(what, value)
        console.print(summary)
        for problem in problems:
            say(f"[red]invariant broken:[/red] {problem}")

        if serve:  # a dashboard link is printed only while something serves it
            from .service import create_app

            port = _port()
            stack.enter_context(
                _serve_asgi(create_app(core, tick_interval=None, webhooks=False), port)
            )
            say(f"dashboard: http://127.0.0.1:{port}/")
            say("serving the sellers and the dashboard; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
        else:
            say("run with --serve to keep the sellers and the dashboard up")
    return 0 if not problems else 1
