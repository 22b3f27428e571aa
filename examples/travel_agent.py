"""Fee splits and agent collaboration: a travel agent that pays its upstream sellers per request.

One embedded Core on a SQLite file, six sellers on it, each a Starlette app with its own payTo:

- the **recommendation agent** (the user-facing seller): GET /recommend?city=… at $0.05, or
  $0.07 with &room=suite. Per paid request it buys, with the buyer client and inside one task
  budget of $0.045, from
- an **availability** data seller ($0.006), a **pricing** model ($0.008), a **booking** tool
  ($0.01 to hold a room, $0.025 a suite) and a **validator** ($0.004), and pays the
  **referrer** its fee split: 10% of what the user paid.

Every upstream payment is linked to the user's guarantee that funded it
(``Links.funded_by``). A user makes four paid requests; the suite runs the agent's task budget
out before the referrer is paid: the agent answers 503, so the user is refunded, and what the
agent already paid upstream stays its own cost. Then a clearing cycle closes, and the script
prints each request's linked obligations, the agent's downstream paid spend and cost per
fulfilled request (the monitoring signals), and how the cycle netted the obligations.

Run it:   python examples/travel_agent.py
Needs:    pip install "fourmica-x402[starlette]"
Env:      TRAVEL_AGENT_DB: a database URL or a SQLite file (default: one in a temporary
          directory, removed at the end); a database used before is fine

The sellers run in this process behind httpx's ASGI transport (no ports). Exit code 0 only if
the Core's audit passed and the money adds up. Keys are throwaway TEST keys; never fund them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig
from fourmica_x402.client import RECEIPT_KEY, AsyncPaymentTransport, SpendingPolicy, adiscover
from fourmica_x402.core import Core
from fourmica_x402.errors import PaymentRefused
from fourmica_x402.guarantee import address_of
from fourmica_x402.links import Links
from fourmica_x402.networks import TokenAmount, default_asset, format_amount
from fourmica_x402.testing import TEST_KEYS

NETWORK = "eip155:84532"  # Base Sepolia, USDC
USDC = default_asset(NETWORK)
# Throwaway TEST keys (publicly known Anvil accounts): the user pays the agent, the agent pays
# its upstream sellers with the same key whose address is its payTo, so the cycle nets both.
USER_KEY, AGENT_KEY = TEST_KEYS[4], TEST_KEYS[1]
AGENT_PRICE, SUITE_PRICE = 50_000, 70_000  # $0.05, $0.07
TASK_BUDGET = "$0.045"  # what the agent may spend upstream per user request
REFERRAL_SHARE = 10  # percent of the user's payment


def throwaway_address(name: str) -> str:
    """A throwaway TEST payTo for an upstream seller (its key is sha256 of its name)."""
    return address_of(hashlib.sha256(f"fourmica travel example: {name}".encode()).digest())


UPSTREAM = ["availability", "pricing", "booking", "validator", "referrer"]
ADDRESSES = {"user": address_of(USER_KEY), "agent": address_of(AGENT_KEY)}
ADDRESSES.update({name: throwaway_address(name) for name in UPSTREAM})
NAMES = {address: name for name, address in ADDRESSES.items()}


def money(atomic: int) -> str:
    return format_amount(atomic, USDC)


def paid_app(name: str, routes: dict[str, Any], core: Core) -> Starlette:
    """A small upstream seller: each priced path answers what it sold, for how much."""

    async def answer(request: Request) -> JSONResponse:
        payment = request.state.payment
        return JSONResponse({"seller": name, "sold": request.url.path, "paid": payment.amount})

    paths = sorted({key.split(" ", 1)[1] for key in routes})
    config = PaymentConfig(pay_to=ADDRESSES[name], network=NETWORK, routes=routes, core=core)
    return Starlette(
        routes=[Route(path, answer) for path in paths],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


class Hosts(httpx.AsyncBaseTransport):
    """``http://<name>/…`` → that seller's app, in this process."""

    def __init__(self, apps: dict[str, Starlette]) -> None:
        self.apps = {name: httpx.ASGITransport(app=app) for name, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.apps[request.url.host].handle_async_request(request)


def agent_app(core: Core, links: Links, hosts: Hosts) -> Starlette:
    policy = SpendingPolicy(max_per_request="$0.03")
    upstream = httpx.AsyncClient(
        transport=AsyncPaymentTransport(AGENT_KEY, policy=policy, transport=hosts)
    )

    async def recommend(request: Request) -> JSONResponse:
        payment = request.state.payment
        city, suite = request.query_params.get("city", "Lisbon"), "room" in request.query_params
        if not city.isprintable() or len(city) > 100:  # before buying anything upstream
            return JSONResponse({"error": "send a city name"}, status_code=400)  # refunded
        bought = []
        try:
            # One task budget per user request; every payment in the block is linked to it.
            with (
                policy.task(f"recommend {payment.guarantee_id}", budget=TASK_BUDGET),
                links.funded_by(payment),
            ):
                for url, query in (  # the city travels encoded: "&" or "#" in it stays in it
                    ("http://availability/rooms", {"city": city}),
                    ("http://pricing/quote", {"city": city}),
                    ("http://booking/hold-suite" if suite else "http://booking/hold", {}),
                    ("http://validator/check", {}),
                    ("http://referrer/fee", {"of": payment.amount}),
                ):
                    response = await upstream.get(url, params=query)
                    response.raise_for_status()
                    bought.append(response.json()["seller"])
        except PaymentRefused as refused:  # the budget ran out: no partial work is charged
            return JSONResponse({"error": refused.reason, "bought": bought}, status_code=503)
        return JSONResponse({"city": city, "hotel": f"Casa {city}", "from": bought})

    def referral_fee(request: Any) -> TokenAmount:  # the referrer's price: its share of the sale
        sale = int(parse_qs(request.query)["of"][0])  # what the user paid the agent
        return TokenAmount(sale * REFERRAL_SHARE // 100, USDC.address)

    apps = {
        "availability": paid_app("availability", {"GET /rooms": "$0.006"}, core),
        "pricing": paid_app("pricing", {"GET /quote": "$0.008"}, core),
        "booking": paid_app("booking", {"GET /hold": "$0.01", "GET /hold-suite": "$0.025"}, core),
        "validator": paid_app("validator", {"GET /check": "$0.004"}, core),
        "referrer": paid_app("referrer", {"GET /fee": referral_fee}, core),
    }
    hosts.apps.update({name: httpx.ASGITransport(app=app) for name, app in apps.items()})

    def price(request: Any) -> TokenAmount:  # computed per request: atomic units of USDC
        # read as the handler reads it (a key "room", blank or not): priced as it is served
        suite = "room" in parse_qs(request.query, keep_blank_values=True)
        return TokenAmount(SUITE_PRICE if suite else AGENT_PRICE, USDC.address)

    config = PaymentConfig(
        pay_to=ADDRESSES["agent"], network=NETWORK, routes={"GET /recommend": price}, core=core
    )
    app = Starlette(
        routes=[Route("/recommend", recommend)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    app.state.upstream = upstream  # closed by whoever runs the app
    return app


def guarantee_of(receipt: Any) -> str:
    """The id of the guarantee a receipt's buyer signed (from its tab and request ids)."""
    from fourmica_x402.guarantee import guarantee_id
    from fourmica_x402.networks import get_network

    chain = get_network(receipt.network).chain_id
    return "0x" + guarantee_id(chain, int(receipt.tab_id, 16), int(receipt.request_id, 16)).hex()


async def shop(core: Core, links: Links) -> list[tuple[str, int, str, int]]:
    """The user's four paid requests: (path, status, its guarantee, what it paid)."""
    hosts = Hosts({})
    agent = agent_app(core, links, hosts)
    hosts.apps["agent"] = httpx.ASGITransport(app=agent)
    async with httpx.AsyncClient(transport=hosts) as plain:  # every seller's offers, unpaid
        print("offers (GET /.well-known/x402 of each seller):")
        for name in ["agent", *UPSTREAM]:
            for resource in await adiscover(f"http://{name}/", client=plain):
                offer = resource.accepts[0]
                price = money(offer.amount) if offer.amount is not None else "set per request"
                print(f"  {name:<13}{resource.method} {resource.url.split('/', 3)[-1]:<12}{price}")
    print()
    done = []
    user = AsyncPaymentTransport(
        USER_KEY, policy=SpendingPolicy(max_per_request="$0.10"), transport=hosts
    )
    async with httpx.AsyncClient(transport=user, base_url="http://agent") as client:
        for path in (
            "/recommend?city=Lisbon",
            "/recommend?city=Porto",
            "/recommend?city=Porto&room=suite",
            "/recommend?city=Madrid",
        ):
            response = await client.get(path)
            receipt = response.extensions[RECEIPT_KEY]
            done.append((path, response.status_code, guarantee_of(receipt), receipt.amount))
    await agent.state.upstream.aclose()
    return done


def settled(core: Core) -> bool:
    """Wait (5 s at most) for the delivery scores posted just after each response."""
    deadline = time.monotonic() + 5
    while any(g.state == "pending_validation" for g in core.guarantees(limit=10_000)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def locks(core: Core) -> tuple[int, ...]:
    """The user's and the agent's locked collateral and the agent's upstream spend so far:
    a database used before (TRAVEL_AGENT_DB) holds earlier runs' too."""
    agent, usdc = ADDRESSES["agent"], USDC.address
    spent = sum(
        s.downstream_spend for s in core.signals().sellers if (s.seller, s.asset) == (agent, usdc)
    )
    user_locked, agent_locked = (
        core.position(a, network=NETWORK).locked for a in (ADDRESSES["user"], agent)
    )
    return int(user_locked), int(agent_locked), int(spent)


def report(
    core: Core, links: Links, done: list[tuple[str, int, str, int]], before: tuple[int, ...]
) -> list[str]:
    """Print the requests, the signals and the netting; the problems found (``before``: the
    ``locks`` this run started from)."""
    problems = []
    served = 0
    for n, (path, status, gid, amount) in enumerate(done, start=1):
        state = core.guarantee(gid).state
        outcome = f"user paid {money(amount)}" if status == 200 else "user refunded"
        print(f"request {n}: GET {path} -> {status}, {outcome} (guarantee {gid[:12]}…, {state})")
        upstream = links.upstream(gid)
        print(f"  linked obligations: {len(upstream)}")
        for link in upstream:
            guarantee = core.guarantee(link.guarantee_id)
            print(
                f"    {NAMES.get(link.upstream, link.upstream):<13}{money(link.amount):>9}  "
                f"guarantee {link.guarantee_id[:12]}… {guarantee.state}"
            )
            if guarantee.amount != link.amount or guarantee.recipient_address != link.upstream:
                problems.append(f"link {link.guarantee_id} does not match the Core's guarantee")
        served += amount if status == 200 else 0
        if (status == 200) != (state == "payable"):
            problems.append(f"request {n}: status {status} but its guarantee is {state}")
    agent = ADDRESSES["agent"]
    mine = next(s for s in core.signals().sellers if s.seller == agent and s.asset == USDC.address)
    print("\nagent signals (from the database, as /metrics exposes them):")
    print(
        f"  fourmica_downstream_paid_spend_atomic = {mine.downstream_spend} ({money(mine.downstream_spend)})"
    )
    cost = mine.cost_per_fulfilled
    print(f"  fulfilled requests = {mine.fulfilled}")
    print(f"  fourmica_cost_per_fulfilled_request_atomic = {cost} ({money(cost or 0)})")
    user, locked, spent = (now - then for now, then in zip(locks(core), before, strict=True))
    if user != served:
        problems.append(f"the user has {user} locked but was served {served}")
    if locked != spent:
        problems.append(f"the agent has {locked} locked but spent {spent}")

    cycle = core.close_cycle(network=NETWORK)
    print(
        f"\nnetting: cycle #{cycle.cycle_id} closed: {cycle.guarantee_count} obligations, gross "
        f"{money(cycle.gross)} -> {cycle.net_transfers} net transfers moving {money(cycle.total_debit)}"
    )
    print(f"  {'participant':<13}{'owes (gross)':>13}{'owed (gross)':>13}{'net':>11}  role")
    for p in sorted(core.cycle_positions(cycle.cycle_id), key=lambda p: (p.net, p.address)):
        name = NAMES.get(p.address, p.address)
        print(
            f"  {name:<13}{money(p.gross_out):>13}{money(p.gross_in):>13}{money(p.net):>11}  {p.role}"
        )
    problems += core.audit()
    return problems


def main() -> int:
    workdir = None
    url = os.environ.get("TRAVEL_AGENT_DB")
    if not url:
        workdir = Path(tempfile.mkdtemp(prefix="fourmica-travel-"))
        url = f"sqlite:///{workdir / 'travel.db'}"
    core = Core(url)
    try:
        print(f"travel agent example · one embedded Core on {url}")
        before = locks(core)
        for name in ("user", "agent"):  # sandbox collateral: $1 each
            core.deposit(ADDRESSES[name], 1_000_000, network=NETWORK)
        print("sellers: " + ", ".join(f"{n} {ADDRESSES[n]}" for n in ["agent", *UPSTREAM]))
        print(f"user {ADDRESSES['user']} and agent deposited {money(1_000_000)} each\n")
        links = Links(core)
        done = asyncio.run(shop(core, links))
        problems = [] if settled(core) else ["delivery scores were not all posted"]
        problems += report(core, links, done, before)
        for problem in problems:
            print(f"problem: {problem}")
        print("\nall checks passed" if not problems else f"\n{len(problems)} problem(s)")
        return 0 if not problems else 1
    finally:
        core.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
