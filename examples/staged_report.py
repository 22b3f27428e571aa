"""Staged work: a research report sold as three paid stages of one job.

A Starlette seller on an embedded Core (a SQLite file) sells a report in stages:

- ``POST /report``          gather sources   $0.01  (stage 1: opens the job, answers its id)
- ``POST /report/analyse``  analyse them     $0.02  (stage 2; fails, 422, for a topic it
  cannot analyse)
- ``POST /report/write``    write it up      $0.03  (stage 3)

A buyer agent (the buyer client, one task budget per report) then:

1. orders a report on "tides": three stages, each paid once, $0.06 in all;
2. orders one on "perpetual motion": stage 2 fails, so the seller refunds it and stage 3 is
   never sold (the buyer client sends nothing more for the job);
3. orders one under a $0.05 budget: refused before anything is paid, since the job's stages
   cost $0.06 (the challenge says what the later stages cost).

It prints each stage, the job states, and the money: what the buyer's collateral locked is
exactly the stages it was served ($0.07).

Run it:   python examples/staged_report.py
Needs:    pip install "fourmica-x402[starlette]"
Env:      STAGED_REPORT_DB: a database URL or a SQLite file (default: one in a temporary
          directory, removed at the end); a database used before is fine

The seller runs in this process behind httpx's ASGI transport (no ports). Exit code 0 only if
the money adds up and the Core's audit passes. Keys are throwaway TEST keys; never fund them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import Jobs, PaymentConfig, Stage
from fourmica_x402.client import AsyncPaymentTransport, AsyncStagedJob, SpendingPolicy, StageFailed
from fourmica_x402.core import Core
from fourmica_x402.errors import BudgetExhausted
from fourmica_x402.guarantee import address_of
from fourmica_x402.networks import default_asset, format_amount
from fourmica_x402.testing import TEST_KEYS

NETWORK = "eip155:84532"  # Base Sepolia, USDC
USDC = default_asset(NETWORK)
# Throwaway TEST keys (publicly known Anvil accounts): never fund them.
SELLER = address_of(TEST_KEYS[1])
BUYER_KEY = TEST_KEYS[2]
BASE = "http://reports.example"


async def topic_of(request: Request) -> str | None:
    """The body's ``{"topic": "…"}``, or None: a bad body is the buyer's 400 (refunded)."""
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None
    topic = body.get("topic") if isinstance(body, dict) else None
    return topic if isinstance(topic, str) else None


def _bad_body() -> JSONResponse:
    return JSONResponse({"error": 'send {"topic": "…"}'}, status_code=400)


def seller_app(core: Core) -> Starlette:
    async def gather(request: Request) -> JSONResponse:
        if (topic := await topic_of(request)) is None:
            return _bad_body()
        job = request.state.payment.job
        return JSONResponse(
            {"job": job.id, "stage": "gather", "sources": [f"{topic}-{i}" for i in range(3)]}
        )

    async def analyse(request: Request) -> JSONResponse:
        job = request.state.payment.job
        if (topic := await topic_of(request)) is None:
            return _bad_body()
        if topic == "perpetual motion":  # this stage fails: refunded, the job is over
            return JSONResponse({"error": "nothing to analyse"}, status_code=422)
        return JSONResponse({"job": job.id, "stage": "analyse", "findings": 3})

    async def write(request: Request) -> JSONResponse:
        job = request.state.payment.job
        return JSONResponse({"job": job.id, "stage": "write", "words": 1200})

    routes = {
        "POST /report": {
            "price": "$0.01",
            "stage": Stage("report", 1, of=3),
            "description": "Gather sources",
        },
        "POST /report/analyse": {
            "price": "$0.02",
            "stage": Stage("report", 2, of=3),
            "description": "Analyse",
        },
        "POST /report/write": {
            "price": "$0.03",
            "stage": Stage("report", 3, of=3),
            "description": "Write up",
        },
    }
    config = PaymentConfig(pay_to=SELLER, network=NETWORK, core=core, routes=routes)
    return Starlette(
        routes=[
            Route("/report", gather, methods=["POST"]),
            Route("/report/analyse", analyse, methods=["POST"]),
            Route("/report/write", write, methods=["POST"]),
        ],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def money(amount: int) -> str:
    return format_amount(amount, USDC)


async def order(
    client: httpx.AsyncClient, policy: SpendingPolicy, topic: str, budget: str
) -> str | None:
    """One report: its three stages under one task budget; the job's id (None: refused)."""
    print(f'report on "{topic}" (task budget {budget})')
    job = AsyncStagedJob(client)
    body = {"topic": topic}
    try:
        with policy.task(f"report:{topic}", budget=budget):
            for path in ("/report", "/report/analyse", "/report/write"):
                response = await job.stage("POST", path, json=body)
                print(
                    f"  {path:<16} -> {response.status_code} stage {response.headers['job-stage']}"
                )
    except StageFailed as exc:
        assert exc.response is not None
        print(
            f"  {exc.response.url.path:<16} -> {exc.response.status_code}: stage refunded, job over"
        )
    except BudgetExhausted as exc:
        print(f"  refused before paying: {exc.message}")
    return job.id


async def run(db: str) -> int:
    core = Core(db)
    try:
        buyer = address_of(BUYER_KEY)
        before = int(core.position(buyer, network=NETWORK).locked)  # a database used before
        core.deposit(buyer, 1_000_000, network=NETWORK)  # $1 of collateral
        policy = SpendingPolicy(max_per_request="$0.05")
        transport = AsyncPaymentTransport(
            BUYER_KEY, policy=policy, transport=httpx.ASGITransport(app=seller_app(core))
        )
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            done = await order(client, policy, "tides", "$0.10")
            failed = await order(client, policy, "perpetual motion", "$0.10")
            refused = await order(client, policy, "kelp", "$0.05")
        jobs = Jobs(core)
        print("jobs:")
        for job_id in (done, failed):
            assert job_id is not None
            job = jobs.get(job_id)
            assert job is not None
            stages = ", ".join(f"{s}:{o} {money(a)}" for s, _, a, o in job.history)
            print(f"  {job_id}  {job.state:<6} {job.done}/{job.stages} done  [{stages}]")
        locked = int(core.position(buyer, network=NETWORK).locked) - before  # by this run
        print(f"buyer's collateral locked: {money(locked)} (served: 3 + 1 stages)")
        problems = core.audit()
        print("audit:", "ok" if not problems else "; ".join(problems))
        ok = refused is None and locked == 70_000 and not problems
        return 0 if ok else 1
    finally:
        core.close()


def main() -> int:
    configured = os.environ.get("STAGED_REPORT_DB")
    scratch = None if configured else tempfile.mkdtemp(prefix="staged-report-")
    path = Path(scratch or ".") / "core.db"
    # a database URL (as FOURMICA_X402_DB takes), or a SQLite file's path
    db = configured if configured and "://" in configured else f"sqlite:///{configured or path}"
    try:
        return asyncio.run(run(db))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
