"""The x402 client scheme without x402: its asset lookup, registration, and both drivers.

x402 itself runs in tests/interop/test_x402_scheme.py (real clients, real sellers). Here the
scheme is driven as x402 drives it (hook, then create_payment_payload), with x402's
requirement objects stood in for by ours (same camelCase dump) and the seller by an httpx
MockTransport, so these run everywhere, with no framework and no network.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from fourmica_x402.client import BuyerKey, ReceiptLedger, SpendingPolicy, x402_scheme
from fourmica_x402.client.x402_scheme import (
    AsyncFourMicaCreditScheme,
    FourMicaCreditScheme,
    register,
)
from fourmica_x402.errors import BudgetExhausted, ConfigurationError, NeedsApproval, PaymentFailed
from fourmica_x402.guarantee import Eip712Domain, SignedGuarantee, recover_signer
from fourmica_x402.networks import Asset, networks
from fourmica_x402.testing import NETWORK, TestBuyer, test_policy
from fourmica_x402.wire import PaymentRequired, PaymentRequirements, ResourceInfo

USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # a throwaway TEST address
CORE = "http://seller.test/x402"


def offer(**extra: Any) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="4mica-credit",
        network=NETWORK,
        asset=USDC,
        amount="10000",
        pay_to=SELLER,
        extra={"tabEndpoint": f"{CORE}/tab", "rpcUrl": CORE, **extra},
    )


class Seller:
    """The seller's tab endpoint and Core parameters, counting the requests."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.path)
        if request.url.path.endswith("/tab"):
            body = json.loads(request.content)
            return httpx.Response(
                200,
                json={
                    "tabId": "0x2a",
                    "nextReqId": "0x3",
                    "userAddress": body["userAddress"],
                    "recipientAddress": SELLER,
                    "assetAddress": USDC,
                },
            )
        return httpx.Response(
            200, json={"eip712_name": "4mica", "eip712_version": "1", "chain_id": 84532}
        )


def test_the_asset_lookup_names_dollar_tokens_only(monkeypatch: pytest.MonkeyPatch) -> None:
    scheme = FourMicaCreditScheme(TestBuyer.new().key)
    found = scheme.find_default_asset(USDC.lower(), NETWORK)
    assert found == {"asset": USDC, "name": "USDC", "symbol": "USDC", "decimals": 6}
    assert scheme.find_default_asset(USDC, "eip155:1") is None  # a network we do not know
    weth = Asset(NETWORK, "0x4200000000000000000000000000000000000006", "WETH", 18)
    monkeypatch.setattr(x402_scheme, "find_asset", lambda network, address: weth)
    assert scheme.find_default_asset(weth.address, NETWORK) is None  # "$1" is not 1 WETH
    assert "0x" not in repr(scheme).replace(scheme.address, "")  # never the key


class FakeClient:
    def __init__(self) -> None:
        self.v2: list[tuple[str, Any]] = []
        self.v1: list[tuple[str, Any]] = []
        self.policies: list[Any] = []

    def register(self, network: str, scheme: Any) -> None:
        self.v2.append((network, scheme))

    def register_v1(self, network: str, scheme: Any) -> None:
        self.v1.append((network, scheme))

    def register_policy(self, policy: Any) -> None:
        self.policies.append(policy)

    def create_payment_payload(self, required: Any) -> Any:
        return None


class FakeAsyncClient(FakeClient):
    async def create_payment_payload(self, required: Any) -> Any:  # type: ignore[override]
        return None


def test_register_fits_the_client_and_every_network_and_version() -> None:
    sync, aio = FakeClient(), FakeAsyncClient()
    scheme = register(sync, TestBuyer.new().key)
    known = [n.caip2 for n in networks()]
    assert type(scheme) is FourMicaCreditScheme
    assert sync.v2 == sync.v1 == [(n, scheme) for n in known] and len(sync.policies) == 1
    policy = SpendingPolicy(allowed_networks={"eip155:8453"})
    assert type(register(aio, TestBuyer.new().key, policy=policy)) is AsyncFourMicaCreditScheme
    skip_disallowed, _ = aio.policies
    kept = skip_disallowed(
        2, [offer(), SimpleNamespace(scheme="exact", network=NETWORK, asset="x")]
    )
    assert [o.scheme for o in kept] == ["exact"]  # x402 may still pick another offer
    with pytest.raises(ConfigurationError, match="async client"):
        register(FakeClient(), AsyncFourMicaCreditScheme(TestBuyer.new().key))
    with pytest.raises(ConfigurationError, match="x402_versions"):
        register(FakeClient(), TestBuyer.new().key, x402_versions=(3,))


def test_x402_is_handed_our_offers_cheapest_first() -> None:
    """x402 pays the first offer its policies leave: a seller listing a dear 4mica offer
    before a cheap one must not be paid the dear one (our transports pick the cheapest)."""
    client = FakeClient()
    register(client, TestBuyer.new().key)
    (ordered,) = client.policies
    dear, cheap = (offer().model_copy(update={"amount": a}) for a in ("900000", "10000"))
    exact = SimpleNamespace(scheme="exact", network=NETWORK, asset=USDC, amount="1")
    v1 = SimpleNamespace(  # x402's v1 requirements name their amount so
        scheme="4mica-credit",
        network=NETWORK,
        asset=USDC,
        pay_to=SELLER,
        max_amount_required="20000",
    )
    # passed over by the transports: never first
    zero, nobody = (
        offer().model_copy(update={"amount": "0"}),
        SimpleNamespace(
            scheme="4mica-credit", network=NETWORK, asset=USDC, pay_to="nobody", amount="1"
        ),
    )
    got = ordered(2, [exact, zero, dear, nobody, v1, cheap])
    assert got[0] is exact  # another scheme keeps its place: x402's choice, not ours
    assert got[1:] == [cheap, v1, dear, zero, nobody]  # the seller's order among equals
    weth = SimpleNamespace(
        scheme="4mica-credit", network=NETWORK, asset="0x" + "42" * 20, pay_to=SELLER, amount="1"
    )  # 1 unit of a token we do not know does not undercut a dollar offer
    assert ordered(2, [weth, dear])[0] is dear


def test_sync_hook_prepares_and_the_payload_only_signs() -> None:
    buyer, seller = TestBuyer.new(), Seller()
    policy = SpendingPolicy(max_per_request="$0.05")
    scheme = FourMicaCreditScheme(
        buyer.key, policy=policy, http=httpx.Client(transport=httpx.MockTransport(seller))
    )
    requirements = offer(**test_policy().to_extra())
    required = PaymentRequired(accepts=[requirements], resource=ResourceInfo(url="http://s/p"))
    context = SimpleNamespace(selected_requirements=requirements, payment_required=required)
    scheme.scheme_hooks["on_before_payment_creation"](context)
    assert seller.seen == ["/x402/tab", "/x402/core/public-params"]
    inner = scheme.create_payment_payload(requirements)
    assert seller.seen == ["/x402/tab", "/x402/core/public-params"]  # no I/O when signing
    signed = SignedGuarantee.from_json(inner)
    assert recover_signer(signed, Eip712Domain(84532)) == buyer.address
    claims = signed.claims
    assert (claims.version, claims.tab_id, claims.req_id, claims.amount) == (2, 42, 3, 10_000)
    # without the hook (x402 did not run it): prepared on the spot; the domain is cached
    v1 = requirements.to_v1(ResourceInfo(url="http://s/p"))
    assert SignedGuarantee.from_json(scheme.create_payment_payload(v1)).claims.version == 2
    assert seller.seen[2:] == ["/x402/tab"]
    with pytest.raises(BudgetExhausted, match="per-request cap"):
        scheme.create_payment_payload(offer().model_copy(update={"amount": "60000"}))
    assert len(seller.seen) == 3  # refused before the tab


def test_async_hook_awaits_its_io_and_an_async_approval() -> None:
    buyer, seller = TestBuyer.new(), Seller()
    asked: list[Any] = []

    async def approve(request: Any) -> bool:
        asked.append(request)
        return request.url == "http://s/ok"

    policy = SpendingPolicy(approval_threshold="$0.001", approve=approve)
    http = httpx.AsyncClient(transport=httpx.MockTransport(seller))
    scheme = AsyncFourMicaCreditScheme(buyer.key, policy=policy, http=http)

    def pay(url: str) -> dict[str, Any]:
        requirements = offer()
        required = PaymentRequired(accepts=[requirements], resource=ResourceInfo(url=url))
        context = SimpleNamespace(selected_requirements=requirements, payment_required=required)

        async def run() -> dict[str, Any]:
            await scheme.scheme_hooks["on_before_payment_creation"](context)
            return scheme.create_payment_payload(requirements)

        return asyncio.run(run())

    signed = SignedGuarantee.from_json(pay("http://s/ok"))
    assert signed.claims.version == 1 and signed.claims.user_address == buyer.address
    with pytest.raises(NeedsApproval):
        pay("http://s/no")
    assert [a.url for a in asked] == ["http://s/ok", "http://s/no"]
    assert seller.seen.count("/x402/tab") == 1  # the refused one opened no tab


def prepared_and_signed(scheme: FourMicaCreditScheme, requirements: PaymentRequirements) -> Any:
    """x402's two calls for one payment (hook, then payload): the signed guarantee."""
    required = PaymentRequired(accepts=[requirements], resource=ResourceInfo(url="http://s/p"))
    context = SimpleNamespace(selected_requirements=requirements, payment_required=required)
    scheme.scheme_hooks["on_before_payment_creation"](context)
    return SignedGuarantee.from_json(scheme.create_payment_payload(requirements))


def test_numbers_as_strings_in_a_sellers_extra_are_read_as_the_transports_read_them() -> None:
    """An official seller passes its configured ``extra`` through (docs/buyer.md, "Challenges")."""
    buyer, seller = TestBuyer.new(), Seller()
    http = httpx.Client(transport=httpx.MockTransport(seller))
    scheme = FourMicaCreditScheme(BuyerKey(buyer.key), http=http)  # a BuyerKey, as anywhere
    assert scheme.address == buyer.address
    for chain in ("84532", "0x14a34"):
        extra = {**test_policy().to_extra(), "validationChainId": chain, "minValidationScore": "80"}
        claims = prepared_and_signed(scheme, offer(**extra)).claims
        assert claims.version == 2 and claims.validation_chain_id == 84532
        assert claims.min_validation_score == 80
    tabs = seller.seen.count("/x402/tab")
    for field, value in [
        ("validationChainId", "084532"),
        ("validationChainId", "1"),  # well formed, another chain than the network's
        ("minValidationScore", "0x50"),
        ("minValidationScore", "101"),
    ]:
        requirements = offer(**{**test_policy().to_extra(), field: value})
        with pytest.raises(PaymentFailed, match=field) as info:
            prepared_and_signed(scheme, requirements)
        assert info.value.receipt.outcome == "payment_failed"
    assert seller.seen.count("/x402/tab") == tabs  # refused before a tab was opened


def test_receipts_go_to_the_policys_ledger_by_default(tmp_path: Path) -> None:
    buyer, seller = TestBuyer.new(), Seller()
    ledger = ReceiptLedger(tmp_path / "agent.db")
    policy = SpendingPolicy(max_per_request="$0.05", ledger=ledger)
    http = httpx.Client(transport=httpx.MockTransport(seller))
    scheme = FourMicaCreditScheme(buyer.key, policy=policy, http=http)
    assert scheme.ledger is ledger
    signed = prepared_and_signed(scheme, offer())
    with pytest.raises(BudgetExhausted):
        prepared_and_signed(scheme, offer().model_copy(update={"amount": "60000"}))
    paid, refused = list(ReceiptLedger(tmp_path / "agent.db"))  # another connection to the file
    assert (paid.outcome, paid.status, paid.amount) == ("paid", None, 10_000)  # x402 has the answer
    assert (paid.url, paid.tab_id, paid.request_id) == ("http://s/p", "0x2a", "0x3")
    assert paid.core_url == CORE
    assert json.loads(paid.claims) == signed.to_json()["claims"]
    assert (refused.outcome, refused.amount, refused.tab_id) == ("budget_exhausted", 60_000, None)
    assert policy.spent(USDC) == 10_000  # the signed one only
    assert FourMicaCreditScheme(buyer.key).ledger is not ledger  # no policy: one of its own
    with pytest.raises(ConfigurationError, match="to the scheme"):
        register(FakeClient(), scheme, ledger=ledger)


class _Unread(httpx.SyncByteStream):
    """A body httpx has not read yet (a Response made with ``content=`` is read at once)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Any:
        yield self.data


def test_a_tab_answer_packed_to_fill_the_memory_is_refused_unpacked_no_further() -> None:
    """The scheme's own calls were read whole by httpx (unpacked at once) before the limit
    looked at them: 200 MiB of zeros in 200 KB of gzip."""
    import tracemalloc
    import zlib

    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(packer.compress(bytes(1 << 20)) for _ in range(200)) + packer.flush()
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    answer = lambda request: httpx.Response(200, headers=headers, stream=_Unread(bomb))  # noqa: E731
    http = httpx.Client(transport=httpx.MockTransport(answer))
    scheme = FourMicaCreditScheme(TestBuyer.new().key, http=http)
    tracemalloc.start()
    try:
        with pytest.raises(PaymentFailed, match="larger than"):
            prepared_and_signed(scheme, offer())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak


def test_a_tab_endpoint_that_cannot_be_reached_is_a_refusal_that_releases_the_budget() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    policy = SpendingPolicy(per_hour="$1")
    http = httpx.Client(transport=httpx.MockTransport(down))
    scheme = FourMicaCreditScheme(TestBuyer.new().key, policy=policy, http=http)
    with pytest.raises(PaymentFailed, match="connection refused") as info:
        prepared_and_signed(scheme, offer())
    assert info.value.receipt.outcome == "payment_failed"
    assert [r.outcome for r in scheme.ledger] == ["payment_failed"]
    assert policy.spent(USDC) == 0


def test_an_offer_of_amount_zero_is_refused_before_a_tab_is_opened() -> None:
    """The Core refuses a guarantee of 0 (invalid_amount): x402 hands the scheme whatever
    offer it chose, and one of 0 was signed."""
    seller = Seller()
    http = httpx.Client(transport=httpx.MockTransport(seller))
    scheme = FourMicaCreditScheme(TestBuyer.new().key, http=http)  # no cap: none is needed
    requirements = offer().model_copy(update={"amount": "0"})
    with pytest.raises(PaymentFailed, match="amount of 0") as info:
        prepared_and_signed(scheme, requirements)
    assert info.value.receipt.outcome == "payment_failed" and seller.seen == []


def test_an_async_hook_cancelled_mid_way_gives_the_budget_back_at_once() -> None:
    """x402's async call cancelled (a timeout) while the hook waits for the Core's parameters,
    the tab already opened: the cancellation went past the buyer's steps, so the budget's
    reservation stayed taken until the garbage collector closed them, or for good."""
    seller = Seller()

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/core/public-params"):
            await asyncio.sleep(30)
        return seller(request)

    policy = SpendingPolicy(per_hour="$1")
    http = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    scheme = AsyncFourMicaCreditScheme(TestBuyer.new().key, policy=policy, http=http)
    requirements = offer()
    required = PaymentRequired(accepts=[requirements], resource=ResourceInfo(url="http://s/p"))
    context = SimpleNamespace(selected_requirements=requirements, payment_required=required)

    async def run() -> None:
        hook = scheme.scheme_hooks["on_before_payment_creation"]
        try:
            await asyncio.wait_for(hook(context), 0.5)
        except TimeoutError:  # while the caller still holds the error: no collector has run
            assert seller.seen == ["/x402/tab"]
            assert policy.spent(USDC) == 0
        else:
            raise AssertionError("not cancelled")

    asyncio.run(run())
