"""The buyer client against every seller adapter, through every buyer transport: httpx (sync),
httpx (async) and requests (the ``buyers`` fixture; the harness is ``buyers.py``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fourmica_x402._eth import ZERO_ADDRESS
from fourmica_x402.client import (
    AsyncPaymentTransport,
    PaymentTransport,
    ReceiptLedger,
    SpendingPolicy,
    fetch_certificate,
    fetch_public_key,
    verify_certificate,
)
from fourmica_x402.errors import (
    BlockedSeller,
    BudgetExhausted,
    InsufficientCollateral,
    NeedsApproval,
    PaymentFailed,
    PaymentRefused,
)
from fourmica_x402.guarantee import guarantee_id
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import PAYMENT_REQUIRED_HEADER

harness = sys.modules["conformance_buyers"]  # loaded by conftest.py, as the fixture needs it
Wire = harness.Wire


def funded(seller: Any, amount: int = 1_000_000) -> TestBuyer:
    buyer = TestBuyer.new()
    seller.core.deposit(buyer.address, amount, network=NETWORK)
    return buyer


def test_pays_and_keeps_a_receipt(seller: Any, buyers: Any, tmp_path: Path) -> None:
    buyer = funded(seller)
    ledger = ReceiptLedger()
    client = buyers.client(seller, buyer, ledger=ledger)
    resp = client.get("/premium")
    free = client.get("/free")
    assert free.json() == {"free": True} and free.receipt is None
    assert resp.status == 200 and resp.json()["payer"] == buyer.address
    receipt = resp.receipt
    assert receipt.outcome == "paid" and receipt.amount == 10_000 and receipt.x402_version == 2
    assert receipt.guarantee_id == resp.json()["guarantee_id"]
    assert receipt.seller == seller.options["pay_to"]
    assert json.loads(receipt.claims)["user_address"] == buyer.address
    assert [r.outcome for r in ledger] == ["paid"]
    assert seller.core.guarantee(receipt.guarantee_id).version == 2  # v2 challenge → G-v2
    exported = tmp_path / "receipts.jsonl"  # a path, as docs/buyer.md writes it (a file too)
    assert ledger.export_jsonl(str(exported)) == 1 == ledger.export_jsonl(exported)
    [line] = exported.read_text().splitlines()
    assert json.loads(line)["guarantee_id"] == receipt.guarantee_id


def test_pays_with_a_body(seller: Any, buyers: Any) -> None:
    client = buyers.client(seller, funded(seller))
    resp = client.post("/echo", {"q": 1})
    assert resp.status == 200 and resp.json() == {"echo": {"q": 1}}
    assert resp.receipt.outcome == "paid"
    assert seller.calls["/echo"] == 1


class StripV2(Wire):
    """A seller that answers only with the v1 body."""

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        return status, [(k, v) for k, v in headers if k.lower() != "payment-required"], body


def test_v1_only_server(seller: Any, buyers: Any) -> None:
    """The client signs G-v1 and uses X-PAYMENT."""
    client = buyers.client(seller, funded(seller), wire=StripV2())
    resp = client.get("/premium")
    assert resp.status == 200 and resp.json()["x402_version"] == 1
    assert "x-payment-response" in resp.headers
    assert seller.core.guarantee(resp.receipt.guarantee_id).version == 1


class Counting(Wire):
    """Counts what reaches the seller (to prove refusals are not retried)."""

    def __init__(self) -> None:
        self.paid_attempts, self.tabs, self.total = 0, 0, 0

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        self.total += 1
        if "payment-signature" in headers or "x-payment" in headers:
            self.paid_attempts += 1
        if path.endswith("/tab"):
            self.tabs += 1
        return headers, body


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (SpendingPolicy(max_per_request="$0.005"), BudgetExhausted),
        (SpendingPolicy(max_per_request=9_999), BudgetExhausted),
        (SpendingPolicy(max_per_request="$0"), BudgetExhausted),  # nothing may be spent
        (SpendingPolicy(per_hour=Decimal(0)), BudgetExhausted),
        # finer than USDC's 6 decimals: rounded down, against the buyer (it failed the call)
        (SpendingPolicy(max_per_request="$0.0000001"), BudgetExhausted),
        (SpendingPolicy(blocked_sellers={ZERO_ADDRESS}), BlockedSeller),  # the seller's, below
        (SpendingPolicy(allowed_sellers={"0x" + "12" * 20}), BlockedSeller),
        (SpendingPolicy(approve_new_sellers=True), NeedsApproval),
        (SpendingPolicy(approval_threshold="$0.001", approve=lambda req: False), NeedsApproval),
        # an approver that answers in words (a language model) approves with True only
        (SpendingPolicy(approve_new_sellers=True, approve=lambda req: "no"), NeedsApproval),
        (SpendingPolicy(approve_new_sellers=True, approve=lambda req: {"ok": 0}), NeedsApproval),
        (SpendingPolicy(allowed_networks={"eip155:8453"}), PaymentFailed),
        (SpendingPolicy(allowed_assets={"0x" + "34" * 20}), PaymentFailed),
    ],
)
def test_policy_refusals_happen_before_signing_and_are_not_retried(
    seller: Any, buyers: Any, policy: SpendingPolicy, error: type
) -> None:
    if policy.blocked_sellers == {ZERO_ADDRESS}:
        policy.blocked_sellers = {seller.options["pay_to"].lower()}
    counting = Counting()
    client = buyers.client(seller, funded(seller), policy=policy, wire=counting)
    with pytest.raises(error) as info:
        client.get("/premium")
    assert info.value.receipt.outcome == error.reason
    assert (counting.total, counting.tabs, counting.paid_attempts) == (1, 0, 0)
    assert seller.calls["/premium"] == 0


def test_a_head_answered_402_is_handed_back_unpaid(seller: Any, buyers: Any) -> None:
    """A HEAD's answer has no body to deliver, and a seller never settles a payment sent with
    one (``head_not_charged``). The buyer opened a tab, signed a guarantee for it and counted
    it against its budget all the same: a seller answering it 200 could settle it."""
    counting, ledger = Counting(), ReceiptLedger()
    policy = SpendingPolicy(per_hour="$1")
    client = buyers.client(seller, funded(seller), policy=policy, ledger=ledger, wire=counting)
    resp = client.request("HEAD", "/premium")
    assert resp.status == 402 and resp.receipt is None
    assert PAYMENT_REQUIRED_HEADER.lower() in {k.lower() for k in resp.headers}  # the price
    assert (counting.total, counting.tabs, counting.paid_attempts) == (1, 0, 0)
    assert policy.spent(default_asset(NETWORK).address) == 0 and list(ledger) == []
    assert client.get("/premium").status == 200  # the GET pays as usual


@pytest.mark.parametrize(
    "options",
    [
        {"allowed_networks": "eip155:84532"},  # "eip155:8453" in it: Base mainnet passed
        {"max_per_request": 0.05},  # a float
        {"max_per_seller": "five cents"},
        {"per_hour": True},
        {"approval_threshold": "50000u"},  # the CLI's spelling, not the library's
        {"per_day": -1},
    ],
)
def test_a_policy_that_cannot_hold_fails_when_made_not_at_a_payment(options: Any) -> None:
    """These were taken as given: a string of networks became a substring test that let an
    offer on another network through, and a cap of another type raised ConfigurationError at
    the first payment, out of a call where an agent catches PaymentRefused."""
    with pytest.raises(ValueError, match=next(iter(options))):
        SpendingPolicy(**options)
    # finer than any token the buyer pays in (checked at a payment), but a price
    assert SpendingPolicy(max_per_request="$0.0000000000000000001").max_per_request
    with (
        pytest.raises(ValueError, match="budget"),
        SpendingPolicy().task("t", budget=0.5),  # type: ignore[arg-type]
    ):
        pass


def test_approval_callbacks_sync_and_async(seller: Any, buyers: Any) -> None:
    buyer = funded(seller)
    asked: list[str] = []

    def approve(request: Any) -> bool:
        asked.append(request.reason)
        return True

    policy = SpendingPolicy(approve_new_sellers=True, approve=approve)
    client = buyers.client(seller, buyer, policy=policy)
    assert client.get("/premium").status == 200
    assert client.get("/premium").status == 200  # no longer new
    assert asked == ["new_seller"]

    async def approve_async(request: Any) -> bool:
        await asyncio.sleep(0)
        return request.amount <= 10_000

    policy = SpendingPolicy(approval_threshold="$0.005", approve=approve_async)
    client = buyers.client(seller, buyer, policy=policy)
    assert client.get("/premium").status == 200  # $0.01: approved
    with pytest.raises(NeedsApproval):
        client.get("/items/3")  # $0.02: refused by the callback
    assert seller.calls["/items/3"] == 0


class _Served(Wire):
    """Sets ``served`` once a paid answer for ``path`` came back."""

    def __init__(self, path: str) -> None:
        self.path, self.served = path, threading.Event()

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path == self.path and status == 200:
            self.served.set()
        return status, headers, body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["httpx_async"], indirect=True)
def test_a_sync_approval_callback_does_not_hold_up_other_calls(seller: Any, buyers: Any) -> None:
    """A sync callback (a person answering a prompt) ran on the event loop: every other paid
    call of the agent stood still until it answered. Here it answers once another call in
    flight was served; on the loop, that call never was, and the wait ran out (refused)."""
    wire = _Served("/premium")

    def approve(request: Any) -> bool:
        return wire.served.wait(10)

    policy = SpendingPolicy(approval_threshold="$0.015", approve=approve)
    client = buyers.client(seller, funded(seller), policy=policy, wire=wire)
    dear, cheap = client.gather(["/items/3", "/premium"])  # $0.02 asks; $0.01 does not
    assert cheap.status == 200 and dear.status == 200, (dear, cheap)
    assert seller.calls["/items/3"] == 1


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_a_sync_approval_callback_is_asked_one_payment_at_a_time(seller: Any, buyers: Any) -> None:
    """In a worker thread, a sync callback (a person at a prompt) was asked about two payments
    at once: two prompts on one terminal, and the answer typed for one could approve the
    other. The agent's other calls go on, but one question is asked at a time: under the
    async transport, and under the sync ones called from threads (a pool of workers)."""
    asking, most = [0], [0]
    lock = threading.Lock()

    def approve(request: Any) -> bool:
        with lock:
            asking[0] += 1
            most[0] = max(most[0], asking[0])
        time.sleep(0.3)
        with lock:
            asking[0] -= 1
        return True

    policy = SpendingPolicy(approval_threshold="$0.005", approve=approve)
    client = buyers.client(seller, funded(seller), policy=policy)
    answers = client.gather(["/items/3", "/premium"])  # both over the threshold
    assert [a.status for a in answers] == [200, 200]
    assert most[0] == 1


@pytest.mark.parametrize("kind", ["flask"])  # the client's side: one seller is enough
def test_an_approval_callback_that_pays_through_the_async_buyer_is_asked_again(
    seller: Any,
) -> None:
    """A sync callback under the sync transport that pays first (a paid look-up of the seller)
    through the async buyer, ``asyncio.run`` in its thread: that payment's question waited in a
    worker thread for the process-wide lock its own question held, forever. A question a
    callback causes while it answers is asked without waiting for that lock."""
    buyer = funded(seller)
    asked: list[str] = []

    async def look_up() -> int:
        inner = AsyncPaymentTransport(
            buyer.key, policy=policy, transport=harness._inner(seller, is_async=True)
        )
        async with httpx.AsyncClient(transport=inner) as client:
            return (await client.get("http://testserver/items/7")).status_code

    def approve(request: Any) -> bool:
        asked.append(request.url)
        return len(asked) > 1 or asyncio.run(look_up()) == 200

    policy = SpendingPolicy(approval_threshold="$0.005", approve=approve)
    payer = PaymentTransport(
        buyer.key, policy=policy, transport=harness._inner(seller, is_async=False)
    )
    done: list[int] = []

    def pay() -> None:
        with httpx.Client(transport=payer) as client:
            done.append(client.get("http://testserver/premium").status_code)

    thread = threading.Thread(target=pay, daemon=True)
    thread.start()
    thread.join(15)
    assert done == [200], asked
    assert asked == ["http://testserver/premium", "http://testserver/items/7"]


def test_insufficient_collateral_is_reported(seller: Any, buyers: Any) -> None:
    client = buyers.client(seller, funded(seller, amount=5))
    with pytest.raises(InsufficientCollateral) as info:
        client.get("/premium")
    assert info.value.receipt.reason == "insufficient_collateral"


def test_per_seller_cap_and_window_budgets_count_unsettled_guarantees(
    seller: Any, buyers: Any
) -> None:
    buyer = funded(seller)
    client = buyers.client(seller, buyer, policy=SpendingPolicy(max_per_seller="$0.03"))
    assert [client.get("/premium").status for _ in range(3)] == [200, 200, 200]
    with pytest.raises(BudgetExhausted):
        client.get("/premium")
    client = buyers.client(seller, buyer, policy=SpendingPolicy(per_minute="$0.02"))
    assert client.get("/premium").status == 200
    assert client.get("/premium").status == 200
    with pytest.raises(BudgetExhausted) as info:
        client.get("/premium")
    assert "per minute" in info.value.receipt.reason


def test_task_budget_under_50_concurrent_requests(seller: Any, buyers: Any) -> None:
    buyer = funded(seller)
    policy = SpendingPolicy()
    client = buyers.client(seller, buyer, policy=policy)
    with policy.task("burst", budget="$0.20") as task:  # 20 payments of $0.01
        results = client.gather(["/premium"] * 50)
    paid = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExhausted)]
    assert len(paid) == 20 and len(refused) == 30, results
    assert all(r.status == 200 for r in paid)
    assert task.spent[paid[0].receipt.asset.lower()] == 200_000
    request_ids = {(r.receipt.tab_id, r.receipt.request_id) for r in paid}
    assert len(request_ids) == 20  # never the same request id twice
    assert seller.core.position(buyer.address, network=NETWORK).locked == 200_000
    assert seller.calls["/premium"] == 20


def rewritten(headers: Any, change: Any) -> list[tuple[str, str]]:
    """``headers`` with the challenge of their PAYMENT-REQUIRED header passed through
    ``change(required)`` (which edits it in place)."""
    out = []
    for name, value in headers:
        if name.lower() == PAYMENT_REQUIRED_HEADER.lower():
            required = json.loads(base64.b64decode(value))
            change(required)
            value = base64.b64encode(json.dumps(required).encode()).decode()
        out.append((name, value))
    return out


class LyingSeller(Wire):
    """Wraps an honest seller and lies in one way."""

    def __init__(self, lie: str) -> None:
        self.lie, self.paid_attempts = lie, 0

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if "payment-signature" in headers or "x-payment" in headers:
            self.paid_attempts += 1
            if self.lie == "402-again":
                headers.pop("payment-signature", None)
        return headers, body

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if self.lie == "wrong-payto" and path.endswith("/tab"):
            data = json.loads(body)
            data["recipientAddress"] = TestBuyer.new().address
            body = json.dumps(data).encode()
        if self.lie == "malformed" and status == 402:
            return 402, [("payment-required", base64.b64encode(b"{not json").decode())], b"nope"
        return status, headers, body


@pytest.mark.parametrize("lie", ["402-again", "wrong-payto", "malformed"])
def test_lying_sellers_get_a_clear_error_and_no_second_signature(
    seller: Any, buyers: Any, lie: str
) -> None:
    liar = LyingSeller(lie)
    client = buyers.client(seller, funded(seller), wire=liar)
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert info.value.receipt.outcome == "payment_failed"
    assert liar.paid_attempts == (1 if lie == "402-again" else 0)
    assert seller.calls["/premium"] == 0


class GarbledOwnCalls(Wire):
    """The seller's tab endpoint or its Core's parameters answer something odd."""

    def __init__(self, where: str, body: bytes, status: int = 200) -> None:
        self.where, self.body, self.status = where, body, status

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path.endswith(self.where):
            return self.status, [("content-type", "application/json")], self.body
        return status, headers, body


def _params(**changed: Any) -> bytes:
    """A Core's signing parameters (the three fields the buyer signs with), changed."""
    params = {"chain_id": 84532, "eip712_name": "4Mica", "eip712_version": "1", **changed}
    return json.dumps(params).encode()


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize(
    ("where", "body"),
    [
        ("/tab", b"[" * 100_000 + b"]" * 100_000),
        ("/core/public-params", b"[" * 100_000 + b"]" * 100_000),
        ("/core/public-params", _params(chain_id=84532.7)),
        ("/core/public-params", _params(chain_id=True)),
    ],
    ids=["tab-deep-json", "params-deep-json", "params-float-chain", "params-bool-chain"],
)
def test_a_garbled_tab_or_core_answer_is_a_clean_refusal(
    seller: Any, buyers: Any, where: str, body: bytes
) -> None:
    policy = SpendingPolicy()
    client = buyers.client(seller, funded(seller), wire=GarbledOwnCalls(where, body), policy=policy)
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert info.value.receipt.outcome == "payment_failed"
    assert policy.spent(default_asset(NETWORK).address) == 0 and seller.calls["/premium"] == 0


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_a_tab_refusal_without_a_reason_says_its_status(seller: Any, buyers: Any) -> None:
    """A 400 of ``{}`` was reported as "tab endpoint failed: None"."""
    client = buyers.client(seller, funded(seller), wire=GarbledOwnCalls("/tab", b"{}", 400))
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert "tab endpoint failed: status 400" in str(info.value)


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_a_tab_answer_that_is_not_json_says_its_status_not_the_parsers_words(
    seller: Any, buyers: Any
) -> None:
    """A plain-text 404 was reported as "tab endpoint failed: expected ident at line 1
    column 2" (docs/buyer.md, "Where the buyer connects"): its status and the start of its
    text are, on one printable line; a 200 that is not JSON says so."""
    text = b"not found\n\x1b[2J" + b"x" * 500
    client = buyers.client(seller, funded(seller), wire=GarbledOwnCalls("/tab", text, 404))
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    said = str(info.value)
    assert "tab endpoint failed: status 404: not found [2Jxxx" in said, said
    assert "\x1b" not in said and "\n" not in said and "x" * 80 not in said
    client = buyers.client(seller, funded(seller), wire=GarbledOwnCalls("/tab", b"<html>"))
    with pytest.raises(PaymentFailed, match="tab endpoint failed: its answer is not a JSON object"):
        client.get("/premium")


class DecoyOffer(Wire):
    """Puts, before the seller's own offer, a cheaper-looking one in another token."""

    def __init__(self, asset: str = "0x" + "ab" * 20, amount: str = "2", **fields: str) -> None:
        self.asset, self.amount, self.fields = asset, amount, fields

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        def add_decoy(required: Any) -> None:
            decoy = {**required["accepts"][0], "amount": self.amount, "asset": self.asset}
            if self.fields:  # the seller's own token, cheaper, and something else wrong
                decoy = {**required["accepts"][0], "amount": "1", **self.fields}
            required["accepts"].insert(0, decoy)

        return status, rewritten(headers, add_decoy) if status == 402 else headers, body


class ZeroOffer(Counting):
    """Asks an amount of 0: in an offer of its own before the seller's (``decoy``), or in the
    seller's only offer."""

    def __init__(self, decoy: bool) -> None:
        super().__init__()
        self.decoy = decoy

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        def zero(required: Any) -> None:
            offer = {**required["accepts"][0], "amount": "0"}
            required["accepts"][: 0 if self.decoy else 1] = [offer]

        return status, rewritten(headers, zero) if status == 402 else headers, body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("decoy", [False, True], ids=["only", "decoy"])
def test_an_offer_of_amount_zero_is_never_signed(seller: Any, buyers: Any, decoy: bool) -> None:
    """The Core refuses a guarantee of 0 (invalid_amount) and our gate never prices 0: an
    offer of 0, the cheapest, was signed (whatever the caps: 0 is over none), and hid the
    seller's real offer. It is no offer the buyer can pay now."""
    wire = ZeroOffer(decoy)
    client = buyers.client(seller, funded(seller), wire=wire)
    if decoy:  # the seller's own offer is paid
        resp = client.get("/premium")
        assert resp.status == 200 and resp.receipt.amount == 10_000
        assert (wire.tabs, wire.paid_attempts) == (1, 1)
    else:
        with pytest.raises(PaymentFailed, match="no offer this client can pay") as info:
            client.get("/premium")
        assert info.value.receipt.outcome == "payment_failed"
        assert (wire.tabs, wire.paid_attempts) == (0, 0)


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_a_cheaper_decoy_naming_no_seller_does_not_hide_the_real_offer(
    seller: Any, buyers: Any
) -> None:
    """A cheapest offer whose payTo is no address was chosen, then failed the whole call."""
    wire = DecoyOffer(payTo="0x" + "11" * 19 + "1G")
    resp = buyers.client(seller, funded(seller), wire=wire).get("/premium")
    assert resp.status == 200 and resp.receipt.amount == 10_000


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("decoy", ["unknown", "registered"])
def test_a_decoy_offer_in_another_token_does_not_undercut_a_dollar_one(
    seller: Any, buyers: Any, decoy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 units of a token nobody knows, or 0.009 of a registered non-dollar token."""
    wire = DecoyOffer()
    if decoy == "registered":
        from fourmica_x402 import networks

        copied = {k: dict(v) for k, v in networks._assets.items()}
        monkeypatch.setattr(networks, "_assets", copied)
        weth = networks.register_asset(NETWORK, "0x" + "ee" * 20, symbol="WETH", decimals=18)
        wire = DecoyOffer(weth.address, str(9 * 10**15))
    resp = buyers.client(seller, funded(seller), wire=wire).get("/premium")
    assert resp.status == 200 and resp.receipt.outcome == "paid"
    assert resp.receipt.asset == default_asset(NETWORK).address and resp.receipt.amount == 10_000


class CountsPaid(Wire):
    """Counts the paid requests that reach the seller."""

    def __init__(self) -> None:
        self.paid_attempts = 0

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if "payment-signature" in headers or "x-payment" in headers:
            self.paid_attempts += 1
        return headers, body


class RedirectingSeller(CountsPaid):
    """Answers every paid request with a redirect to another priced URL, which asks again."""

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path == "/premium" and status == 200:
            return 302, [("location", f"/premium?hop={self.paid_attempts}")], b""
        return status, headers, body


def test_one_call_pays_once_however_often_the_seller_redirects(seller: Any, buyers: Any) -> None:
    """A seller redirecting a paid request to a URL that asks again gets no second signature."""
    wire = RedirectingSeller()
    policy = SpendingPolicy()
    client = buyers.client(seller, funded(seller), wire=wire, policy=policy, follow_redirects=True)
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert "redirect" in info.value.receipt.reason
    assert wire.paid_attempts == 1 and seller.calls["/premium"] == 1
    assert policy.spent(default_asset(NETWORK).address) == 10_000
    # The next call is a call of its own: it pays (once) again.
    with pytest.raises(PaymentFailed):
        client.get("/premium")
    assert wire.paid_attempts == 2


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["requests"], indirect=True)
def test_a_redirect_hop_handed_to_another_requests_adapter_still_pays_once(
    seller: Any, buyers: Any
) -> None:
    """A session mounting one PaymentAdapter per prefix ("http://" and "https://", as the
    buyer docs show) hands a paid call's redirect hop to the other one: the call still pays
    once (each adapter kept its own record of the calls it paid)."""
    from fourmica_x402.client.requests_adapter import PaymentAdapter

    wire, policy, buyer = RedirectingSeller(), SpendingPolicy(), funded(seller)
    client = buyers.client(seller, buyer, wire=wire, policy=policy)
    other = PaymentAdapter(buyer.key, policy=policy)
    client._session.mount(client.base + "/premium?", other)  # the hops' URLs
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert "redirect" in info.value.receipt.reason
    assert wire.paid_attempts == 1 and seller.calls["/premium"] == 1
    assert policy.spent(default_asset(NETWORK).address) == 10_000


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["requests"], indirect=True)
def test_another_buyers_call_sharing_a_copied_request_is_its_own(seller: Any, buyers: Any) -> None:
    """Copies of one prepared request share its hooks; the record of paid calls is per
    buyer, so another buyer's session sending such a copy pays its own call (it was refused
    as a hop of the first buyer's)."""
    import requests

    wire = RedirectingSeller()
    first = buyers.client(seller, funded(seller), wire=wire)
    second = buyers.client(seller, funded(seller), wire=wire)
    template = first._session.prepare_request(requests.Request("GET", first.base + "/premium"))
    for client in (first, second):
        with pytest.raises(PaymentFailed):  # each paid once, then its hop asked again
            client._session.send(template.copy(), allow_redirects=True)
    assert wire.paid_attempts == 2


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_the_same_request_sent_again_after_a_paid_redirect_pays_again(
    seller: Any, buyers: Any
) -> None:
    """Only the hops of a paid call are refused; sending the caller's request object again (a
    retry wrapper, a second purchase) is a call of its own."""
    wire = RedirectingSeller()
    client = buyers.client(seller, funded(seller), wire=wire)
    if buyers.transport == "requests":
        import requests

        prepared = client._session.prepare_request(
            requests.Request("GET", client.base + "/premium")
        )
        statuses = [client._session.send(prepared, allow_redirects=False).status_code for _ in "ab"]
    elif buyers.transport == "httpx":
        request = client._sync.build_request("GET", "/premium")
        statuses = [client._sync.send(request).status_code for _ in "ab"]
    else:
        request = client._async.build_request("GET", "/premium")

        async def twice() -> list[int]:
            return [(await client._async.send(request)).status_code for _ in "ab"]

        statuses = client._loop.run_until_complete(twice())
    assert statuses == [302, 302] and wire.paid_attempts == 2


class CredentialsFirstRefused(CountsPaid):
    """Answers the first paid request 401 (its credentials refused, the guarantee kept)."""

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path == "/premium" and status == 200 and self.paid_attempts == 1:
            return 401, [("www-authenticate", "Bearer")], b""
        return status, headers, body


class RefreshingAuth(httpx.Auth):
    """httpx's token-refresh pattern: on a 401, send the same request again, new token."""

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["authorization"] = "Bearer old"
        response = yield request
        if response.status_code == 401:
            request.headers["authorization"] = "Bearer new"
            yield request


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["httpx", "httpx_async"], indirect=True)  # httpx Auth flows
def test_an_auth_retry_of_a_paid_call_is_not_paid_again(seller: Any, buyers: Any) -> None:
    """An httpx Auth flow re-sending a paid call after a 401 meets a 402: one call pays once."""
    wire, policy = CredentialsFirstRefused(), SpendingPolicy()
    client = buyers.client(seller, funded(seller), wire=wire, policy=policy)
    inner = client._sync if buyers.transport == "httpx" else client._async
    inner.auth = RefreshingAuth()
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert "credentials refused" in info.value.receipt.reason
    assert wire.paid_attempts == 1
    assert policy.spent(default_asset(NETWORK).address) == 10_000
    assert client.get("/premium").status == 200  # the next call pays, once
    assert wire.paid_attempts == 2


class Latin1Header(Wire):
    """Adds a header with a latin-1 byte (``obs-text``, which HTTP allows) to every answer,
    and keeps what the seller received of the caller's own headers."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        self.names.append(headers.get("x-name", ""))
        return headers, body

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        return status, [*headers, ("x-served-by", "caf\xe9")], body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["requests"], indirect=True)
def test_the_requests_adapter_passes_latin1_headers_both_ways(seller: Any, buyers: Any) -> None:
    """What plain requests sends and reads (latin-1 header values) works through the adapter,
    on free and paid calls alike."""
    wire = Latin1Header()
    client = buyers.client(seller, funded(seller), wire=wire)
    for path in ("/free", "/premium"):
        got = client._session.get(client.base + path, headers={"X-Name": "Zo\xeb"}, timeout=10)
        assert got.status_code == 200 and got.headers["x-served-by"] == "caf\xe9"
    assert wire.names[-1] == "Zo\xeb"


class HugeChallenge(CountsPaid):
    """Pads its 402 answers with megabytes of body (a hostile seller, or a broken one)."""

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if status == 402:
            return status, headers, body + b" " * (3 << 20)
        return status, headers, body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_an_oversized_402_answer_is_refused_and_nothing_is_signed(seller: Any, buyers: Any) -> None:
    """The flow reads at most a megabyte of an answer it parses (docs/buyer.md)."""
    wire, policy = HugeChallenge(), SpendingPolicy()
    client = buyers.client(seller, funded(seller), wire=wire, policy=policy)
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert "larger than 1048576 bytes" in str(info.value)
    assert info.value.receipt.status == 402
    assert wire.paid_attempts == 0 and policy.spent(default_asset(NETWORK).address) == 0


class GarbledResult(Wire):
    """Serves the paid request, then says odd things about it: a result header whose
    ``transaction`` is no string, or a refusal whose ``errorReason`` is no string."""

    def __init__(self, value: Any, refuse: bool) -> None:
        self.value, self.refuse = value, refuse

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path != "/premium" or status != 200:
            return status, headers, body
        key = "errorReason" if self.refuse else "transaction"
        result = {"success": not self.refuse, "network": NETWORK, key: self.value}
        encoded = base64.b64encode(json.dumps(result).encode()).decode()
        kept = [(k, v) for k, v in headers if k.lower() != "payment-response"]
        return (402 if self.refuse else 200), [*kept, ("payment-response", encoded)], body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("value", [{"id": 1}, ["0x1"], 2**70, 1.5, None], ids=repr)
@pytest.mark.parametrize("refuse", [False, True], ids=["served", "refused"])
def test_a_garbled_result_after_payment_never_loses_the_answer(
    seller: Any, buyers: Any, value: Any, refuse: bool
) -> None:
    ledger = ReceiptLedger()
    client = buyers.client(seller, funded(seller), wire=GarbledResult(value, refuse), ledger=ledger)
    if refuse:
        with pytest.raises(PaymentFailed) as info:
            client.get("/premium")
        assert info.value.receipt.reason == "refused after payment"
    else:
        resp = client.get("/premium")
        assert resp.status == 200 and resp.receipt.outcome == "paid"
        # no word from the seller on it: the receipt names the guarantee the buyer signed
        assert resp.receipt.guarantee_id == _signed_id(resp.receipt)
    assert [r.outcome for r in ledger] == ["payment_failed" if refuse else "paid"]


class LyingResult(Wire):
    """Serves the paid request and keeps the guarantee (the Core holds it), then tells the
    buyer otherwise: "refunded" with the Core's own certificate and another guarantee's id,
    or a 402 saying the collateral was short."""

    OTHER = "0x" + "11" * 32

    def __init__(self, core: Any, refuse: bool) -> None:
        self.core, self.refuse = core, refuse

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path != "/premium" or status != 200:
            return status, headers, body
        told = dict((k.lower(), v) for k, v in headers)["payment-response"]
        kept_id = json.loads(base64.b64decode(told))["transaction"]
        result: dict[str, Any] = {"success": False, "network": NETWORK, "transaction": self.OTHER}
        if self.refuse:
            result["errorReason"] = "insufficient_collateral"
        else:
            result["extra"] = {"certificate": self.core.certify(kept_id).to_json()}
        encoded = base64.b64encode(json.dumps(result).encode()).decode()
        kept = [(k, v) for k, v in headers if k.lower() != "payment-response"]
        return (402 if self.refuse else 200), [*kept, ("payment-response", encoded)], body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("refuse", [False, True], ids=["certified", "refused"])
def test_a_seller_that_keeps_the_guarantee_cannot_tell_the_buyer_it_was_refunded(
    seller: Any, buyers: Any, refuse: bool
) -> None:
    ledger = ReceiptLedger()
    wire = LyingResult(seller.core, refuse)
    client = buyers.client(seller, funded(seller), wire=wire, ledger=ledger)
    if refuse:
        with pytest.raises(InsufficientCollateral) as info:
            client.get("/premium")
        receipt = info.value.receipt
    else:
        receipt = client.get("/premium").receipt
        # the Core's certificate checks out: the seller's "refunded" is not believed
        assert receipt.certificate_verified is True and receipt.outcome == "paid"
        assert "said refunded, but the Core certified" in receipt.reason
        assert f"seller named another guarantee, {LyingResult.OTHER}" in receipt.reason
    # whatever the seller says, the receipt names what was signed, for the Core to look up
    assert receipt.guarantee_id == _signed_id(receipt)
    assert seller.core.guarantee(receipt.guarantee_id).state == "payable"  # it was delivered
    assert [r.guarantee_id for r in ledger] == [receipt.guarantee_id]


def _signed_id(receipt: Any) -> str:
    found = guarantee_id(84532, int(receipt.tab_id, 16), int(receipt.request_id, 16))
    return "0x" + found.hex()


def _dropped_connection(exc: BaseException) -> bool:
    """The transport's own error for a connection closed with no answer."""
    import requests

    return isinstance(exc, httpx.TransportError | requests.exceptions.ConnectionError)


class DroppingWire(Wire):
    """Closes the connection with no answer on the first ``times`` calls whose path ends with
    one of ``paths``: before the seller sees them, or after it handled them."""

    def __init__(self, paths: tuple[str, ...], *, after: bool, times: int = 1) -> None:
        self.paths, self.after, self.left = paths, after, dict.fromkeys(paths, times)
        self.sent: Counter[str] = Counter()

    def _drop(self, path: str) -> None:
        for end in self.paths:
            if path.endswith(end) and self.left[end] > 0:
                self.left[end] -= 1
                raise harness.Dropped(path)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if "payment-signature" in headers or "x-payment" in headers:
            self.sent["paid"] += 1
        else:
            self.sent[path] += 1
        if not self.after:
            self._drop(path)
        return headers, body

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if self.after:
            self._drop(path)
        return status, headers, body


@pytest.mark.parametrize("after", [False, True], ids=["before-seller", "after-seller"])
def test_a_dropped_connection_on_the_flows_own_calls_is_tried_once_more(
    seller: Any, buyers: Any, after: bool
) -> None:
    """A kept-alive connection the server closes as the tab request leaves (or a restarted
    worker) costs the buyer nothing: the tab call is idempotent and is sent again once."""
    buyer = funded(seller)
    wire = DroppingWire(("/x402/tab",), after=after)
    ledger = ReceiptLedger()
    client = buyers.client(seller, buyer, wire=wire, ledger=ledger)
    resp = client.get("/premium")
    assert resp.status == 200 and resp.receipt.outcome == "paid"
    assert wire.left == {"/x402/tab": 0} and wire.sent["/x402/tab"] == 2
    assert wire.sent["paid"] == 1 and seller.calls["/premium"] == 1
    assert seller.core.position(buyer.address, network=NETWORK).locked == 10_000
    assert [r.outcome for r in ledger] == ["paid"]


def test_a_tab_endpoint_that_keeps_dropping_fails_cleanly_and_reserves_nothing(
    seller: Any, buyers: Any
) -> None:
    buyer = funded(seller)
    wire = DroppingWire(("/x402/tab",), after=False, times=2)
    client = buyers.client(seller, buyer, wire=wire, policy=SpendingPolicy(per_minute="$0.01"))
    with pytest.raises(Exception) as info:
        client.get("/premium")
    assert _dropped_connection(info.value), info.value
    assert wire.sent["/x402/tab"] == 2 and wire.sent["paid"] == 0  # tried twice, never signed
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0
    resp = client.get("/premium")  # the budget held nothing back for the failed attempt
    assert resp.status == 200 and resp.receipt.outcome == "paid"


class DropPaid(DroppingWire):
    """Drops the connection of every paid request, before the seller gets it."""

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        headers, body = super().request(method, path, headers, body)
        if "payment-signature" in headers or "x-payment" in headers:
            raise harness.Dropped(path)
        return headers, body


def test_a_dropped_paid_request_is_not_sent_again(seller: Any, buyers: Any) -> None:
    """The paid retry is not idempotent from the buyer's side: one signature, one send."""
    buyer = funded(seller)

    wire = DropPaid((), after=False)
    client = buyers.client(seller, buyer, wire=wire)
    with pytest.raises(Exception) as info:
        client.get("/premium")
    assert _dropped_connection(info.value), info.value
    assert wire.sent["paid"] == 1 and seller.calls["/premium"] == 0
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0


def test_a_paid_request_left_unanswered_keeps_its_receipt(seller: Any, buyers: Any) -> None:
    """A signed guarantee that left gets a receipt even when no answer came: its ids and
    claims, to settle up with the seller later (docs/buyer.md, "Receipts")."""

    ledger = ReceiptLedger()
    client = buyers.client(seller, funded(seller), wire=DropPaid((), after=False), ledger=ledger)
    with pytest.raises(Exception) as info:
        client.get("/premium")
    assert _dropped_connection(info.value), info.value
    (receipt,) = list(ledger)
    assert receipt.outcome == "unanswered" and receipt.amount == 10_000
    assert receipt.claims and receipt.tab_id and receipt.request_id


class _CutBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body cut after its first bytes (the connection reset)."""

    def __iter__(self) -> Any:
        yield b'{"error": "refu'
        raise httpx.ReadError("Connection reset by peer")

    async def __aiter__(self) -> Any:
        yield b'{"error": "refu'
        raise httpx.ReadError("Connection reset by peer")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_paid_request_whose_402_is_cut_keeps_its_receipt(mode: str) -> None:
    """A seller answering the paid request with a 402 whose body it cut: the signed
    guarantee had left and counted against the budget, but no receipt was written (the
    caller's error only), so nothing said what to settle up later. It is kept 'unanswered'
    with its ids and claims (docs/buyer.md, "Receipts")."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            return httpx.Response(
                200, json={"tabId": "0x1", "nextReqId": "0x1", "userAddress": user}
            )
        headers = {"payment-required": _mock_offer()}
        if "payment-signature" in request.headers:
            return httpx.Response(402, headers=headers, stream=_CutBody())
        return httpx.Response(402, headers=headers)

    ledger = ReceiptLedger()
    policy = SpendingPolicy(ledger=ledger)
    key, options = TestBuyer.new().key, {"base_url": "http://seller.test"}
    with pytest.raises(httpx.ReadError):
        if mode == "sync":
            transport = PaymentTransport(key, policy=policy, transport=httpx.MockTransport(answer))
            with httpx.Client(transport=transport, **options) as client:
                client.get("/x")
        else:

            async def get() -> None:
                inner = httpx.MockTransport(answer)
                transport = AsyncPaymentTransport(key, policy=policy, transport=inner)
                async with httpx.AsyncClient(transport=transport, **options) as client:
                    await client.get("/x")

            asyncio.run(get())
    (receipt,) = list(ledger)
    assert receipt.outcome == "unanswered" and receipt.status == 402
    assert receipt.claims and receipt.tab_id == "0x1" and receipt.request_id == "0x1"
    assert policy.spent(default_asset(NETWORK).address) == 10_000
    assert ledger.last == receipt  # what `fourmica-x402 pay` reports after a failed call


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_paid_call_cancelled_before_its_answer_keeps_its_receipt_at_once(
    mode: str, tmp_path: Path
) -> None:
    """An asyncio call cancelled (a ``wait_for`` timeout) or a sync call interrupted (Ctrl-C)
    while the seller is still answering its paid request: the cancellation went past the flow,
    so the caller handling it found no receipt, and the budget's reservation was still pending,
    until the garbage collector closed the flow (at any moment, from any code, or never). It
    is kept ``unanswered`` and committed at once (docs/buyer.md, "Receipts")."""

    def tab(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            return httpx.Response(
                200, json={"tabId": "0x1", "nextReqId": "0x1", "userAddress": user}
            )
        if "payment-signature" not in request.headers:
            return httpx.Response(402, headers={"payment-required": _mock_offer()})
        return None

    def answer(request: httpx.Request) -> httpx.Response:
        found = tab(request)
        if found is None:
            raise KeyboardInterrupt  # the buyer pressed Ctrl-C while the seller worked
        return found

    async def slow(request: httpx.Request) -> httpx.Response:
        found = tab(request)
        if found is None:
            await asyncio.sleep(30)  # the seller still working when the caller gives up
            raise AssertionError("not cancelled")
        return found

    ledger = ReceiptLedger(tmp_path / "agent.db")
    policy = SpendingPolicy(ledger=ledger)
    key, options = TestBuyer.new().key, {"base_url": "http://seller.test"}

    def kept() -> None:  # while the caller still holds the error: no collector has run
        (receipt,) = list(ledger)
        assert receipt.outcome == "unanswered" and receipt.claims, receipt
        assert receipt.tab_id == "0x1" and receipt.request_id == "0x1"
        rows = ledger.connection.execute("SELECT state, amount FROM spending").fetchall()
        assert rows == [("committed", "10000")]

    if mode == "sync":
        transport = PaymentTransport(key, policy=policy, transport=httpx.MockTransport(answer))
        with httpx.Client(transport=transport, **options) as client:
            try:
                client.get("/x")
            except KeyboardInterrupt:
                kept()
            else:
                raise AssertionError("not interrupted")
        return

    async def get() -> None:
        transport = AsyncPaymentTransport(key, policy=policy, transport=httpx.MockTransport(slow))
        async with httpx.AsyncClient(transport=transport, **options) as client:
            try:
                await asyncio.wait_for(client.get("/x"), 0.5)
            except TimeoutError:
                kept()
            else:
                raise AssertionError("not cancelled")

    asyncio.run(get())


class RecordsPaid(CountsPaid):
    """Keeps the headers and body of each paid request."""

    def __init__(self) -> None:
        super().__init__()
        self.paid: list[tuple[dict[str, str], bytes]] = []

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if "payment-signature" in headers or "x-payment" in headers:
            self.paid.append((headers, body))
        return super().request(method, path, headers, body)


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["httpx", "httpx_async"], indirect=True)
def test_a_streamed_body_is_paid_for_with_one_framing(seller: Any, buyers: Any) -> None:
    """A caller's streamed body goes chunked; the paid retry sends it as bytes with its
    length, and without the caller's Transfer-Encoding (both at once is a request strict
    servers refuse, after the buyer signed)."""
    wire, parts = RecordsPaid(), [b'{"q": ', b"1}"]
    client = buyers.client(seller, funded(seller), wire=wire)
    json_type = {"content-type": "application/json"}
    if buyers.transport == "httpx":
        resp = client._sync.post("/echo", content=iter(parts), headers=json_type)
    else:

        async def body() -> Any:
            for part in parts:
                yield part

        resp = client._loop.run_until_complete(
            client._async.post("/echo", content=body(), headers=json_type)
        )
    assert resp.status_code == 200 and resp.json() == {"echo": {"q": 1}}
    ((headers, sent),) = wire.paid
    assert sent == b"".join(parts) and headers["content-length"] == str(len(sent))
    assert "transfer-encoding" not in headers


class UnreachableWhenPaid(CountsPaid):
    """No connection opens for the paid retries: the seller never sees them."""

    def __init__(self, timed_out: bool = False) -> None:
        super().__init__()
        self.timed_out = timed_out

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        super().request(method, path, headers, body)
        if self.paid_attempts:
            self.paid_attempts = 0
            error = harness.Unreachable(path)
            error.timed_out = self.timed_out
            raise error
        return headers, body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("timed_out", [False, True], ids=["refused", "connect-timeout"])
def test_a_paid_request_that_never_connected_is_not_counted(
    seller: Any, buyers: Any, timed_out: bool
) -> None:
    """The budget counts a guarantee that left the client; one whose connection could not
    even be opened never did: its reservation is released, its receipt says not sent. The
    caller gets its library's own error (a connect timeout is still a timeout)."""
    import requests

    buyer, ledger = funded(seller), ReceiptLedger()
    policy = SpendingPolicy(per_hour="$0.02")
    wire = UnreachableWhenPaid(timed_out)
    client = buyers.client(seller, buyer, wire=wire, policy=policy, ledger=ledger)
    for _ in range(3):  # more than the budget holds, were they counted
        with pytest.raises(Exception) as info:
            client.get("/premium")
        assert _dropped_connection(info.value), info.value
        timeout = (httpx.TimeoutException, requests.exceptions.Timeout)
        assert isinstance(info.value, timeout) == timed_out, repr(info.value)
    assert policy.spent(default_asset(NETWORK).address) == 0
    assert [r.outcome for r in ledger] == ["not_sent"] * 3
    assert all("could not be sent" in r.reason and r.claims for r in ledger)
    paid = buyers.client(seller, buyer, policy=policy).get("/premium")  # the budget is whole
    assert paid.status == 200 and policy.spent(default_asset(NETWORK).address) == 10_000
    assert seller.calls["/premium"] == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_paid_request_that_never_got_a_connection_from_the_pool_is_not_counted(
    mode: str,
) -> None:
    """A paid request that waited for a free connection of the client's pool past its pool
    timeout (httpx's PoolTimeout: every connection busy with the agent's other calls) never
    left the client, but was counted as spent and kept as 'unanswered', as if the seller held
    the guarantee. It is 'not_sent' now, and the budget is given back."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tab":
            user = json.loads(request.content)["userAddress"]
            return httpx.Response(
                200, json={"tabId": "0x1", "nextReqId": "0x1", "userAddress": user}
            )
        if "payment-signature" in request.headers:
            raise httpx.PoolTimeout("timed out waiting for a connection", request=request)
        return httpx.Response(402, headers={"payment-required": _mock_offer()})

    ledger = ReceiptLedger()
    policy = SpendingPolicy(per_hour="$0.02", ledger=ledger)
    key, options = TestBuyer.new().key, {"base_url": "http://seller.test"}
    for _ in range(3):  # more than the budget holds, were they counted
        with pytest.raises(httpx.PoolTimeout):
            if mode == "sync":
                transport = PaymentTransport(
                    key, policy=policy, transport=httpx.MockTransport(answer)
                )
                with httpx.Client(transport=transport, **options) as client:
                    client.get("/x")
            else:

                async def get() -> None:
                    inner = httpx.MockTransport(answer)
                    transport = AsyncPaymentTransport(key, policy=policy, transport=inner)
                    async with httpx.AsyncClient(transport=transport, **options) as client:
                        await client.get("/x")

                asyncio.run(get())
    assert policy.spent(default_asset(NETWORK).address) == 0
    assert [r.outcome for r in ledger] == ["not_sent"] * 3


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["requests"], indirect=True)
def test_a_connect_error_after_the_adapter_retried_a_sent_request_is_counted(
    seller: Any, buyers: Any
) -> None:
    """urllib3 reports its last try's error only: an inner adapter that retries reads may
    have sent the paid request (and the seller served it) before a retry met a refused
    connection. That guarantee left: it stays counted, as unanswered."""
    from urllib3.util.retry import Retry

    ledger, policy = ReceiptLedger(), SpendingPolicy()
    client = buyers.client(
        seller, funded(seller), wire=UnreachableWhenPaid(), policy=policy, ledger=ledger
    )
    client._session.get_adapter(client.base)._inner.max_retries = Retry(total=2)
    with pytest.raises(Exception) as info:
        client.get("/premium")
    assert _dropped_connection(info.value), info.value
    assert [r.outcome for r in ledger] == ["unanswered"]
    assert policy.spent(default_asset(NETWORK).address) == 10_000


class PaidThenRedirected(CountsPaid):
    """Answers the paid request with a redirect to the free route."""

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if path == "/premium" and status == 200:
            return 303, [("location", "/free")], b""
        return status, headers, body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
def test_a_paid_call_ending_after_a_redirect_carries_its_receipt(seller: Any, buyers: Any) -> None:
    """The response a redirected paid call ends with shows what the call paid (the ledger
    holds it once); a later free call shows nothing."""
    wire, ledger = PaidThenRedirected(), ReceiptLedger()
    client = buyers.client(seller, funded(seller), wire=wire, ledger=ledger, follow_redirects=True)
    got = client.get("/premium")
    assert got.status == 200 and got.json() == {"free": True}
    assert got.receipt is not None and got.receipt.outcome == "paid"
    assert got.receipt.status == 303 and got.receipt.amount == 10_000
    assert [r.guarantee_id for r in ledger] == [got.receipt.guarantee_id]
    assert wire.paid_attempts == 1 and seller.calls["/premium"] == 1
    assert client.get("/free").receipt is None


class RedirectedAfterPaying(CountsPaid):
    """The paid request is answered 303 to /free; once paid, the priced URL moves there too
    (a 301 instead of its 402)."""

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        moved = status == 200 or (status == 402 and self.paid_attempts)
        if path == "/premium" and moved:
            return (303 if status == 200 else 301), [("location", "/free")], b""
        return status, headers, body


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("buyers", ["httpx", "httpx_async"], indirect=True)
def test_a_request_sent_again_carries_no_receipt_of_its_earlier_call(
    seller: Any, buyers: Any
) -> None:
    """The receipt a redirected paid call leaves on its request was still there when the
    same request object was sent again, and a free answer reached through a redirect then
    showed the earlier call's receipt."""
    from fourmica_x402.client import RECEIPT_KEY

    wire, ledger = RedirectedAfterPaying(), ReceiptLedger()
    client = buyers.client(seller, funded(seller), wire=wire, ledger=ledger, follow_redirects=True)
    if buyers.transport == "httpx":
        request = client._sync.build_request("GET", "/premium")
        first, second = (client._sync.send(request) for _ in "ab")
    else:
        request = client._async.build_request("GET", "/premium")

        async def twice() -> list[httpx.Response]:
            return [await client._async.send(request) for _ in "ab"]

        first, second = client._loop.run_until_complete(twice())
    assert first.status_code == second.status_code == 200
    assert first.extensions[RECEIPT_KEY].outcome == "paid"
    assert RECEIPT_KEY not in second.extensions  # nothing was paid for it
    assert len(list(ledger)) == 1 and wire.paid_attempts == 1


def test_a_refunded_failure_is_reported_but_still_counted(seller: Any, buyers: Any) -> None:
    buyer = funded(seller)
    client = buyers.client(seller, buyer, policy=SpendingPolicy(per_minute="$0.01"))
    failed = client.get("/fail")
    assert failed.status == 500
    assert failed.receipt.outcome == "payment_failed"
    # The seller says it refunded; the buyer cannot verify that, so the budget counts it.
    with pytest.raises(BudgetExhausted):
        client.get("/premium")
    assert seller.core.position(buyer.address, network=NETWORK).locked == 0  # it did refund


def test_an_error_page_without_a_result_names_the_guarantee_and_confirms_no_charge(
    seller: Any, buyers: Any
) -> None:
    """A handler that raised: the server's own 500 carries no payment result (Django's error
    page goes through the middleware and says refunded). The receipt says no charge was
    confirmed and names the guarantee signed, for the buyer to look up."""
    buyer = funded(seller)
    failed = buyers.client(seller, buyer).get("/boom")
    assert failed.status == 500
    receipt = failed.receipt
    assert receipt.reason in (
        "seller answered 500 without a payment result: no charge confirmed",
        "seller answered 500 and refunded",
    )
    assert (receipt.outcome == "payment_failed") == receipt.reason.endswith("refunded")
    assert receipt.guarantee_id == _signed_id(receipt)
    assert seller.core.guarantee(receipt.guarantee_id).state == "voided"  # refunded


def test_the_certificate_of_a_payment_is_fetched_from_the_embedded_core(seller: Any) -> None:
    """``GET <prefix>/core/tabs/{tab_id}/guarantees/{req_id}`` on the seller's app (docs/buyer.md,
    "Certificates"), read with the buyer's fetch_certificate and checked with its claims."""
    payer = harness.Buyers("httpx")
    try:
        receipt = payer.client(seller, funded(seller)).get("/premium").receipt
    finally:
        payer.close()
    assert receipt.outcome == "paid" and receipt.core_url == "http://testserver/x402"
    with harness.plain(seller) as http:
        certificate = fetch_certificate(receipt, client=http)
        key = fetch_public_key(receipt.core_url, client=http)
        params = http.get("/x402/core/public-params").json()
        path = f"/x402/core/tabs/{receipt.tab_id}/guarantees/{receipt.request_id}"
        read = http.get(path)
        assert read.headers["cache-control"] == "no-store"
        assert read.json()["guarantee_id"] == receipt.guarantee_id
        assert http.post(path).status_code == 404  # a read only
        assert fetch_certificate(replace(receipt, request_id="0x99"), client=http) is None
    assert certificate == seller.core.certify(receipt.guarantee_id).to_json()
    domain = bytes.fromhex(params["active_guarantee_domain_separator"][2:])
    assert verify_certificate(certificate, receipt.claims, key, guarantee_domain=domain)
    assert type(receipt)(**{**receipt.to_dict(), "certificate": certificate}).verify_certificate(
        key
    )


# -- challenges as an official seller sends them (docs/buyer.md, "Challenges") ------------------


class OfficialExtra(Wire):
    """A seller on the official stack passes its configured ``extra`` through: numbers may be
    strings. ``values`` replaces them in every challenge (header and v1 body); the tab
    endpoint takes them as configured, as the official one does (it reads no policy)."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path.endswith("/tab"):
            data = json.loads(body)
            extra = data["paymentRequirements"]["extra"]
            for name in self.values:
                extra[name] = int(str(extra[name]), 0)
            body = json.dumps(data).encode()
        return headers, body

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        def set_values(required: Any) -> None:
            for offer in required["accepts"]:
                offer["extra"].update(self.values)

        return status, rewritten(headers, set_values) if status == 402 else headers, body


def test_numbers_as_strings_in_a_challenge_are_read(seller: Any, buyers: Any) -> None:
    buyer = funded(seller)
    wire = OfficialExtra(validationChainId="84532", minValidationScore="100")
    resp = buyers.client(seller, buyer, wire=wire).get("/premium")
    assert resp.status == 200 and resp.receipt.outcome == "paid"
    claims = json.loads(resp.receipt.claims)
    assert claims["validation_chain_id"] == 84532 and claims["min_validation_score"] == 100
    assert seller.core.guarantee(resp.receipt.guarantee_id).version == 2
    hexed = OfficialExtra(validationChainId="0x14a34")
    assert buyers.client(seller, buyer, wire=hexed).get("/premium").status == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validationChainId", "084532"),
        ("validationChainId", " 84532"),
        ("validationChainId", "+84532"),
        ("validationChainId", "84532.0"),
        ("validationChainId", "0x014a34"),
        ("validationChainId", "1"),  # well formed, but another chain than the network's
        ("minValidationScore", "0x64"),
        ("minValidationScore", "101"),
        ("minValidationScore", True),
        ("validatorAgentId", " 007"),  # read as 7, and signed
        ("validatorAgentId", "007"),
        ("validatorAgentId", "0x01"),
        ("validatorAgentId", "0x\u0661"),  # an Arabic-Indic one: int() reads it, as 1
        ("validatorAgentId", -1),
        ("validatorAgentId", 1 << 256),
        ("jobHash", "0x    " + "aa" * 30),  # bytes.fromhex alone skips the spaces: 30 bytes
        ("jobHash", "0x" + "aa" * 31 + "a "),
    ],
)
def test_bad_numbers_in_a_challenge_are_a_clean_refusal(
    seller: Any, buyers: Any, field: str, value: Any
) -> None:
    counting = Counting()
    wire = OfficialExtra(**{field: value})
    wire.request = counting.request  # type: ignore[method-assign]  # count; nothing gets there
    client = buyers.client(seller, funded(seller), wire=wire)
    with pytest.raises(PaymentFailed) as info:
        client.get("/premium")
    assert field in info.value.message and info.value.receipt.outcome == "payment_failed"
    assert (counting.total, counting.tabs, counting.paid_attempts) == (1, 0, 0)
    assert seller.calls["/premium"] == 0


def test_asset_case_cannot_split_a_budget() -> None:
    policy = SpendingPolicy(per_hour="$0.03")
    usdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    for spelling in (usdc, usdc.lower(), usdc.upper().replace("0X", "0x")):
        decision = policy.check(
            seller="0x" + "11" * 20, url="u", amount=20_000, asset=spelling, network=NETWORK
        )
        if decision.outcome == "paid":
            policy.commit(decision.reservation)  # type: ignore[arg-type]
    assert policy.spent(usdc) == 20_000  # only the first fitted


def _mock_offer() -> str:
    offer = {
        "scheme": "4mica-credit",
        "network": NETWORK,
        "asset": default_asset(NETWORK).address,
        "amount": "10000",
        "payTo": "0x" + "ab" * 20,
        "maxTimeoutSeconds": 300,
        "extra": {"tabEndpoint": "http://seller.test/tab"},
    }
    required = {"x402Version": 2, "accepts": [offer], "resource": {"url": "http://seller.test/x"}}
    return base64.b64encode(json.dumps(required).encode()).decode()


class _Tokens(httpx.Auth):
    """An Auth flow trying up to three tokens while the answer is 401."""

    def auth_flow(self, request: httpx.Request) -> Any:
        for token in ("a", "b", "c"):
            request.headers["authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401:
                return


@pytest.mark.parametrize(
    "behaviour",
    ["paid-302-then-hop-401", "paid-401-then-302-to-a-priced-hop", "paid-401-twice"],
)
def test_an_auth_flow_never_pays_one_call_twice(behaviour: str) -> None:
    """A seller choosing how to answer a paid call (a redirect to a 401, a 401 then a
    redirect to a priced URL, 401s until the Auth flow's third try) got a second guarantee
    signed within one ``client.get``. One call pays once (docs/buyer.md, "Redirects")."""
    paid: list[str] = []
    tab_ids = iter(range(1, 10))

    def answer(request: httpx.Request) -> httpx.Response:
        path, token = request.url.path, request.headers.get("authorization", "")
        if path == "/tab":
            user = json.loads(request.content)["userAddress"]
            return httpx.Response(
                200, json={"tabId": "0x1", "nextReqId": hex(next(tab_ids)), "userAddress": user}
            )
        if "payment-signature" in request.headers:
            paid.append(path)
            if behaviour == "paid-302-then-hop-401":
                return httpx.Response(302, headers={"location": "/y"})
            return httpx.Response(401)
        if behaviour == "paid-302-then-hop-401" and path == "/y":
            return httpx.Response(401)
        if behaviour == "paid-401-then-302-to-a-priced-hop" and path == "/x" and paid:
            return httpx.Response(302, headers={"location": "/y"})
        if behaviour == "paid-401-twice" and paid and token == "Bearer b":
            return httpx.Response(401)
        return httpx.Response(402, headers={"payment-required": _mock_offer()})

    policy = SpendingPolicy()
    transport = PaymentTransport(
        TestBuyer.new().key, policy=policy, transport=httpx.MockTransport(answer)
    )
    with (
        httpx.Client(
            transport=transport, base_url="http://seller.test", follow_redirects=True
        ) as client,
        pytest.raises(PaymentFailed, match="one call pays once"),
    ):
        client.get("/x", auth=_Tokens())
    assert len(paid) == 1 and policy.spent(default_asset(NETWORK).address) == 10_000


@pytest.mark.parametrize("call", ["tab", "params"])
def test_the_flows_own_calls_keep_the_clients_timeout(call: str) -> None:
    """The tab endpoint and the Core's public parameters are requests of the flow's making:
    httpx gave them no timeout, so a seller whose endpoint never answered hung the buyer."""
    import http.server
    import threading

    release = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/core/public-params"):
                release.wait(10)  # bounded
                return
            port = self.server.server_address[1]
            offer = json.loads(base64.b64decode(_mock_offer()))
            offer["accepts"][0]["extra"] = {"tabEndpoint": f"http://127.0.0.1:{port}/tab"}
            if call == "params":
                offer["accepts"][0]["extra"]["rpcUrl"] = f"http://127.0.0.1:{port}"
            self.send_response(402)
            self.send_header(
                "payment-required", base64.b64encode(json.dumps(offer).encode()).decode()
            )
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            release.wait(10)  # bounded: the tab endpoint never answers in time

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    transport = PaymentTransport(TestBuyer.new().key)
    url = f"http://127.0.0.1:{server.server_address[1]}/x"
    try:
        with httpx.Client(transport=transport, timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises((httpx.TimeoutException, PaymentFailed)):
                client.get(url)
            assert time.monotonic() - started < 5
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("slow", ["402", "tab"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_answer_sent_a_byte_at_a_time_ends_at_the_timeout(slow: str, mode: str) -> None:
    """httpx's timeout bounds each read: a seller sending one byte just in time held the
    buyer as long as it liked (a 1 MiB answer, a byte a second). An answer the flow reads
    must arrive whole within the read timeout (docs/buyer.md, "Challenges"). Each byte
    comes well within 1.5 s (httpx's own per-read timeout), even on a loaded machine."""
    import http.server
    import threading

    from fourmica_x402.client import AsyncPaymentTransport

    class Drip(http.server.BaseHTTPRequestHandler):
        def answer(self, status: int, headers: dict[str, str], drip: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if not drip:
                self.send_header("content-length", "0")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client hangs up
                for _ in range(40 if drip else 0):  # 8 s at most
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)

        def do_GET(self) -> None:
            offer = json.loads(base64.b64decode(_mock_offer()))
            tab = f"http://127.0.0.1:{self.server.server_address[1]}/tab"
            offer["accepts"][0]["extra"] = {"tabEndpoint": tab}
            header = base64.b64encode(json.dumps(offer).encode()).decode()
            self.answer(402, {"payment-required": header}, drip=slow == "402")

        def do_POST(self) -> None:
            self.answer(200 if slow == "tab" else 500, {}, drip=slow == "tab")

        def log_message(self, *args: Any) -> None:
            pass

    async def get_async(url: str) -> None:
        transport = AsyncPaymentTransport(TestBuyer.new().key)
        async with httpx.AsyncClient(transport=transport, timeout=1.5) as client:
            await client.get(url)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x"
    try:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout, match=r"did not arrive whole within 1\.5 s"):
            if mode == "sync":
                with httpx.Client(transport=PaymentTransport(TestBuyer.new().key)) as client:
                    client.get(url, timeout=1.5)
            else:
                asyncio.run(get_async(url))
        assert time.monotonic() - started < 6  # the whole answer would take 8 s
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_requests_takes_and_httpx_refuses_is_a_requests_error() -> None:
    """The requests adapter shows each request to the flow as an httpx request: a URL that
    requests accepts and httpx refuses (a redirect to http://999.1.1.1/x, say) raised
    ``httpx.InvalidURL`` out of ``session.get``, a traceback instead of the requests error a
    plain session raises for it."""
    import requests

    from fourmica_x402.client.requests_adapter import PaymentAdapter

    session = requests.Session()
    session.mount("http://", PaymentAdapter(TestBuyer.new().key))
    with session, pytest.raises(requests.exceptions.InvalidURL, match=r"999\.1\.1\.1"):
        session.get("http://999.1.1.1/x", timeout=5)


def test_the_requests_adapter_stops_reading_a_compressed_huge_answer_at_its_limit() -> None:
    """requests decoded a 402's whole body before the flow's 1 MiB limit looked at it: 400 KB
    of gzip cost 400 MiB of memory. The body is read in decoded chunks now."""
    import gzip
    import http.server
    import threading
    import tracemalloc

    import requests

    from fourmica_x402.client.requests_adapter import PaymentAdapter

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=1)

    class Bomb(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(402)
            self.send_header("content-encoding", "gzip")
            self.send_header("content-length", str(len(bomb)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client stops reading early
                self.wfile.write(bomb)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bomb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    session = requests.Session()
    session.mount("http://", PaymentAdapter(TestBuyer.new().key))
    tracemalloc.start()
    try:
        with pytest.raises(PaymentFailed, match="larger than"):
            session.get(f"http://127.0.0.1:{server.server_address[1]}/x", timeout=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        session.close()
        server.shutdown()
        server.server_close()
    assert peak < 16 * 1024 * 1024, peak  # not the 64 MiB it decodes to


class _Chunk(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body httpx has not read yet (a Response made with ``content=`` is read at once)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Any:
        yield self.data

    async def __aiter__(self) -> Any:
        yield self.data


def _seller(status: int, body: bytes, encoding: str) -> httpx.MockTransport:
    headers = {"content-encoding": encoding, "content-type": "application/json"}
    return httpx.MockTransport(
        lambda r: httpx.Response(status, headers=headers, stream=_Chunk(body))
    )


def _bomb(coding: str) -> bytes:
    """200 MiB of zeros in ``coding``, packed small without holding them."""
    import gzip
    import zlib

    if coding == "br":
        import brotli

        return bytes(brotli.compress(bytes(200 << 20), quality=1))
    if coding == "zstd":
        import zstandard

        packer = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join(packer.compress(bytes(1 << 20)) for _ in range(200)) + packer.flush()
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    inner = b"".join(packer.compress(bytes(1 << 20)) for _ in range(200)) + packer.flush()
    return gzip.compress(inner)  # gzip, gzip


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("coding", ["gzip, gzip", "br", "zstd"])
def test_httpx_transports_stop_unpacking_a_compressed_answer_at_the_limit(
    mode: str, coding: str
) -> None:
    """httpx unpacks a whole chunk at once: a 402 of a few kilobytes in ``gzip, gzip``
    (200 MiB inside) filled the buyer's memory before the 1 MiB limit looked at it; so did
    brotli and zstd, which httpx unpacks once their libraries are installed."""
    import tracemalloc

    from fourmica_x402.client import AsyncPaymentTransport, PaymentTransport

    bomb = _bomb(coding)
    assert len(bomb) < 256 * 1024
    key = TestBuyer.new().key
    tracemalloc.start()
    try:
        with pytest.raises(PaymentFailed, match="larger than 1048576 bytes"):
            if mode == "sync":
                sync = PaymentTransport(key, transport=_seller(402, bomb, coding))
                with httpx.Client(transport=sync) as client:
                    client.get("http://seller.test/premium")
            else:
                inner_transport = _seller(402, bomb, coding)

                async def call() -> None:
                    paying = AsyncPaymentTransport(key, transport=inner_transport)
                    async with httpx.AsyncClient(transport=paying) as client:
                        await client.get("http://seller.test/premium")

                asyncio.run(call())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak  # not the 200 MiB it unpacks to


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_an_answer_to_parse_that_does_not_unpack_is_a_clean_refusal(coding: str) -> None:
    from fourmica_x402.client import PaymentTransport

    paying = PaymentTransport(
        TestBuyer.new().key, transport=_seller(402, b"not packed at all", coding)
    )
    with httpx.Client(transport=paying) as client, pytest.raises(PaymentFailed, match="not valid"):
        client.get("http://seller.test/premium")


class CompressedChallenge(CountsPaid):
    """Sends its 402 answers compressed, as a gzip middleware in front of a seller does."""

    def __init__(self, coding: str) -> None:
        super().__init__()
        self.coding = coding

    def response(self, path: str, status: int, headers: Any, body: bytes) -> Any:
        if status != 402:
            return status, headers, body
        import gzip
        import zlib

        packed = gzip.compress(body) if self.coding == "gzip" else zlib.compress(body)
        if self.coding == "br":
            import brotli

            packed = brotli.compress(body)
        if self.coding == "zstd":
            import zstandard

            packed = zstandard.ZstdCompressor().compress(body)
        if self.coding == "raw deflate":
            packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            packed = packer.compress(body) + packer.flush()
        kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
        coding = "deflate" if "deflate" in self.coding else self.coding
        return status, [*kept, ("content-encoding", coding)], packed


@pytest.mark.parametrize("kind", ["starlette"])  # the client's side: one seller is enough
@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate", "br", "zstd"])
def test_a_compressed_402_answer_is_still_read_and_paid(
    seller: Any, buyers: Any, coding: str
) -> None:
    wire = CompressedChallenge(coding)
    client = buyers.client(seller, funded(seller), wire=wire)
    resp = client.get("/premium")
    assert resp.status == 200, resp.text
    assert wire.paid_attempts == 1


@pytest.mark.parametrize("field", ["tabEndpoint", "rpcUrl"])
@pytest.mark.parametrize("url", ["http://[::1/tab", "http://a\u3000b/tab"])
def test_a_seller_url_httpx_cannot_read_is_a_clean_refusal(field: str, url: str) -> None:
    """A URL the seller names that httpx cannot parse (a bad port or host) raised
    ``httpx.InvalidURL`` out of the client: neither a refusal nor an ``HTTPError``. A tab
    endpoint so named is no tab endpoint (refused); an rpcUrl so named is ignored."""
    from fourmica_x402.client import PaymentTransport

    required = json.loads(base64.b64decode(_mock_offer()))
    required["accepts"][0]["extra"][field] = url
    header = base64.b64encode(json.dumps(required).encode()).decode()

    signed: list[str] = []
    buyer = TestBuyer.new()

    def answer(request: httpx.Request) -> httpx.Response:
        if "payment-signature" in request.headers:
            signed.append(request.url.path)
        if request.url.path == "/tab":  # a tab: the flow goes on to the Core's parameters
            offer = required["accepts"][0]
            tab = {"tabId": "0x1", "userAddress": buyer.address, "nextReqId": "0x0"}
            tab |= {"recipientAddress": offer["payTo"], "assetAddress": offer["asset"]}
            tab |= {"startTimestamp": int(time.time()), "ttlSeconds": 3600}
            return httpx.Response(200, json=tab)
        return httpx.Response(402, headers={"payment-required": header})

    client = httpx.Client(
        transport=PaymentTransport(buyer.key, transport=httpx.MockTransport(answer))
    )
    with pytest.raises(PaymentRefused) as refused:
        client.get("http://seller.test/x")
    assert refused.value.receipt.outcome in ("refused", "payment_failed")
    # no tab endpoint: nothing signed; an rpcUrl ignored (as if absent): this mock then
    # answers the paid retry 402 again
    assert signed == ([] if field == "tabEndpoint" else ["/x"])


def test_a_seller_clock_a_little_ahead_does_not_refuse_a_new_tabs_first_payment(
    seller: Any, buyers: Any
) -> None:
    """A new tab starts at the seller's clock; the buyer signed its own. With the seller's a
    second or two ahead (within the Core's skew), the first payment on every new tab was
    refused, ``timestamp_outside_tab``. The buyer signs no earlier than the tab's start."""
    seller.clock.advance(2)
    resp = buyers.client(seller, funded(seller)).get("/premium")
    assert resp.status == 200 and resp.receipt.outcome == "paid"
    claims = json.loads(resp.receipt.claims)
    assert claims["timestamp"] <= seller.clock() + 5  # inside the Core's skew
    assert seller.core.audit() == []


@pytest.mark.parametrize("kind", ["starlette", "flask"])
def test_a_password_in_the_url_paid_is_kept_out_of_the_receipts(
    seller: Any, tmp_path: Path
) -> None:
    """A URL's password (``https://user:secret@…``) went into the receipt, so into the ledger
    file, its JSON-lines export and the approval callback's request: files an audit reads.
    They keep the URL with its password masked, as ``fourmica-x402 pay`` prints it."""
    buyer = funded(seller)
    ledger = ReceiptLedger(tmp_path / "receipts.db")
    asked: list[str] = []

    def approve(request: Any) -> bool:
        asked.append(request.url)
        return True

    policy = SpendingPolicy(approve=approve, approve_new_sellers=True)
    payer = PaymentTransport(
        buyer.key, policy=policy, ledger=ledger, transport=harness._inner(seller, is_async=False)
    )
    urls = {  # a query's credential (an API's ``?api_key=``) likewise
        "http://agent:s3cret-pw@testserver/premium": "http://agent:***@testserver/premium",
        "http://testserver/premium?q=1&api_key=s3cret-pw": "http://testserver/premium?q=1&api_key=***",
    }
    with httpx.Client(transport=payer) as client:
        receipts = [client.get(url).extensions["fourmica_receipt"] for url in urls]
    assert [(r.outcome, r.url) for r in receipts] == [("paid", u) for u in urls.values()]
    assert asked == list(urls.values())[:1]  # a new seller's first payment only
    ledger.export_jsonl(tmp_path / "audit.jsonl")
    assert b"s3cret-pw" not in (tmp_path / "audit.jsonl").read_bytes()
    assert [r.url for r in ledger] == list(urls.values())


def test_core_parameters_a_refused_payment_was_signed_with_are_read_again() -> None:
    """The Core's signing parameters were read once per Core and kept for the process's life.
    One wrong answer (a man in the middle on a plain-HTTP ``rpcUrl``, a Core whose domain
    changed) had every later payment signed for the wrong domain: each refused after payment,
    each counted against the budget, until a restart. A paid request answered 402 now drops
    the parameters it was signed with; the next payment reads them again."""
    from flask import Flask, request

    from fourmica_x402.client import PaymentTransport

    app, served, offer = Flask(__name__), [], json.loads(base64.b64decode(_mock_offer()))
    offer["accepts"][0]["extra"]["rpcUrl"] = "http://seller.test"
    header = base64.b64encode(json.dumps(offer).encode()).decode()

    @app.post("/tab")
    def tab() -> Any:
        user = request.get_json()["userAddress"]
        return {"tabId": "0x1", "nextReqId": hex(len(served) + 1), "userAddress": user}

    @app.get("/core/public-params")
    def params() -> Any:
        served.append("forged" if not served else "1")  # the first answer is not the Core's
        return {"chain_id": 84532, "eip712_name": "4Mica", "eip712_version": served[-1]}

    @app.get("/x")
    def paid() -> Any:
        if "payment-signature" not in request.headers:
            return "{}", 402, {"payment-required": header}
        if served[-1] != "1":  # signed for a domain that is not the Core's: refused
            return "{}", 402, {"payment-required": header}
        return "served"

    policy = SpendingPolicy()
    payer = PaymentTransport(
        TestBuyer.new().key, policy=policy, transport=httpx.WSGITransport(app=app)
    )
    with httpx.Client(transport=payer) as client:
        with pytest.raises(PaymentFailed, match="refused after payment"):
            client.get("http://seller.test/x")
        assert client.get("http://seller.test/x").text == "served"
    assert served == ["forged", "1"]
    assert policy.spent(default_asset(NETWORK).address) == 2 * 10_000  # both signatures left


def test_a_seller_naming_a_new_core_url_each_time_does_not_grow_the_buyer() -> None:
    """The Core's parameters are kept per Core URL, and the URL is the seller's to name: one
    naming a new one on every offer (``/c1``, ``/c2``, …) added an entry per payment for the
    life of the process. At most 64 are kept; a forgotten one is read again."""
    from flask import Flask, request

    from fourmica_x402.client import PaymentTransport

    app, calls, offer = Flask(__name__), [0], json.loads(base64.b64decode(_mock_offer()))

    @app.post("/tab")
    def tab() -> Any:
        return {
            "tabId": "0x1",
            "nextReqId": hex(calls[0]),
            "userAddress": request.json["userAddress"],
        }  # type: ignore[index]

    @app.get("/c<int:n>/core/public-params")
    def params(n: int) -> Any:
        return {"chain_id": 84532, "eip712_name": "4Mica", "eip712_version": "1"}

    @app.get("/x")
    def paid() -> Any:
        if "payment-signature" in request.headers:
            return "served"
        calls[0] += 1
        offer["accepts"][0]["extra"]["rpcUrl"] = f"http://seller.test/c{calls[0]}"
        return (
            "{}",
            402,
            {"payment-required": base64.b64encode(json.dumps(offer).encode()).decode()},
        )

    payer = PaymentTransport(TestBuyer.new().key, transport=httpx.WSGITransport(app=app))
    with httpx.Client(transport=payer) as client:
        for _ in range(100):
            assert client.get("http://seller.test/x").text == "served"
    assert 0 < len(payer.flow._params) <= 64
