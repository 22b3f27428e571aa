"""The buyer client (sync and async transports) against every seller adapter."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from fourmica_x402.client import (
    RECEIPT_KEY,
    AsyncPaymentTransport,
    PaymentTransport,
    ReceiptLedger,
    SpendingPolicy,
)
from fourmica_x402.errors import (
    BlockedSeller,
    BudgetExhausted,
    InsufficientCollateral,
    NeedsApproval,
    PaymentFailed,
)
from fourmica_x402.testing import NETWORK, TestBuyer

BASE = "http://testserver"


class SyncFromAsync(httpx.BaseTransport):
    """Drive an ASGI app from sync code (one event loop per request)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def run() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                content=content,
                extensions=response.extensions,
            )

        return asyncio.run(run())


class AsyncFromSync(httpx.AsyncBaseTransport):
    """Drive a WSGI app from async code (in a worker thread)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        def run() -> httpx.Response:
            response = self.inner.handle_request(request)
            return httpx.Response(
                response.status_code, headers=response.headers, content=response.read()
            )

        return await asyncio.to_thread(run)


def inner_transport(seller: Any, *, is_async: bool) -> Any:
    app = seller.client.app
    if seller.client.interface == "asgi":
        asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return asgi if is_async else SyncFromAsync(asgi)
    wsgi = httpx.WSGITransport(app=app, raise_app_exceptions=False)
    return AsyncFromSync(wsgi) if is_async else wsgi


def funded(seller: Any, amount: int = 1_000_000) -> TestBuyer:
    buyer = TestBuyer.new()
    seller.core.deposit(buyer.address, amount, network=NETWORK)
    return buyer


def sync_client(seller: Any, buyer: TestBuyer, **kwargs: Any) -> httpx.Client:
    transport = PaymentTransport(
        buyer.key, transport=inner_transport(seller, is_async=False), **kwargs
    )
    return httpx.Client(transport=transport, base_url=BASE)


def async_client(seller: Any, buyer: TestBuyer, **kwargs: Any) -> httpx.AsyncClient:
    transport = AsyncPaymentTransport(
        buyer.key, transport=inner_transport(seller, is_async=True), **kwargs
    )
    return httpx.AsyncClient(transport=transport, base_url=BASE)


def test_sync_transport_pays(seller: Any) -> None:
    buyer = funded(seller)
    ledger = ReceiptLedger()
    with sync_client(seller, buyer, ledger=ledger) as client:
        resp = client.get("/premium")
        assert client.get("/free").json() == {"free": True}
    assert resp.status_code == 200 and resp.json()["payer"] == buyer.address
    receipt = resp.extensions[RECEIPT_KEY]
    assert receipt.outcome == "paid" and receipt.amount == 10_000 and receipt.x402_version == 2
    assert (
        receipt.guarantee_id == resp.json()["guarantee_id"]
        and receipt.seller == seller.options["pay_to"]
    )
    assert [r.outcome for r in ledger] == ["paid"]
    assert seller.core.guarantee(receipt.guarantee_id).version == 2  # v2 challenge → G-v2


def test_async_transport_pays_with_a_body(seller: Any) -> None:
    buyer = funded(seller)

    async def go() -> httpx.Response:
        async with async_client(seller, buyer) as client:
            return await client.post("/echo", json={"q": 1})

    resp = asyncio.run(go())
    assert resp.status_code == 200 and resp.json() == {"echo": {"q": 1}}
    assert resp.extensions[RECEIPT_KEY].outcome == "paid"


def test_v1_only_server(seller: Any) -> None:
    """A seller that answers only with the v1 body: the client signs G-v1 and uses X-PAYMENT."""
    buyer = funded(seller)
    inner = inner_transport(seller, is_async=False)

    class StripV2(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            content = response.read()
            headers = [
                (k, v) for k, v in response.headers.multi_items() if k.lower() != "payment-required"
            ]
            return httpx.Response(response.status_code, headers=headers, content=content)

    with httpx.Client(
        transport=PaymentTransport(buyer.key, transport=StripV2()), base_url=BASE
    ) as client:
        resp = client.get("/premium")
    assert resp.status_code == 200 and resp.json()["x402_version"] == 1
    assert "x-payment-response" in resp.headers
    assert seller.core.guarantee(resp.extensions[RECEIPT_KEY].guarantee_id).version == 1


class Counting(httpx.BaseTransport):
    """Counts what reaches the seller (to prove refusals are not retried)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.paid_attempts, self.tabs, self.total = inner, 0, 0, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.total += 1
        if "payment-signature" in request.headers or "x-payment" in request.headers:
            self.paid_attempts += 1
        if request.url.path.endswith("/tab"):
            self.tabs += 1
        return self.inner.handle_request(request)


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (SpendingPolicy(max_per_request="$0.005"), BudgetExhausted),
        (SpendingPolicy(max_per_request=9_999), BudgetExhausted),
        (SpendingPolicy(blocked_sellers={"SELLER"}), BlockedSeller),
        (SpendingPolicy(allowed_sellers={"0x" + "12" * 20}), BlockedSeller),
        (SpendingPolicy(approve_new_sellers=True), NeedsApproval),
        (SpendingPolicy(approval_threshold="$0.001", approve=lambda req: False), NeedsApproval),
        (SpendingPolicy(allowed_networks={"eip155:8453"}), PaymentFailed),
        (SpendingPolicy(allowed_assets={"0x" + "34" * 20}), PaymentFailed),
    ],
)
def test_policy_refusals_happen_before_signing_and_are_not_retried(
    seller: Any, policy: SpendingPolicy, error: type
) -> None:
    if policy.blocked_sellers == {"seller"}:
        policy.blocked_sellers = {seller.options["pay_to"].lower()}
    buyer = funded(seller)
    counting = Counting(inner_transport(seller, is_async=False))
    with (
        httpx.Client(
            transport=PaymentTransport(buyer.key, policy=policy, transport=counting), base_url=BASE
        ) as c,
        pytest.raises(error) as info,
    ):
        c.get("/premium")
    assert info.value.receipt.outcome == error.reason
    assert (counting.total, counting.tabs, counting.paid_attempts) == (1, 0, 0)
    assert seller.calls["/premium"] == 0


def test_approval_callbacks_sync_and_async(seller: Any) -> None:
    buyer = funded(seller)
    asked: list[str] = []

    def approve(request: Any) -> bool:
        asked.append(request.reason)
        return True

    policy = SpendingPolicy(approve_new_sellers=True, approve=approve)
    with sync_client(seller, buyer, policy=policy) as client:
        assert client.get("/premium").status_code == 200
        assert client.get("/premium").status_code == 200  # no longer new
    assert asked == ["new_seller"]

    async def approve_async(request: Any) -> bool:
        await asyncio.sleep(0)
        return request.amount <= 20_000

    policy = SpendingPolicy(approval_threshold="$0.005", approve=approve_async)

    async def go() -> list[int]:
        async with async_client(seller, buyer, policy=policy) as client:
            return [(await client.get(p)).status_code for p in ("/premium", "/items/3")]

    assert asyncio.run(go()) == [200, 200]


def test_insufficient_collateral_is_reported(seller: Any) -> None:
    buyer = funded(seller, amount=5)
    with sync_client(seller, buyer) as client, pytest.raises(InsufficientCollateral) as info:
        client.get("/premium")
    assert info.value.receipt.reason == "insufficient_collateral"


def test_per_seller_cap_and_window_budgets_count_unsettled_guarantees(seller: Any) -> None:
    buyer = funded(seller)
    policy = SpendingPolicy(max_per_seller="$0.03", per_minute="$1")
    with sync_client(seller, buyer, policy=policy) as client:
        assert [client.get("/premium").status_code for _ in range(3)] == [200, 200, 200]
        with pytest.raises(BudgetExhausted):
            client.get("/premium")
    policy = SpendingPolicy(per_minute="$0.02")
    with sync_client(seller, buyer, policy=policy) as client:
        assert client.get("/premium").status_code == 200
        assert client.get("/premium").status_code == 200
        with pytest.raises(BudgetExhausted) as info:
            client.get("/premium")
    assert "per minute" in info.value.receipt.reason


def test_task_budget_under_50_concurrent_async_requests(seller: Any) -> None:
    buyer = funded(seller)
    policy = SpendingPolicy()

    async def go() -> list[Any]:
        async with async_client(seller, buyer, policy=policy) as client:
            with policy.task("burst", budget="$0.20") as task:  # 20 payments of $0.01
                results = await asyncio.gather(
                    *(client.get("/premium") for _ in range(50)), return_exceptions=True
                )
            return [results, task]

    results, task = asyncio.run(go())
    paid = [r for r in results if isinstance(r, httpx.Response)]
    refused = [r for r in results if isinstance(r, BudgetExhausted)]
    assert len(paid) == 20 and len(refused) == 30
    assert task.spent[paid[0].extensions[RECEIPT_KEY].asset.lower()] == 200_000
    request_ids = {
        (r.extensions[RECEIPT_KEY].tab_id, r.extensions[RECEIPT_KEY].request_id) for r in paid
    }
    assert len(request_ids) == 20  # never the same request id twice
    assert seller.core.position(buyer.address, network=NETWORK).locked == 200_000
    assert seller.calls["/premium"] == 20


class LyingSeller(httpx.BaseTransport):
    """Wraps an honest seller and lies in one way."""

    def __init__(self, inner: Any, lie: str) -> None:
        self.inner, self.lie, self.paid_attempts = inner, lie, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "payment-signature" in request.headers or "x-payment" in request.headers:
            self.paid_attempts += 1
            if self.lie == "402-again":
                request.headers.pop("payment-signature", None)
        response = self.inner.handle_request(request)
        content = response.read()
        if self.lie == "wrong-payto" and request.url.path.endswith("/tab"):
            data = json.loads(content)
            data["recipientAddress"] = TestBuyer.new().address
            content = json.dumps(data).encode()
        if self.lie == "malformed" and response.status_code == 402:
            headers = [("payment-required", base64.b64encode(b"{not json").decode())]
            return httpx.Response(402, headers=headers, content=b"nope")
        return httpx.Response(
            response.status_code,
            headers=[h for h in response.headers.multi_items() if h[0].lower() != "content-length"],
            content=content,
        )


@pytest.mark.parametrize("lie", ["402-again", "wrong-payto", "malformed"])
def test_lying_sellers_get_a_clear_error_and_no_second_signature(seller: Any, lie: str) -> None:
    buyer = funded(seller)
    liar = LyingSeller(inner_transport(seller, is_async=False), lie)
    with (
        httpx.Client(
            transport=PaymentTransport(buyer.key, transport=liar), base_url=BASE
        ) as client,
        pytest.raises(PaymentFailed) as info,
    ):
        client.get("/premium")
    assert info.value.receipt.outcome == "payment_failed"
    assert liar.paid_attempts == (1 if lie == "402-again" else 0)
    assert seller.calls["/premium"] == 0


def test_a_refunded_failure_is_reported_but_still_counted(seller: Any) -> None:
    buyer = funded(seller)
    policy = SpendingPolicy(per_minute="$0.01")
    with sync_client(seller, buyer, policy=policy) as client:
        failed = client.get("/fail")
        assert failed.status_code == 500
        assert failed.extensions[RECEIPT_KEY].outcome == "payment_failed"
        # The seller says it refunded; the buyer cannot verify that, so the budget counts it.
        with pytest.raises(BudgetExhausted):
            client.get("/premium")
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0  # it did refund


def test_asset_case_cannot_split_a_budget() -> None:
    policy = SpendingPolicy(per_hour="$0.03")
    usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    for spelling in (usdc, usdc.lower(), usdc.upper().replace("0X", "0x")):
        decision = policy.check(
            seller="0x" + "11" * 20, url="u", amount=20_000, asset=spelling, network=NETWORK
        )
        if decision.outcome == "paid":
            policy.commit(decision.reservation)  # type: ignore[arg-type]
    assert policy._spent_since(0, asset=usdc.lower()) == 20_000  # only the first fitted
