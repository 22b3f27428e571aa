"""Run-time repricing (docs/operations.md, "Repricing"), on every adapter.

An admin call (``POST /x402/admin/prices`` with the seller's admin token) changes a route's
price without a restart: the next challenge carries it, a payment signed at the old price is
refused and locks nothing, each record keeps the amount its payment was taken at, and a reset
goes back to the configured price. Per-handler prices (``@paid``/``Paid``) are repriced the
same way. A second gate on the same database follows the change through the price book. A
bad change (unknown route, bad price, under a minimum) is a 400 with a stable reason and
changes nothing.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate.prices import PriceBook, reprice
from fourmica_x402.networks import TokenAmount
from fourmica_x402.routes import RouteTable
from fourmica_x402.testing import NETWORK
from fourmica_x402.wire import decode_payment_required

harness = sys.modules["conformance_buyers"]  # loaded by conftest.py

TOKEN = "test-admin-token"  # a throwaway token for these tests
AUTH = {"authorization": f"Bearer {TOKEN}"}
ITEMS = "GET /items/:item_id"  # $0.02 by config in every conformance app


def admin(seller: Any, prices: dict[str, Any] | None = None, headers: dict[str, str] = AUTH) -> Any:
    if prices is None:
        return seller.request("GET", "/x402/admin/prices", headers=headers)
    return seller.request("POST", "/x402/admin/prices", headers=headers, json={"prices": prices})


def amount(kit: Any, seller: Any, path: str) -> int:
    return int(kit.challenge(seller, path).amount)


def test_an_admin_call_reprices_a_route_and_records_keep_what_each_payment_paid(
    make_seller: Any, kit: Any
) -> None:
    seller = make_seller(admin_token=TOKEN)
    buyer = kit.funded(seller)
    assert kit.pay(seller, buyer, "/items/1").status == 200  # at the configured $0.02
    stale = kit.header(seller, buyer, "/items/2")  # signed at $0.02, sent after the change
    changed = admin(seller, {ITEMS: "$0.05"})
    assert changed.status == 200, changed.text
    row = next(r for r in changed.json()["routes"] if r["route"] == ITEMS)
    assert row == {"route": ITEMS, "configured": "$0.02", "price": "$0.05", "repriced": True}
    assert amount(kit, seller, "/items/3") == 50_000
    refused = seller.request("GET", "/items/2", headers=stale)
    assert refused.status == 402 and seller.calls["/items/2"] == 0
    assert kit.locked(seller, buyer) == 20_000  # the stale payment locked nothing
    assert kit.pay(seller, buyer, "/items/3").status == 200
    assert kit.locked(seller, buyer) == 70_000
    reset = admin(seller, {ITEMS: None})
    assert reset.status == 200 and not any(r["repriced"] for r in reset.json()["routes"])
    assert kit.pay(seller, buyer, "/items/4").status == 200
    assert kit.locked(seller, buyer) == 90_000
    records = sorted(seller.gate.records.query(route=ITEMS), key=lambda r: r.record_id)
    assert [r.amount for r in records] == [20_000, 50_000, 20_000]
    changes = admin(seller).json()["changes"]
    assert [(c["route"], c["price"]) for c in changes] == [(ITEMS, None), (ITEMS, "$0.05")]
    assert all(c["source"].startswith("admin") for c in changes)


def test_a_payment_sent_again_after_a_repricing_replays_its_answer(
    make_seller: Any, kit: Any
) -> None:
    """With idempotent replay, a payment taken at $0.02 and sent again (its answer lost) after
    the route was repriced was matched against the new price first: 402
    no_matching_requirements at $0.05, as if it had never been paid, so the buyer paid again
    for the answer it had bought. It answers its recorded response, and nothing more is locked."""
    seller = make_seller(admin_token=TOKEN, idempotent_replay=True)
    buyer = kit.funded(seller)
    paying = kit.header(seller, buyer, "/items/1")
    first = seller.request("GET", "/items/1", headers=paying)
    assert first.status == 200, first.text
    assert admin(seller, {ITEMS: "$0.05"}).status == 200
    again = seller.request("GET", "/items/1", headers=paying)
    assert again.status == 200 and again.body == first.body, again.text
    assert "payment-response" in again.headers
    assert seller.calls["/items/1"] == 1 and kit.locked(seller, buyer) == 20_000
    elsewhere = seller.request("GET", "/items/2", headers=paying)  # another request: refused
    assert elsewhere.status == 402 and kit.error_of(elsewhere) == "replayed_request_id"
    assert seller.calls["/items/2"] == 0 and kit.locked(seller, buyer) == 20_000


def test_a_per_handler_price_is_repriced_like_a_table_entry(make_seller: Any, kit: Any) -> None:
    """/premium is priced by ``@paid``/``Paid`` in the Flask, FastAPI and Django apps and by
    the table in the others: the listing names its key either way."""
    seller = make_seller(admin_token=TOKEN)
    listed = admin(seller).json()["routes"]
    (key,) = [r["route"] for r in listed if r["route"].endswith(" /premium")]
    assert amount(kit, seller, "/premium") == 10_000
    assert admin(seller, {key: "$0.03"}).status == 200
    assert amount(kit, seller, "/premium") == 30_000
    buyer = kit.funded(seller)
    assert kit.pay(seller, buyer, "/premium").status == 200
    assert kit.locked(seller, buyer) == 30_000 and seller.calls["/premium"] == 1


@pytest.mark.parametrize(
    ("prices", "status", "reason"),
    [
        ({"GET /nowhere": "$0.05"}, 400, "unknown_route"),
        ({ITEMS: "a lot"}, 400, "invalid_price"),
        ({ITEMS: 0.05}, 400, "invalid_price"),  # a float is never a price
        ({ITEMS: "$-1"}, 400, "invalid_price"),
        ({ITEMS: "$99999999999999999999999"}, 400, "invalid_price"),  # past 2**63 - 1 units
        ({ITEMS: True}, 400, "invalid_price"),
        ({ITEMS: "$0.05", "GET /nowhere": "$0.01"}, 400, "unknown_route"),  # all or nothing
        ({"GET /nowhere": None}, 400, "unknown_route"),  # a reset names a priced route too
        ({ITEMS: "$0.05", "GET /itmes/:item_id": None}, 400, "unknown_route"),  # a typo'd reset
        ({"GET /x\x00": None}, 400, "unknown_route"),  # on PostgreSQL it reached the INSERT: 500
        ({}, 400, "invalid_request"),
    ],
)
def test_a_bad_change_is_refused_with_a_reason_and_changes_nothing(
    make_seller: Any, kit: Any, prices: dict[str, Any], status: int, reason: str
) -> None:
    seller = make_seller(admin_token=TOKEN)
    resp = admin(seller, prices)
    assert resp.status == status and resp.json()["error"] == reason, resp.text
    assert amount(kit, seller, "/items/1") == 20_000
    assert admin(seller).json()["changes"] == []


def test_the_admin_endpoint_needs_its_token(make_seller: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("FOURMICA_X402_ADMIN_TOKEN", raising=False)
    closed = make_seller()
    assert admin(closed).status == 404  # no token configured: the path does not exist
    assert admin(closed, {ITEMS: "$0.05"}).status == 404
    seller = make_seller(admin_token=TOKEN)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        resp = admin(seller, {ITEMS: "$0.05"}, headers=headers)
        assert resp.status == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert admin(seller).json()["changes"] == []
    assert "test-admin-token" not in repr(seller.gate.config)


def test_the_admin_endpoints_refusals_carry_stable_codes(make_seller: Any) -> None:
    seller = make_seller(admin_token=TOKEN)
    refused = admin(seller, {ITEMS: "$0.05"}, headers={"authorization": "Bearer wrong"})
    assert (refused.status, refused.json()["error"]) == (401, "unauthorized")
    wrong = seller.request("DELETE", "/x402/admin/prices", headers=AUTH)
    assert (wrong.status, wrong.json()["error"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "GET, POST" and wrong.json()["message"]
    assert admin(seller).json()["changes"] == []  # neither changed anything


def test_another_gate_on_the_same_database_follows_the_change(make_seller: Any, kit: Any) -> None:
    """Two apps serving one database (two processes of one seller): a change made through
    one is read by the other from the price book, within its ``price_poll``."""
    first = make_seller(admin_token=TOKEN)
    second = make_seller(core=first.core, price_poll=0.0)
    assert amount(kit, second, "/items/1") == 20_000
    assert admin(first, {ITEMS: "$0.04"}).status == 200
    assert amount(kit, second, "/items/1") == 40_000
    buyer = kit.funded(first)  # one database: the first seller's Core is the second's
    assert kit.pay(second, buyer, "/items/1").status == 200
    assert kit.locked(first, buyer) == 40_000
    third = make_seller(core=first.core)  # a process started later starts at the new price
    assert amount(kit, third, "/items/1") == 40_000
    assert admin(first, {ITEMS: None}).status == 200
    assert amount(kit, second, "/items/1") == 20_000


def test_prices_changed_under_concurrent_requests_settle_on_the_last_one(
    make_seller: Any,
) -> None:
    """Eight clients keep asking for challenges over a real socket while the price changes 30
    times: every 402 carries a price that was set, and once the changes stop every client sees
    the last one (no endpoint keeps a route priced before a change)."""
    seller = make_seller(admin_token=TOKEN)
    set_prices = {20_000} | {10_000 * (i % 5 + 1) for i in range(30)}
    seen: list[int] = []
    stop = threading.Event()
    with harness.loopback(seller.client.app, seller.client.interface) as base:

        def ask() -> None:
            with httpx.Client(base_url=base, timeout=10) as http:
                while not stop.is_set():
                    resp = http.get("/items/1")
                    assert resp.status_code == 402, resp.text
                    offer = decode_payment_required(resp.headers["payment-required"]).accepts[0]
                    seen.append(int(offer.amount))

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(ask) for _ in range(8)]
            with httpx.Client(base_url=base, timeout=10) as http:
                for i in range(30):
                    body = {"prices": {ITEMS: f"${(i % 5 + 1) / 100:.2f}"}}
                    resp = http.post("/x402/admin/prices", json=body, headers=AUTH)
                    assert resp.status_code == 200, resp.text
            stop.set()
            for future in futures:
                future.result()
        assert seen and set(seen) <= set_prices
        last = 10_000 * (29 % 5 + 1)
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(20):
                resp = http.get("/items/1")
                offer = decode_payment_required(resp.headers["payment-required"]).accepts[0]
                assert int(offer.amount) == last


# -- the route table and the price book, without an app -----------------------------------------


def test_reprice_is_all_or_nothing_and_a_reset_keeps_the_cached_route() -> None:
    table = RouteTable(
        {"GET /a": "$0.01", "GET /b": {"price": "$0.02", "min_amount": "$0.02"}},
        network=NETWORK,
        pay_to="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    )
    a, b = table.routes
    with pytest.raises(ConfigurationError, match="below min_amount"):
        reprice(table, {"get /a": "$0.05", "GET /b": "$0.01"})  # under /b's minimum
    assert table.routes == [a, b] and table.overrides == {}
    reprice(table, {"get /a": "$0.05"})
    assert table.routes[0].offers[0].amount is not None
    assert table.routes[0].offers[0].amount.amount == 50_000 and table.routes[1] is b
    reprice(table, {})
    assert table.routes[0].offers[0].amount.amount == 10_000 and table.routes[1] is b


@pytest.mark.parametrize("other", ["GET /items/{id}", "GET /items/[slug]", "get /items/<id>"])
def test_another_spelling_of_a_priced_route_is_refused_not_ignored(other: str) -> None:
    """``GET /items/:id`` and ``GET /items/{id}`` name one route: a table holding both (or
    ``Gate.add_route`` of the second) kept the first's price and silently never charged the
    second's, whatever it was. Refused like a key written twice; the key itself is still
    taken in its entry's place."""
    seller = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    with pytest.raises(ConfigurationError, match="priced already"):
        RouteTable({"GET /items/:id": "$0.01", other: "$5"}, network=NETWORK, pay_to=seller)
    table = RouteTable({"GET /items/:id": "$0.01"}, network=NETWORK, pay_to=seller)
    with pytest.raises(ConfigurationError, match="priced already"):
        table.add(other, "$5")
    table.add("GET /items/<int:id>", "$2")  # another converter: another route (Flask, Django)
    table.add("GET /items/:id", "$1")
    assert table.match("GET", "/items/7").offers[0].amount.amount == 1_000_000


def test_a_route_priced_again_takes_its_new_price_not_its_first() -> None:
    """``Gate.add_route`` of a key the table prices already appended a second entry the first
    one shadowed: the route went on being charged its first price, and a reprice rebuilt the
    second at the first's terms. The key's entry takes the new terms now; a table naming one
    key twice (``GET /a`` and ``get /a``) is refused."""
    seller = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    table = RouteTable({"GET /a": "$0.01"}, network=NETWORK, pay_to=seller)
    for key, price, atomic in (("GET /a", "$1", 1_000_000), ("get /a", "$2", 2_000_000)):
        table.add(key, price)
        assert [route.key for route in table.routes] == ["GET /a"]
        found = table.match("GET", "/a")
        assert found is table.routes[0] and found.offers[0].amount.amount == atomic
    with pytest.raises(ConfigurationError, match="priced already"):
        RouteTable({"GET /a": "$1", "get /a": "$0.01"}, network=NETWORK, pay_to=seller)
    table.add("POST /a", "$1")  # another method is another route
    assert [route.key for route in table.routes] == ["GET /a", "POST /a"]
    table.add("GET /a", "$2")  # in its place: ties between entries go to the first written
    assert [route.key for route in table.routes] == ["GET /a", "POST /a"]
    reprice(table, {"GET /a": "$0.50"})  # a run-time price stays until reset
    table.add("GET /a", "$3")
    assert table.match("GET", "/a").offers[0].amount.amount == 500_000
    reprice(table, {})  # reset
    assert table.match("GET", "/a").offers[0].amount.amount == 3_000_000


def test_an_explicit_price_is_not_moved_to_another_networks_offer() -> None:
    """An explicit run-time amount on a route with offers on two networks gave the Sepolia offer
    Base Sepolia's USDC address (a token that chain does not register) at that amount: it is
    refused now, and a ``$`` price still reprices each offer in its own asset."""
    seller = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    base_usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    sepolia_usdc = "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238"
    offers = [
        {"price": "$0.01", "network": NETWORK, "payTo": seller},
        {"price": "$0.02", "network": "eip155:11155111", "payTo": seller},
    ]
    table = RouteTable({"GET /a": {"accepts": offers}}, network=NETWORK, pay_to=seller)
    (before,) = table.routes
    for explicit in ({"amount": "5", "asset": base_usdc}, TokenAmount(5, base_usdc)):
        with pytest.raises(ConfigurationError, match="not registered on eip155:11155111"):
            reprice(table, {"GET /a": explicit})
        assert table.routes == [before] and table.overrides == {}
    reprice(table, {"GET /a": "$0.05"})
    got = [(o.amount.asset, o.amount.amount) for o in table.routes[0].offers if o.amount]
    assert got == [(base_usdc, 50_000), (sepolia_usdc, 50_000)]
    one_chain = RouteTable(
        {"GET /b": {"accepts": offers[:1] * 2}}, network=NETWORK, pay_to=seller
    )  # one network: its own asset, explicitly, is still a price
    reprice(one_chain, {"GET /b": {"amount": "5", "asset": base_usdc}})
    assert [o.amount.amount for o in one_chain.routes[0].offers if o.amount] == [5, 5]


def test_the_price_book_keeps_every_change(make_seller: Any) -> None:
    seller = make_seller()
    book = PriceBook(seller.core.store)
    book.set({"get /a": "$0.05", "GET /b": 7}, source="test")
    book.set({"GET /a": None}, source="test")
    latest, prices = book.current()
    assert prices == {"GET /b": 7} and latest == book.latest() == 3
    assert [(c.route, c.price) for c in book.history()] == [
        ("GET /a", None),
        ("GET /b", 7),
        ("GET /a", "$0.05"),
    ]


def test_a_dollar_reprice_keeps_each_offer_in_the_asset_its_explicit_price_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route priced in WETH by an explicit amount (``TokenAmount``, no ``asset=``) repriced
    to ``"$0.05"`` was moved to the network's USDC: a route with a USDC and a WETH offer became
    two identical USDC offers and the WETH one was gone, though a ``$`` price reprices each
    offer in its own asset (docs/operations.md, "Repricing"). It is read in WETH now."""
    from fourmica_x402 import networks
    from fourmica_x402.routes import Offer, RouteConfig

    monkeypatch.setattr(networks, "_assets", {k: dict(v) for k, v in networks._assets.items()})
    weth = networks.register_asset(NETWORK, "0x" + "ee" * 20, symbol="WETH", decimals=18)
    seller, usdc = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", networks.default_asset(NETWORK)
    in_weth = TokenAmount(5 * 10**12, weth.address)
    offers = (Offer("$0.01", NETWORK, seller), Offer(in_weth, NETWORK, seller))
    table = RouteTable(
        {"GET /a": RouteConfig(accepts=offers), "GET /b": in_weth}, network=NETWORK, pay_to=seller
    )
    reprice(table, {"GET /a": "$0.05", "GET /b": "$0.05"})
    got = {
        r.key: [(o.amount.asset, o.amount.amount) for o in r.offers if o.amount]
        for r in table.routes
    }
    assert got == {
        "GET /a": [(usdc.address, 50_000), (weth.address, 5 * 10**16)],
        "GET /b": [(weth.address, 5 * 10**16)],
    }
    reprice(table, {})  # reset: the configured amounts again
    assert table.match("GET", "/b").offers[0].amount == in_weth  # type: ignore[union-attr]
