"""Fee splits and agent collaboration (docs/buyer.md, "Fee splits and agent collaboration"):
an agent seller whose paid handler pays five upstream sellers with the buyer client, every
upstream payment linked to the user's guarantee that funded it, through the real adapters and
one real embedded Core. The agent runs on Starlette (async handler, async buyer transport) and
on Flask (sync handler, sync transport); its upstream sellers are Starlette, Flask and FastAPI
apps. Money is checked at the end: what each party locked is what it was served.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from flask import Flask, g
from fourmica_x402.adapters.asgi import PaymentMiddleware
from fourmica_x402.adapters.fastapi import FourmicaX402 as FastAPIPayments
from fourmica_x402.adapters.flask import FourmicaX402 as FlaskPayments
from fourmica_x402.adapters.flask import paid
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fourmica_x402 import PaymentConfig
from fourmica_x402.client import (
    RECEIPT_KEY,
    AsyncPaymentTransport,
    PaymentTransport,
    Receipt,
    SpendingPolicy,
)
from fourmica_x402.core import Core
from fourmica_x402.errors import BudgetExhausted, CoreError, PaymentRefused
from fourmica_x402.gate import Payment
from fourmica_x402.links import Funding, LinkConflict, Links
from fourmica_x402.networks import default_asset
from fourmica_x402.signals import exposition
from fourmica_x402.testing import NETWORK, TestBuyer

USDC = default_asset(NETWORK).address
AGENT = TestBuyer.new()  # its key signs upstream; its address is also its payTo
PRICE, SUITE = 50_000, 70_000
#: Upstream seller → (framework, route, price in atomic units); the booking tool sells a suite too.
UPSTREAM = {
    "availability": ("starlette", "/rooms", 6_000),
    "pricing": ("flask", "/quote", 8_000),
    "booking": ("fastapi", "/hold", 10_000),
    "validator": ("flask", "/check", 4_000),
    "referrer": ("starlette", "/fee", 5_000),  # the referral fee split: 10% of $0.05
}
SUITE_HOLD = 25_000
PER_REQUEST = sum(price for _, _, price in UPSTREAM.values())  # 33_000
BUDGET = 45_000  # per user request; a suite (6 + 8 + 25 + 4 + 5 = 48 thousand) runs it out


def money(atomic: int) -> str:
    return f"${atomic / 1_000_000}"


class Hosts(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """``http://<name>/…`` → that app, in process: ASGI apps over httpx's ASGI transport, WSGI
    apps over its WSGI transport, from a sync or an async client alike."""

    def __init__(self) -> None:
        self.apps: dict[str, Any] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        app = self.apps[request.url.host]
        if isinstance(app, Flask):
            got = httpx.WSGITransport(app=app).handle_request(request)
            return httpx.Response(got.status_code, headers=_plain(got), content=got.read())
        return asyncio.run(self._asgi(app, request))  # no loop in this thread: a fresh one

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        app = self.apps[request.url.host]
        if isinstance(app, Flask):
            return await asyncio.to_thread(self.handle_request, request)
        return await self._asgi(app, request)

    @staticmethod
    async def _asgi(app: Any, request: httpx.Request) -> httpx.Response:
        got = await httpx.ASGITransport(app=app).handle_async_request(request)
        return httpx.Response(got.status_code, headers=_plain(got), content=await got.aread())


def _plain(response: httpx.Response) -> list[tuple[str, str]]:
    skip = ("content-length", "content-encoding", "transfer-encoding")
    return [(k, v) for k, v in response.headers.multi_items() if k.lower() not in skip]


@dataclass
class World:
    """One Core, the agent and its five upstream sellers, a user; what the agent saw."""

    core: Core
    links: Links
    hosts: Hosts
    addresses: dict[str, str]
    served: Counter[str] = field(default_factory=Counter)
    refusals: list[PaymentRefused] = field(default_factory=list)
    agent_payments: list[Payment] = field(default_factory=list)

    def upstream_url(self, name: str, suite: bool) -> str:
        path = "/hold-suite" if suite and name == "booking" else UPSTREAM[name][1]
        return f"http://{name}{path}"

    def settled(self) -> None:
        """Wait for the delivery scores posted just after each response (G-v2)."""
        deadline = time.monotonic() + 10
        while any(g.state == "pending_validation" for g in self.core.guarantees(limit=10_000)):
            assert time.monotonic() < deadline, "delivery scores were not posted"
            time.sleep(0.02)

    def locked(self, address: str) -> int:
        return int(self.core.position(address, network=NETWORK).locked)


# -- the upstream sellers, one per framework ----------------------------------------------------


def _starlette_seller(world: World, name: str, routes: dict[str, int]) -> Starlette:
    async def sell(request: Request) -> JSONResponse:
        world.served[name] += request.state.payment.amount
        return JSONResponse({"seller": name})

    config = PaymentConfig(
        pay_to=world.addresses[name],
        network=NETWORK,
        routes={f"GET {p}": f"${a / 1_000_000}" for p, a in routes.items()},
        core=world.core,
    )
    return Starlette(
        routes=[Route(p, sell) for p in routes],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def _flask_seller(world: World, name: str, routes: dict[str, int]) -> Flask:
    app = Flask(f"upstream_{name}")
    app.config.update(
        FOURMICA_X402_PAY_TO=world.addresses[name],
        FOURMICA_X402_NETWORK=NETWORK,
        FOURMICA_X402_CORE=world.core,
        PROPAGATE_EXCEPTIONS=False,
    )
    FlaskPayments(app)
    for path, amount in routes.items():

        def sell() -> Any:
            world.served[name] += g.payment.amount
            return {"seller": name}

        app.add_url_rule(path, path, paid(price=f"${amount / 1_000_000}")(sell))
    return app


def _fastapi_seller(world: World, name: str, routes: dict[str, int]) -> FastAPI:
    app = FastAPI()
    FastAPIPayments(
        app,
        pay_to=world.addresses[name],
        network=NETWORK,
        core=world.core,
        routes={f"GET {p}": f"${a / 1_000_000}" for p, a in routes.items()},
    )
    for path in routes:

        @app.get(path)
        def sell(request: FastAPIRequest) -> dict[str, Any]:
            world.served[name] += request.state.payment.amount
            return {"seller": name}

    return app


_SELLERS: dict[str, Callable[[World, str, dict[str, int]], Any]] = {
    "starlette": _starlette_seller,
    "flask": _flask_seller,
    "fastapi": _fastapi_seller,
}


# -- the agent ----------------------------------------------------------------------------------


def _buy_sync(world: World, client: httpx.Client, suite: bool) -> list[str]:
    bought = []
    for name in UPSTREAM:
        response = client.get(world.upstream_url(name, suite))
        assert response.status_code == 200, response.text
        bought.append(response.json()["seller"])
    return bought


def _starlette_agent(world: World, policy: SpendingPolicy) -> Starlette:
    transport = AsyncPaymentTransport(AGENT.key, policy=policy, transport=world.hosts)

    async def recommend(request: Request) -> JSONResponse:
        payment: Payment = request.state.payment
        world.agent_payments.append(payment)
        bought: list[str] = []
        try:
            with (
                policy.task(str(payment.guarantee_id), budget=BUDGET),
                world.links.funded_by(payment),
            ):
                async with httpx.AsyncClient(transport=transport) as client:
                    for name in UPSTREAM:
                        response = await client.get(
                            world.upstream_url(name, "suite" in request.url.path)
                        )
                        assert response.status_code == 200, response.text
                        bought.append(response.json()["seller"])
        except PaymentRefused as refused:
            world.refusals.append(refused)
            return JSONResponse({"error": refused.reason, "bought": bought}, status_code=503)
        return JSONResponse({"bought": bought})

    config = PaymentConfig(
        pay_to=AGENT.address,
        network=NETWORK,
        routes={"GET /recommend": "$0.05", "GET /recommend-suite": "$0.07"},
        core=world.core,
    )
    return Starlette(
        routes=[Route("/recommend", recommend), Route("/recommend-suite", recommend)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def _flask_agent(world: World, policy: SpendingPolicy) -> Flask:
    app = Flask("agent")
    app.config.update(
        FOURMICA_X402_PAY_TO=AGENT.address,
        FOURMICA_X402_NETWORK=NETWORK,
        FOURMICA_X402_CORE=world.core,
        PROPAGATE_EXCEPTIONS=False,
    )
    FlaskPayments(app)
    transport = PaymentTransport(AGENT.key, policy=policy, transport=world.hosts)

    def recommend(suite: bool) -> Any:
        payment: Payment = g.payment
        world.agent_payments.append(payment)
        try:
            with (
                policy.task(str(payment.guarantee_id), budget=BUDGET),
                world.links.funded_by(payment),
                httpx.Client(transport=transport) as client,
            ):
                return {"bought": _buy_sync(world, client, suite)}
        except PaymentRefused as refused:
            world.refusals.append(refused)
            return {"error": refused.reason}, 503

    app.add_url_rule("/recommend", "recommend", paid(price="$0.05")(lambda: recommend(False)))
    app.add_url_rule("/recommend-suite", "suite", paid(price="$0.07")(lambda: recommend(True)))
    return app


@pytest.fixture(params=["starlette", "flask"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    core = Core(str(tmp_path / "core.db"))
    names = ["user", *UPSTREAM]
    addresses = {name: TestBuyer.new().address for name in names}
    addresses["agent"] = AGENT.address
    made = World(core, Links(core), Hosts(), addresses)
    for name, (kind, path, amount) in UPSTREAM.items():
        routes = {path: amount, "/hold-suite": SUITE_HOLD} if name == "booking" else {path: amount}
        made.hosts.apps[name] = _SELLERS[kind](made, name, routes)
    policy = SpendingPolicy(max_per_request=30_000)
    agent = _starlette_agent if request.param == "starlette" else _flask_agent
    made.hosts.apps["agent"] = agent(made, policy)
    core.deposit(AGENT.address, 1_000_000, network=NETWORK)
    yield made
    assert core.audit() == []
    core.close()


def _user(world: World) -> tuple[TestBuyer, Callable[[str], httpx.Response]]:
    """A funded user and a function paying ``GET http://agent<path>`` with the buyer client."""
    user = TestBuyer.new()
    world.core.deposit(user.address, 1_000_000, network=NETWORK)
    transport = PaymentTransport(user.key, transport=world.hosts)

    def get(path: str) -> httpx.Response:
        with httpx.Client(transport=transport) as client:
            return client.get(f"http://agent{path}")

    return user, get


def _gid(response: httpx.Response) -> str:
    from fourmica_x402.links import _upstream_id

    return _upstream_id(response.extensions[RECEIPT_KEY])


def test_one_request_becomes_n_linked_obligations(world: World) -> None:
    user, get = _user(world)
    first, second = get("/recommend"), get("/recommend")
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["bought"] == list(UPSTREAM)
    world.settled()
    core, links = world.core, world.links
    for response in (first, second):
        gid = _gid(response)
        assert core.guarantee(gid).state == "payable" and core.guarantee(gid).amount == PRICE
        upstream = links.upstream(gid)
        assert [world.addresses[n] for n in UPSTREAM] == [link.upstream for link in upstream]
        for link, (name, (_, _, amount)) in zip(upstream, UPSTREAM.items(), strict=True):
            guarantee = core.guarantee(link.guarantee_id)
            assert (link.amount, guarantee.amount) == (amount, amount), name
            assert guarantee.recipient_address == link.upstream == world.addresses[name]
            assert guarantee.user_address == link.payer == AGENT.address
            assert (link.seller, link.user, link.asset) == (AGENT.address, user.address, USDC)
            assert guarantee.state == "payable"
            assert links.funding_of(link.guarantee_id) == link
    # Money: what each party locked is what it was served, and nothing else.
    assert world.locked(user.address) == 2 * PRICE
    assert world.locked(AGENT.address) == 2 * PER_REQUEST
    for name, (_, _, amount) in UPSTREAM.items():
        assert world.served[name] == 2 * amount
        received = core.guarantees(address=world.addresses[name], limit=100)
        assert sum(g.amount for g in received) == 2 * amount
    [totals] = links.totals(seller=AGENT.address)
    assert (totals.funding, totals.links, totals.amount) == (2, 10, 2 * PER_REQUEST)
    assert world.refusals == []


def test_budget_running_out_mid_task_refunds_the_user(world: World) -> None:
    user, get = _user(world)
    assert get("/recommend").status_code == 200
    refused = get("/recommend-suite")
    assert refused.status_code == 503 and refused.json()["error"] == "budget_exhausted"
    receipt = refused.extensions[RECEIPT_KEY]
    assert receipt.outcome == "payment_failed" and "refunded" in receipt.reason
    [refusal] = world.refusals
    assert isinstance(refusal, BudgetExhausted)  # a refusal of fourmica_x402.errors
    assert refusal.receipt.seller == world.addresses["referrer"]  # refused before signing
    world.settled()
    core, links = world.core, world.links
    gid = _gid(refused)
    assert core.guarantee(gid).state == "voided"  # no partial work charged to the user
    # What the agent paid before the budget ran out is what it is, and linked to that request.
    before = ["availability", "pricing", "booking", "validator"]
    upstream = links.upstream(gid)
    assert [link.upstream for link in upstream] == [world.addresses[n] for n in before]
    assert [link.amount for link in upstream] == [6_000, 8_000, SUITE_HOLD, 4_000]
    for link in upstream:
        assert core.guarantee(link.guarantee_id).state == "payable"
        assert core.guarantee(link.guarantee_id).amount == link.amount
    spent_on_suite = sum(link.amount for link in upstream)
    # Money: the user is locked for the request it was served; the agent for what it paid;
    # the referrer got nothing for the refused request (no guarantee, no lock).
    assert world.locked(user.address) == PRICE
    assert world.locked(AGENT.address) == PER_REQUEST + spent_on_suite
    referrer = core.guarantees(address=world.addresses["referrer"], limit=100)
    assert [g.amount for g in referrer] == [5_000]
    assert world.served["referrer"] == 5_000 and world.served["booking"] == 10_000 + SUITE_HOLD
    assert sum(world.served.values()) == PER_REQUEST + spent_on_suite


def _samples(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("seller", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("asset") == USDC
    }


def test_signals_count_downstream_spend_and_cost_per_fulfilled_request(world: World) -> None:
    _, get = _user(world)
    assert [get(p).status_code for p in ("/recommend", "/recommend-suite", "/recommend")] == [
        200,
        503,
        200,
    ]
    world.settled()
    got = _samples(exposition(world.core).decode())
    spend = 2 * PER_REQUEST + 6_000 + 8_000 + SUITE_HOLD + 4_000  # 109 000, by hand
    assert got[("fourmica_downstream_paid_spend_atomic", AGENT.address)] == spend
    assert got[("fourmica_cost_per_fulfilled_request_atomic", AGENT.address)] == spend // 2
    for name in UPSTREAM:  # sellers with no links have neither series
        assert ("fourmica_downstream_paid_spend_atomic", world.addresses[name]) not in got
        assert ("fourmica_cost_per_fulfilled_request_atomic", world.addresses[name]) not in got
    # An upstream guarantee voided later (the seller refunded it) is no longer spent.
    [first] = world.agent_payments[:1]
    link = world.links.upstream(str(first.guarantee_id))[0]
    world.core.void(link.guarantee_id, by=link.upstream)
    got = _samples(exposition(world.core).decode())
    assert got[("fourmica_downstream_paid_spend_atomic", AGENT.address)] == spend - link.amount
    assert got[("fourmica_cost_per_fulfilled_request_atomic", AGENT.address)] == (
        (spend - link.amount) // 2
    )


# -- the links API itself ----------------------------------------------------------------------


def _upstream(**fields: Any) -> Receipt:
    """A paid receipt of an upstream payment (tab 0x1, request 0x0, 1 234 units of USDC)."""
    base: dict[str, Any] = dict(
        outcome="paid",
        url="http://up/x",
        seller=TestBuyer.new().address,
        amount=1_234,
        asset=USDC,
        network=NETWORK,
        tab_id="0x1",
        request_id="0x0",
    )
    return Receipt(**{**base, **fields})


def test_a_link_is_written_once_per_upstream_guarantee(tmp_path: Path) -> None:
    core = Core(str(tmp_path / "core.db"))
    links = Links(core)
    funding = Funding("0x" + "ab" * 32, AGENT.address, None, "GET /recommend")
    receipt = _upstream(asset=USDC.lower())
    link = links.record(funding, receipt)
    assert links.record(funding, receipt) == link  # the same link again: the one written first
    other = Funding("0x" + "cd" * 32, AGENT.address)
    with pytest.raises(LinkConflict):
        links.record(other, receipt)
    assert (
        links.upstream(funding.guarantee_id) == [link] and links.upstream(other.guarantee_id) == []
    )
    assert link.asset == USDC and link.amount == 1_234
    with pytest.raises(CoreError):
        links.record(funding, Receipt(outcome="budget_exhausted", url="http://up/x"))
    unpaid = Payment(AGENT.address, 1, USDC, NETWORK, AGENT.address, None, None, None, 2, 2, "r")
    with pytest.raises(CoreError):
        links.funded_by(unpaid).__enter__()
    Links(core)  # a second opening migrates nothing
    assert core.signals().sellers[0].downstream_spend == 1_234  # another Core's guarantee counts
    core.close()


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 2**63, "tab_id": "0x2"},  # ~9.2 tokens of an 18-decimal token
        {"amount": -1, "tab_id": "0x3"},
        {"amount": 0, "tab_id": "0x4"},
        {"tab_id": "zz"},
        {"seller": "nope", "tab_id": "0x5"},
        {"asset": "nope", "tab_id": "0x6"},
    ],
    ids=["past-64-bits", "negative", "zero", "tab-not-hex", "seller", "asset"],
)
def test_a_receipt_that_cannot_be_linked_is_refused_as_not_linkable(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    """They raised OverflowError, IntegrityError or ValueError (inside ``funded_by``: a paid
    upstream left unlinked with only the exception's name in the log)."""
    core = Core(str(tmp_path / "core.db"))
    links = Links(core)
    funding = Funding("0x" + "ab" * 32, AGENT.address, None, "GET /recommend")
    base = _upstream()
    with pytest.raises(CoreError) as refused:
        links.record(funding, _upstream(**change))
    assert refused.value.reason == "not_linkable"
    assert links.record(funding, base).amount == 1_234  # the store is fine afterwards
    core.close()


def test_a_settle_after_payment_funds_its_upstream_under_its_guarantee(tmp_path: Path) -> None:
    """With ``settle="after"`` the handler runs before the guarantee is accepted, so its
    ``guarantee_id`` is None: ``funded_by(payment)`` refused it and the paid request answered
    500. Its id is the one its tab and request ids make, which the Core then accepts."""
    core = Core(str(tmp_path / "core.db"))
    links = Links(core)
    user = TestBuyer.new()
    core.deposit(user.address, 1_000_000, network=NETWORK)
    upstream_receipt = _upstream(amount=4_000, tab_id="0x77")

    async def recommend(request: Request) -> JSONResponse:
        with links.funded_by(request.state.payment) as funding:
            links.record(funding, upstream_receipt)  # what the buyer client's hook does
        return JSONResponse({"ok": True})

    config = PaymentConfig(
        pay_to=AGENT.address,
        network=NETWORK,
        core=core,
        routes={"GET /recommend": "$0.05"},
        settle="after",
    )
    app = Starlette(
        routes=[Route("/recommend", recommend)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    from starlette.testclient import TestClient

    from fourmica_x402.testing import paid_headers

    with TestClient(app) as client:
        answer = client.get(
            "/recommend", headers=paid_headers(client, user, client.get("/recommend"))
        )
        assert answer.status_code == 200, answer.text
    (settled,) = core.guarantees(address=user.address)
    (link,) = links.query()
    assert link.funding_guarantee_id == settled.guarantee_id
    assert link.user == user.address and link.route == "GET /recommend"
    core.close()
