"""The discovery listing, ``GET /.well-known/x402``, on every adapter (docs/protocol.md,
"Discovery"): what it lists is what the 402 challenges ask, and a buyer can pay from it."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import re
import sys
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from fourmica_x402.client import (
    AsyncPaymentTransport,
    PaymentTransport,
    SpendingPolicy,
    adiscover,
    discover,
)
from fourmica_x402.errors import DiscoveryFailed
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import PaymentRequired, decode_payment_required

harness = sys.modules["conformance_buyers"]  # loaded by conftest.py
WELL_KNOWN = "/.well-known/x402"
#: Every route of the conformance apps but /free (and the refused /ws), by path template.
PRICED = {
    "/premium",
    "/echo",
    "/items/{}",
    "/boom",
    "/fail",
    "/redirect",
    "/stream",
    "/missing",
    "/multi",
    "/limited",
    "/files/{}",
    "/docs/{}",
    "/numbers/{}",
    "/cached",
    "/stored",
}
EVERY = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def listing(seller: Any) -> list[dict[str, Any]]:
    resp = seller.request("GET", WELL_KNOWN)
    assert resp.status == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "public, max-age=60"
    assert "Host" in resp.headers["vary"]  # built from the request's host: cached per host
    body = resp.json()
    assert body["x402Version"] == 2
    return list(body["resources"])


def shape(resource: dict[str, Any]) -> str:
    """The path of a listed resource, its last parameter (named after each framework's
    converter or written ``*``) as ``{}``."""
    path = urlsplit(resource["resource"]).path
    return re.sub(r"(\{[a-z_]+\}|\*)$", "{}", path) if path.count("/") > 1 else path


def concrete(resource: dict[str, Any]) -> str:
    """A path the listed resource answers: every parameter (and ``*``) given as 7."""
    return re.sub(r"\{[a-z_]+\}|\*", "7", urlsplit(resource["resource"]).path)


def challenge(seller: Any, method: str, path: str) -> PaymentRequired:
    body = {"x": 1} if method in ("POST", "PUT", "PATCH") else None
    resp = seller.request(method, path, json=body)
    assert resp.status == 402, (method, path, resp.status, resp.text)
    return decode_payment_required(resp.headers["payment-required"])


def test_lists_every_priced_route_with_the_requirements_of_its_challenge(seller: Any) -> None:
    resources = listing(seller)
    methods = collections.defaultdict(set)
    for resource in resources:
        methods[shape(resource)].add(resource["method"])
        assert resource["type"] == "http" and resource["x402Version"] == 2
        assert resource["resource"].startswith("http://")
        required = challenge(seller, resource["method"], concrete(resource))
        assert resource["accepts"] == [r.to_dict() for r in required.accepts], resource
        assert required.resource is not None
        assert resource["description"] == required.resource.description
        assert resource["mimeType"] == required.resource.mime_type
        assert "perRequest" not in resource["accepts"][0]
    assert set(methods) == PRICED  # /free and /ws are not listed
    assert methods["/premium"] == {"GET"}  # a marker (decorator/dependency) where there is one
    assert methods["/echo"] == {"POST"}
    assert methods["/limited"] == {"GET"}  # POST is served, but not priced
    assert methods["/multi"] == set(EVERY)
    assert all("GET" in found for found in methods.values() if found != {"POST"})
    urls = {urlsplit(r["resource"]).path for r in resources}
    assert "/items/{item_id}" in urls  # parameters written {name}, whatever the framework's
    premium = next(r for r in resources if shape(r) == "/premium")
    assert premium["accepts"][0]["amount"] == "10000"  # the conformance premium price, $0.01


def test_head_answers_and_other_methods_are_refused(seller: Any) -> None:
    head = seller.request("HEAD", WELL_KNOWN)
    assert head.status == 200 and head.headers["cache-control"] == "public, max-age=60"
    assert head.headers["content-type"] == "application/json"
    for method in ("POST", "PUT", "DELETE"):
        refused = seller.request(method, WELL_KNOWN, json={"x": 1})
        assert refused.status == 405, (method, refused.status)
        assert refused.headers["allow"] == "GET, HEAD"
        assert refused.json()["error"] == "method_not_allowed"
    assert sum(seller.calls.values()) == 0  # the app never saw them


def test_a_price_or_pay_to_set_per_request_is_listed_without_calling_them(
    make_seller: Any, base_routes: dict[str, Any]
) -> None:
    asked: list[str] = []
    other = "0x" + "33" * 20

    def quote(request: Any) -> str:
        asked.append("price")
        return "$0.03"

    def pay_to(request: Any) -> str:
        asked.append("payTo")
        return other

    bazaar = {"info": {"input": {"type": "http", "method": "GET"}, "output": {"type": "json"}}}
    routes = {
        **base_routes,
        "GET /stream": {"price": quote},
        "GET /stored": {"price": "$0.01", "pay_to": pay_to, "extensions": {"bazaar": bazaar}},
    }
    seller = make_seller(routes=routes)
    resources = {shape(r): r for r in listing(seller)}
    assert asked == []  # the listing never prices a request
    stream, stored = resources["/stream"], resources["/stored"]
    (quoted,), (routed,) = stream["accepts"], stored["accepts"]
    assert quoted["perRequest"] == ["amount", "asset"]
    assert (
        "amount" not in quoted
        and "asset" not in quoted
        and quoted["payTo"] == seller.options["pay_to"]
    )
    assert routed["perRequest"] == ["payTo"] and "payTo" not in routed
    assert routed["amount"] == "10000"
    assert "validatorAddress" not in routed["extra"]  # the delivery policy names the payTo
    assert stored["extensions"] == {"bazaar": bazaar}
    # the 402 says what the listing says, and sets the fields left to the request
    for resource, (listed,), per_request in (
        (stream, stream["accepts"], {"amount": "30000"}),
        (stored, stored["accepts"], {"payTo": other}),
    ):
        required = challenge(seller, "GET", concrete(resource))
        (actual,) = [r.to_dict() for r in required.accepts]
        for name, value in listed.items():
            if name == "extra":
                assert value.items() <= actual["extra"].items()
            elif name != "perRequest":
                assert actual[name] == value, name
        assert per_request.items() <= actual.items()
    assert asked == ["price", "payTo"]
    assert required.extensions == {"bazaar": bazaar}  # /stored's, in its challenge too


def test_discovery_off_leaves_the_path_to_the_app(make_seller: Any) -> None:
    seller = make_seller(discovery=False)
    mine = seller.request("GET", WELL_KNOWN)
    assert mine.status == 404 and "x402Version" not in mine.text  # the app's own answer
    assert challenge(seller, "GET", "/premium").accepts  # the gate still prices


def test_a_buyer_lists_the_offers_and_pays_one(seller: Any, kit: Any) -> None:
    with harness.plain(seller) as http:
        found = discover(harness.BASE, client=http)
    listed = {(r.method, urlsplit(r.url).path): r for r in found}
    assert ("GET", "/free") not in listed
    premium = listed["GET", "/premium"]
    (offer,) = premium.accepts
    assert offer.amount == 10_000 and offer.price == "$0.01" and offer.per_request == ()
    assert offer.pay_to == seller.options["pay_to"] and offer.scheme == "4mica-credit"
    buyer = kit.funded(seller)
    policy = SpendingPolicy(  # pay no more than it listed, in the token it listed
        max_per_request=offer.amount,
        allowed_assets={offer.asset},
        allowed_networks={offer.network},
    )
    client = harness.Buyers("httpx").client(seller, buyer, policy=policy)
    try:
        paid = client.get("/premium")
    finally:
        client.close()
    assert paid.status == 200 and paid.json()["payer"] == buyer.address
    assert paid.receipt.amount == offer.amount and paid.receipt.seller == offer.pay_to
    assert kit.locked(seller, buyer) == offer.amount


def _priced_listing_seller(signed: list[str]) -> Any:
    """A seller (an httpx.MockTransport handler) that prices even its listing: a 402 first,
    the listing once paid. ``signed`` collects the paths paid for."""
    offer = {
        "scheme": "4mica-credit",
        "network": NETWORK,
        "asset": default_asset(NETWORK).address,
        "amount": "10000",
        "payTo": "0x" + "ab" * 20,
        "extra": {"tabEndpoint": "http://seller.test/tab"},
    }
    required = base64.b64encode(json.dumps({"x402Version": 2, "accepts": [offer]}).encode())
    listed = {"resource": "http://seller.test/premium", "method": "GET", "accepts": [offer]}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            tab = {"tabId": "0x1", "nextReqId": hex(len(signed)), "userAddress": user}
            return httpx.Response(200, json=tab)
        if "payment-signature" not in request.headers:
            return httpx.Response(402, headers={"payment-required": required.decode()})
        signed.append(request.url.path)
        return httpx.Response(200, json={"x402Version": 2, "resources": [listed]})

    return answer


def test_a_paying_client_never_pays_for_the_listing() -> None:
    """docs/buyer.md, "Listing offers": nothing is paid or signed, also through the buyer's
    own paying client. A listing answered with a 402 was paid (a guarantee signed, the
    budget charged) and the listing then served as if nothing happened."""
    signed: list[str] = []
    answer = _priced_listing_seller(signed)
    policy = SpendingPolicy(max_per_request="$0.05")
    key = TestBuyer.new().key
    paying = PaymentTransport(key, policy=policy, transport=httpx.MockTransport(answer))
    with (
        httpx.Client(transport=paying) as client,
        pytest.raises(DiscoveryFailed, match="answered HTTP 402"),
    ):
        discover("http://seller.test/", client=client)

    async def listed_async() -> None:
        async def aanswer(request: httpx.Request) -> httpx.Response:
            await request.aread()
            return answer(request)

        inner = httpx.MockTransport(aanswer)
        transport = AsyncPaymentTransport(key, policy=policy, transport=inner)
        async with httpx.AsyncClient(transport=transport) as client:
            await adiscover("http://seller.test/", client=client)

    with pytest.raises(DiscoveryFailed, match="answered HTTP 402"):
        asyncio.run(listed_async())
    assert signed == [] and policy.spent(default_asset(NETWORK).address) == 0
