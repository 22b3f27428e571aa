"""The tab endpoint (``POST /x402/tab``) against every adapter: recipients and limits.

Anyone may call it and each new tab is a row in the Core, so it opens tabs only for a
route's payTo (static, or one a payTo callable chose for a challenge the gate served),
limits *new* tabs per client address, per buyer and per seller, and never counts nor
refuses a reuse of the buyer's open tab (docs/operations.md, "The tab endpoint").

Real gate, real Core on SQLite files, the frameworks' own test clients; the remote
facilitator case runs ``fourmica-x402 serve``'s app under a real uvicorn server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.facilitator import HttpFacilitator
from fourmica_x402.routes import RouteConfig
from fourmica_x402.service import create_app
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import (
    PaymentRequirements,
    PaymentRequirementsV1,
    decode_payment_required,
)

SELLER = TestBuyer.from_key(
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
).address  # the conformance seller (conftest.py)


def challenge(
    seller: Any, path: str = "/premium", headers: dict[str, str] | None = None, version: int = 2
) -> PaymentRequirements:
    resp = seller.request("GET", path, headers=headers)
    assert resp.status == 402, (resp.status, resp.text)
    if version == 2:
        return decode_payment_required(resp.headers["payment-required"]).accepts[0]
    return PaymentRequirementsV1.model_validate(resp.json()["accepts"][0]).to_v2()


def tab_request(seller: Any, user: Any, req: PaymentRequirements | dict[str, Any]) -> Any:
    requirements = req if isinstance(req, dict) else req.to_dict()
    body = {"x402Version": 2, "userAddress": user, "paymentRequirements": requirements}
    return seller.request("POST", "/x402/tab", json=body)


def opened(seller: Any, user: str, req: PaymentRequirements | dict[str, Any]) -> dict[str, Any]:
    resp = tab_request(seller, user, req)
    assert resp.status == 200, (resp.status, resp.text)
    return resp.json()  # type: ignore[no-any-return]


def tab_rows(core: Core) -> int:
    with core.store.transaction(write=False) as tx:
        row = tx.one("SELECT COUNT(*) FROM fx_tabs")
    assert row is not None
    return int(row[0])


def refused(resp: Any, reason: str, window: float = 60.0) -> None:
    """A 429 in the tab endpoint's JSON error shape, with a Retry-After."""
    assert resp.status == 429, (resp.status, resp.text)
    body = resp.json()
    assert body["reason"] == reason and isinstance(body["error"], str) and body["error"]
    assert resp.headers["cache-control"] == "no-store"
    assert 1 <= int(resp.headers["retry-after"]) <= max(window, 86_400 + 1)


def without_policy(req: PaymentRequirements) -> dict[str, Any]:
    """The requirements with no validation policy: a G-v1 tab."""
    return {**req.to_dict(), "extra": {"tabEndpoint": req.extra["tabEndpoint"]}}


# -- rate limits -------------------------------------------------------------------------------


def test_new_tabs_from_one_client_are_limited(make_seller: Any) -> None:
    seller = make_seller(tab_rate_per_client=3)
    req = challenge(seller)
    users = [TestBuyer.new().address for _ in range(6)]
    first = [opened(seller, user, req) for user in users[:3]]
    for user in users[3:]:
        resp = tab_request(seller, user, req)
        refused(resp, "tab_rate_limited")
        assert int(resp.headers["retry-after"]) <= 60
    assert tab_rows(seller.core) == 3  # nothing written for the refused ones
    # The over-limit client still reuses the tabs it opened.
    again = opened(seller, users[0], req)
    assert again["tabId"] == first[0]["tabId"] and int(again["nextReqId"], 16) == 1
    assert tab_rows(seller.core) == 3


def test_new_tabs_from_one_ipv6_site_share_one_client_budget(tmp_path: Path) -> None:
    """An IPv6 client holds a whole /64 (every host, every site): a flood from fresh
    addresses in it was one new client per tab, each with a budget of its own, so the
    per-client limit never held and an unpaid caller filled the seller's open-tab cap
    (``max_open_tabs``), refusing its new buyers. A /64 is one client, as for the throttle."""
    from fourmica_x402.adapters.asgi import PaymentMiddleware
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    core = Core(str(tmp_path / "core.db"))
    config = PaymentConfig(
        core=core,
        pay_to=SELLER,
        network=NETWORK,
        routes={"GET /premium": "$0.01"},
        tab_rate_per_client=3,
    )
    app = Starlette(
        routes=[Route("/premium", lambda request: PlainTextResponse("paid"))],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )

    def tab_from(address: str) -> int:
        with TestClient(app, client=(address, 50_000)) as client:
            got = client.get("/premium")
            offer = decode_payment_required(got.headers["payment-required"]).accepts[0]
            body = {
                "x402Version": 2,
                "userAddress": TestBuyer.new().address,
                "paymentRequirements": offer.to_dict(),
            }
            return client.post("/x402/tab", json=body).status_code

    site = [f"2001:db8:7:9::{n:x}" for n in range(1, 7)]  # one /64
    assert [tab_from(address) for address in site] == [200, 200, 200, 429, 429, 429]
    assert tab_from("2001:db8:7:a::1") == 200  # another /64: a client of its own
    assert tab_from("192.0.2.1") == 200 and tab_from("192.0.2.2") == 200  # IPv4 as it is
    assert tab_rows(core) == 6
    core.close()


def test_new_tabs_for_one_user_are_limited(make_seller: Any) -> None:
    shop_a, shop_b = TestBuyer.new().address, TestBuyer.new().address
    seller = make_seller(
        tab_rate_per_user=4,
        routes={
            "GET /boom": RouteConfig(price="$0.01", pay_to=shop_a),
            "GET /fail": RouteConfig(price="$0.01", pay_to=shop_b),
        },
    )
    reqs = [challenge(seller, path) for path in ("/premium", "/boom", "/fail")]
    assert [r.pay_to for r in reqs] == [SELLER, shop_a, shop_b]
    user = TestBuyer.new().address
    variants: list[Any] = [v for r in reqs for v in (r, without_policy(r))]  # 6 new tabs
    for variant in variants[:4]:
        opened(seller, user, variant)
    for variant in variants[4:]:
        refused(tab_request(seller, user, variant), "tab_rate_limited")
    assert tab_rows(seller.core) == 4
    # Another buyer from the same client is not held back by this buyer's limit.
    opened(seller, TestBuyer.new().address, reqs[2])
    assert tab_rows(seller.core) == 5


def test_reusing_an_open_tab_is_never_limited(make_seller: Any) -> None:
    seller = make_seller(tab_rate_per_client=1, tab_rate_per_user=1, max_open_tabs=1)
    req = challenge(seller)
    user = TestBuyer.new().address
    tabs = [opened(seller, user, req) for _ in range(25)]
    assert {t["tabId"] for t in tabs} == {tabs[0]["tabId"]}
    assert [int(t["nextReqId"], 16) for t in tabs] == list(range(25))
    # The limits are in force for new tabs all the while: another buyer, another version.
    resp = tab_request(seller, TestBuyer.new().address, req)
    assert resp.status == 429 and resp.json()["reason"] in ("open_tab_limit", "tab_rate_limited")
    assert tab_request(seller, user, without_policy(req)).status == 429
    assert int(opened(seller, user, req)["nextReqId"], 16) == 25
    assert tab_rows(seller.core) == 1


# -- the cap on open tabs per seller -----------------------------------------------------------


def test_open_tab_cap_refuses_new_tabs_but_reuses_open_ones(make_seller: Any) -> None:
    seller = make_seller(max_open_tabs=2)
    req = challenge(seller)
    alice, bob, carol = (TestBuyer.new().address for _ in range(3))
    a = opened(seller, alice, req)
    opened(seller, bob, req)
    resp = tab_request(seller, carol, req)
    refused(resp, "open_tab_limit", window=86_401)
    assert tab_rows(seller.core) == 2 and seller.core.open_tab_count(SELLER) == 2
    again = opened(seller, alice, req)  # an existing buyer's tab still opens
    assert again["tabId"] == a["tabId"] and int(again["nextReqId"], 16) == 1
    # Once the open tabs expire, the seller takes new buyers again.
    seller.clock.advance(a["ttlSeconds"] + 10)
    assert seller.core.open_tab_count(SELLER) == 0
    opened(seller, carol, req)
    assert seller.core.open_tab_count(SELLER) == 1


def test_a_tab_near_its_end_is_replaced_and_the_payment_on_it_accepted(make_seller: Any) -> None:
    """A tab handed out in its last seconds refused the payment signed on it (``tab_expired``)
    when the request reached the seller a little later: near its end, a new tab is opened."""
    seller = make_seller()
    req = challenge(seller)
    buyer = TestBuyer.new()
    seller.core.deposit(buyer.address, 1_000_000, network=NETWORK)
    first = opened(seller, buyer.address, req)
    seller.clock.advance(first["ttlSeconds"] - 10)  # ten seconds left
    tab = opened(seller, buyer.address, req)
    name, value = payment_header(buyer, req, tab, timestamp=int(seller.clock()))
    seller.clock.advance(30)  # the paid request arrives half a minute later
    resp = seller.request("GET", "/premium", headers={name: value})
    assert resp.status == 200, (resp.status, resp.headers.get("payment-required"))
    assert tab["tabId"] != first["tabId"] and tab["nextReqId"] == "0x0"


# -- recipients --------------------------------------------------------------------------------


def test_callable_pay_to_opens_tabs_only_for_advertised_addresses(make_seller: Any) -> None:
    shops = [TestBuyer.new().address for _ in range(3)]

    def pay_to(request: Any) -> str:
        return shops[int(request.header("x-shop") or 0)]

    seller = make_seller(pay_to=pay_to)
    user = TestBuyer.new().address
    template = challenge(seller)  # advertises shops[0]
    assert template.pay_to == shops[0]
    for stranger in (shops[1], shops[2], SELLER, TestBuyer.new().address):  # never advertised
        resp = tab_request(seller, user, {**template.to_dict(), "payTo": stranger})
        assert resp.status == 404, (stranger, resp.status, resp.text)
        assert "error" in resp.json()
    assert tab_rows(seller.core) == 0
    assert opened(seller, user, template)["recipientAddress"] == shops[0]
    req = challenge(seller, headers={"x-shop": "2"})  # now shops[2] was advertised too
    assert req.pay_to == shops[2]
    assert opened(seller, user, req)["recipientAddress"] == shops[2]
    resp = tab_request(seller, user, {**template.to_dict(), "payTo": shops[1]})
    assert resp.status == 404
    assert tab_rows(seller.core) == 2


def test_static_pay_to_of_a_route_added_later_takes_tabs(seller: Any) -> None:
    shop = TestBuyer.new().address
    req = {**challenge(seller).to_dict(), "payTo": shop}
    user = TestBuyer.new().address
    assert tab_request(seller, user, req).status == 404
    seller.gate.add_route("GET /stream", RouteConfig(price="$0.01", pay_to=shop))
    assert opened(seller, user, req)["recipientAddress"] == shop


def test_malformed_user_address_is_refused(seller: Any) -> None:
    req = challenge(seller)
    good = TestBuyer.new().address
    i = next(i for i, c in enumerate(good) if i > 1 and c.isalpha())
    bad_checksum = good[:i] + good[i].swapcase() + good[i + 1 :]
    zero = "0x" + "0" * 40
    for user in ("nope", "0x1234", good[2:], good + "00", bad_checksum, zero, 12345, None):
        resp = tab_request(seller, user, req)
        assert resp.status == 400, (user, resp.status, resp.text)
        body = resp.json()
        assert body["reason"] == "invalid_user_address" and "userAddress" in body["error"]
    assert tab_rows(seller.core) == 0
    assert opened(seller, good.lower(), req)["userAddress"] == good  # lower-case is well-formed


def test_numbers_as_strings_in_the_requirements_are_read_as_the_official_endpoint_reads_them(
    seller: Any,
) -> None:
    """A buyer echoes the requirements it was given; a seller on the official stack passes its
    configured ``extra`` through, so the policy's numbers may be canonical strings (docs/buyer.md,
    "Challenges"). They pick the G-v2 tab as the numbers do; anything else is refused."""
    req = challenge(seller)
    user = TestBuyer.new().address
    g_v2 = opened(seller, user, req)["tabId"]
    assert opened(seller, user, without_policy(req))["tabId"] != g_v2  # a G-v1 tab is another
    score = str(req.extra["minValidationScore"])
    for chain in ("84532", "0x14a34"):
        extra = {**req.extra, "validationChainId": chain, "minValidationScore": score}
        assert opened(seller, user, {**req.to_dict(), "extra": extra})["tabId"] == g_v2
    for field, value in [("validationChainId", "084532"), ("minValidationScore", "0x64")]:
        resp = tab_request(seller, user, {**req.to_dict(), "extra": {**req.extra, field: value}})
        assert resp.status == 400 and field in resp.json()["error"], resp.text
        assert resp.json()["reason"] == "invalid_request"
    assert tab_rows(seller.core) == 2


def test_every_tab_refusal_carries_a_stable_reason(seller: Any) -> None:
    """The facilitator's shape, ``{"error": text, "reason": code}``, with a code each time."""
    req = challenge(seller)
    user = TestBuyer.new().address
    cases = [
        (seller.request("POST", "/x402/tab", json=[1, 2]), 400, "invalid_request"),
        (seller.request("POST", "/x402/tab", json={"userAddress": user}), 400, "invalid_request"),
        (
            tab_request(seller, user, {**req.to_dict(), "payTo": TestBuyer.new().address}),
            404,
            "unknown_pay_to",
        ),
        (
            tab_request(seller, user, {**req.to_dict(), "asset": TestBuyer.new().address}),
            400,
            "unsupported_asset",
        ),
    ]
    for resp, status, reason in cases:
        body = resp.json()
        assert (resp.status, body.get("reason")) == (status, reason), (resp.status, body)
        assert body["error"] and body["error"] != reason  # the text, as the facilitator's
    assert tab_rows(seller.core) == 0


# -- a remote facilitator: the same limits, on the seller's side -------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[str, Core]]:
    """``fourmica-x402 serve``'s app over its own Core, under a real uvicorn server."""
    core = Core(str(tmp_path / "service.db"))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(core, tick_interval=None), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}", core
    server.should_exit = True
    thread.join(timeout=10)
    core.close()


def test_remote_facilitator_gets_the_same_limits(
    make_seller: Any, remote: tuple[str, Core], tmp_path: Path
) -> None:
    url, service = remote

    def seller_on(**limits: Any) -> Any:
        return make_seller(
            facilitator=HttpFacilitator(url, retries=1),
            records=str(tmp_path / f"records{len(limits)}.db"),
            **limits,
        )

    seller = seller_on(tab_rate_per_client=2)
    req = challenge(seller)
    users = [TestBuyer.new().address for _ in range(4)]
    first = opened(seller, users[0], req)
    opened(seller, users[1], req)
    refused(tab_request(seller, users[2], req), "tab_rate_limited")
    assert tab_rows(service) == 2  # the refused tab never reached the facilitator
    again = opened(seller, users[0], req)  # a reuse: not limited
    assert again["tabId"] == first["tabId"] and int(again["nextReqId"], 16) == 1

    capped = seller_on(tab_rate_per_client=None, max_open_tabs=1)
    req = challenge(capped)
    opened(capped, users[3], req)
    refused(tab_request(capped, TestBuyer.new().address, req), "open_tab_limit", window=86_401)
    assert int(opened(capped, users[3], req)["nextReqId"], 16) == 1
    assert tab_rows(service) == 3


# -- the Core's side, on SQLite and PostgreSQL --------------------------------------------------


def test_core_counts_open_tabs_and_guards_only_new_ones(store_url: str) -> None:
    from fourmica_x402.errors import TabLimited
    from fourmica_x402.testing import ShiftedClock

    clock = ShiftedClock()
    core = Core(store_url, clock=clock)
    try:
        users = [TestBuyer.new().address for _ in range(3)]
        admitted: list[str] = []

        def open_for(user: str, version: int = 1) -> Any:
            return core.open_tab(
                user,
                SELLER,
                network=NETWORK,
                guarantee_version=version,
                ttl_seconds=100,
                max_open_tabs=2,
                admit_new=lambda: admitted.append(user),
            )

        first = open_for(users[0])
        open_for(users[1])
        assert admitted == users[:2] and core.open_tab_count(SELLER) == 2
        with pytest.raises(TabLimited) as info:
            open_for(users[2])
        assert info.value.reason == "open_tab_limit" and 1 <= info.value.retry_after <= 101
        assert open_for(users[0]).tab_id == first.tab_id  # a reuse: neither guard runs
        assert admitted == users[:2] and core.open_tab_count(SELLER) == 2

        def refuse() -> None:
            raise TabLimited("no", retry_after=3)

        clock.advance(200)  # both expired: the cap has room, the guard still decides
        assert core.open_tab_count(SELLER) == 0
        with pytest.raises(TabLimited):
            core.open_tab(users[2], SELLER, network=NETWORK, admit_new=refuse)
        assert tab_rows(core) == 2  # nothing written
        assert open_for(users[2]).next_req_id == 0 and core.open_tab_count(SELLER) == 1
        # The count is an index range scan (migration 5).
        plan_sql = (
            "EXPLAIN QUERY PLAN " if core.store.dialect == "sqlite" else "EXPLAIN "
        ) + "SELECT COUNT(*) FROM fx_tabs WHERE recipient_address = ? AND start_ts + ttl >= ?"
        if core.store.dialect == "postgres":
            with core.store.transaction() as tx:
                tx.execute("SET LOCAL enable_seqscan = off")
                plan = str(tx.all(plan_sql, (SELLER, 0)))
        else:
            with core.store.transaction(write=False) as tx:
                plan = str(tx.all(plan_sql, (SELLER, 0)))
        assert "fx_tabs_recipient_expiry" in plan
    finally:
        core.close()


# -- configuration -----------------------------------------------------------------------------


def test_tab_limit_options_are_validated() -> None:
    config = PaymentConfig(pay_to=SELLER, network=NETWORK)
    assert (config.tab_rate_per_client, config.tab_rate_per_user) == (60, 10)
    assert (config.tab_rate_window, config.max_open_tabs) == (60.0, 100_000)
    off = PaymentConfig(
        pay_to=SELLER, tab_rate_per_client=None, tab_rate_per_user=None, max_open_tabs=None
    )
    assert off.max_open_tabs is None
    for bad in (
        {"tab_rate_per_client": 0},
        {"tab_rate_per_user": -1},
        {"max_open_tabs": 0},
        {"max_open_tabs": True},
        {"tab_rate_per_user": 2.5},
        {"tab_rate_window": 0},
        {"tab_rate_window": "60"},
    ):
        with pytest.raises(ConfigurationError):
            PaymentConfig(pay_to=SELLER, **bad)


def test_a_facilitators_endless_retry_after_is_a_429_of_a_day_at_most(
    make_seller: Any, tmp_path: Path
) -> None:
    """A facilitator (outside the machine) refusing a tab with a Retry-After of 400 digits:
    read as infinity, it had no ceiling and the tab endpoint answered 500."""
    import httpx

    def facilitator(request: httpx.Request) -> httpx.Response:
        refusal = {"reason": "tab_rate_limited", "error": "slow down"}
        return httpx.Response(429, headers={"retry-after": "9" * 400}, json=refusal)

    mock = httpx.MockTransport(facilitator)
    remote = HttpFacilitator("http://f.test", transport=mock, async_transport=mock, retries=0)
    seller = make_seller(facilitator=remote, records=str(tmp_path / "records.db"))
    resp = tab_request(seller, TestBuyer.new().address, challenge(seller))
    refused(resp, "tab_rate_limited", window=86_400)
    assert resp.headers["retry-after"] == "86400"
