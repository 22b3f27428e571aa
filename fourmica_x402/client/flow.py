"""The buyer's decision flow, written once and driven by the sync and async transports.

On a 402: read the challenge (v2 header first, v1 body otherwise) → choose an
offer → apply the spending policy (before signing) → open a tab → read the
signing parameters (cached per Core URL) → sign G-v1 or G-v2 → retry **once**
→ attach a receipt. The flow yields what it needs (:class:`Send`, :class:`Read`,
:class:`Approve`); the drivers in :mod:`.transport` perform it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

import coincurve
import httpx

from ..errors import (
    BlockedSeller,
    BudgetExhausted,
    InsufficientCollateral,
    MalformedPayment,
    NeedsApproval,
    PaymentFailed,
    PaymentRefused,
)
from ..guarantee import Eip712Domain, GuaranteeClaims, ValidationPolicy, address_of, sign_claims
from ..networks import get_network, parse_amount
from ..wire import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    SCHEME,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequiredV1,
    PaymentRequirements,
    ResourceInfo,
    decode_header_json,
    decode_payment_required,
    encode_header,
)
from .policy import ApprovalRequest, SpendingPolicy
from .receipts import Receipt, ReceiptLedger

__all__ = ["Approve", "BuyerFlow", "Read", "Send"]

RECEIPT_KEY = "fourmica_receipt"
_REFUSALS = {
    "needs_approval": NeedsApproval,
    "blocked_seller": BlockedSeller,
    "budget_exhausted": BudgetExhausted,
    "insufficient_collateral": InsufficientCollateral,
}


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Read:
    response: httpx.Response


@dataclass(frozen=True)
class Approve:
    request: ApprovalRequest


Flow = Generator[Send | Read | Approve, Any, httpx.Response]


@dataclass(frozen=True)
class _Challenge:
    offer: PaymentRequirements
    version: int
    resource: ResourceInfo | None


class BuyerFlow:
    """Everything a paying client knows: its key, its policy, its receipts."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
    ) -> None:
        if isinstance(key, str):
            key = bytes.fromhex(key[2:] if key.startswith(("0x", "0X")) else key)
        self._key = key if isinstance(key, coincurve.PrivateKey) else coincurve.PrivateKey(key)
        self.address = address_of(self._key)
        self.policy = policy or SpendingPolicy()
        self.ledger = ledger if ledger is not None else ReceiptLedger()
        self._params: dict[str, tuple[str, str, int]] = {}
        self._params_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"BuyerFlow(address={self.address})"

    def run(self, request: httpx.Request) -> Flow:
        response = yield Send(request)
        if response.status_code != 402:
            return response
        started = time.time()
        url = str(request.url)
        task = self.policy.current_task()
        base = Receipt(
            outcome="payment_failed", url=url, started_at=started, task=task.name if task else None
        )
        yield Read(response)  # reading to the end also closes it (sync or async alike)
        try:
            challenge = self._challenge(response)
        except MalformedPayment as exc:
            raise self._refuse(
                PaymentFailed, replace(base, reason=f"malformed challenge: {exc.message}")
            ) from None
        offer = challenge.offer
        amount = int(offer.amount)
        base = replace(
            base,
            seller=offer.pay_to,
            amount=amount,
            asset=offer.asset,
            network=offer.network,
            x402_version=challenge.version,
        )
        decision = self.policy.check(
            seller=offer.pay_to, url=url, amount=amount, asset=offer.asset, network=offer.network
        )
        if decision.outcome == "needs_approval":
            assert decision.approval is not None
            approved = bool((yield Approve(decision.approval))) if self.policy.approve else False
            if approved:
                decision = self.policy.check(
                    seller=offer.pay_to,
                    url=url,
                    amount=amount,
                    asset=offer.asset,
                    network=offer.network,
                    approved=True,
                )
        if decision.outcome != "paid":
            raise self._refuse(
                _REFUSALS[decision.outcome],
                replace(base, outcome=decision.outcome, reason=decision.detail),
            )
        assert decision.reservation is not None
        sent: list[bool] = []
        try:
            paid = yield from self._pay(request, challenge, base, sent)
        except BaseException:
            (self.policy.commit if sent else self.policy.release)(decision.reservation)
            raise
        # A signed guarantee has left the client: it counts against the budgets whatever the
        # seller says became of it (a refund or a refusal cannot be verified from here, and
        # the seller still holds a signature it could settle later).
        self.policy.commit(decision.reservation)
        return paid

    def _pay(
        self, request: httpx.Request, challenge: _Challenge, base: Receipt, sent: list[bool]
    ) -> Flow:
        offer = challenge.offer
        tab_url = offer.extra.get("tabEndpoint")
        if not isinstance(tab_url, str) or not tab_url.startswith(("http://", "https://")):
            raise self._refuse(PaymentFailed, replace(base, reason="challenge has no tabEndpoint"))
        body = {
            "x402Version": challenge.version,
            "userAddress": self.address,
            "paymentRequirements": offer.to_dict(),
        }
        if challenge.resource is not None and challenge.version == 2:
            body["resource"] = challenge.resource.to_dict()
        tab_response = yield Send(httpx.Request("POST", tab_url, json=body))
        yield Read(tab_response)
        tab = self._tab(tab_response, offer, base)
        base = replace(base, request_id=hex(tab[1]), tab_id=hex(tab[0]))
        name, version, chain_id = yield from self._signing_params(offer, base)
        policy = ValidationPolicy.from_extra(offer.extra, chain_id)
        fields: dict[str, Any] = dict(
            user=self.address,
            recipient=offer.pay_to,
            tab_id=tab[0],
            req_id=tab[1],
            amount=int(offer.amount),
            asset=offer.asset,
            timestamp=int(time.time()),
        )
        claims = (
            GuaranteeClaims.v2(**fields, policy=policy) if policy else GuaranteeClaims.v1(**fields)
        )
        signed = sign_claims(claims, self._key, Eip712Domain(chain_id, name, version))
        if challenge.version == 2:
            payload: Any = PaymentPayload(
                payload=signed.to_json(), accepted=offer, resource=challenge.resource
            )
            header = (PAYMENT_SIGNATURE_HEADER, encode_header(payload))
        else:
            payload = PaymentPayloadV1(
                scheme=offer.scheme, network=offer.network, payload=signed.to_json()
            )
            header = (X_PAYMENT_HEADER, encode_header(payload))
        headers = [
            (k, v) for k, v in request.headers.multi_items() if k.lower() not in ("content-length",)
        ]
        retry = httpx.Request(
            request.method,
            request.url,
            headers=[*headers, header],
            content=request.content,
            extensions=request.extensions,
        )
        sent.append(True)
        paid = yield Send(retry)
        result = self._result(paid)
        if paid.status_code == 402:
            yield Read(paid)
            reason = (
                (result or {}).get("errorReason")
                or self._challenge_error(paid)
                or "refused after payment"
            )
            kind = InsufficientCollateral if reason == "insufficient_collateral" else PaymentFailed
            raise self._refuse(kind, replace(base, outcome=kind.reason, status=402, reason=reason))
        refunded = result is not None and result.get("success") is False
        receipt = replace(
            base,
            outcome="payment_failed" if refunded else "paid",
            status=paid.status_code,
            finished_at=time.time(),
            guarantee_id=(result or {}).get("transaction") or None,
            reason=f"seller answered {paid.status_code} and refunded" if refunded else None,
        )
        self.ledger.append(receipt)
        paid.extensions = {**paid.extensions, RECEIPT_KEY: receipt}
        return paid

    # -- pieces --------------------------------------------------------------------------------

    def _challenge(self, response: httpx.Response) -> _Challenge:
        header = response.headers.get(PAYMENT_REQUIRED_HEADER)
        if header is not None:
            required = decode_payment_required(header)
            offers, version, resource = list(required.accepts), 2, required.resource
        else:
            try:
                body = PaymentRequiredV1.model_validate_json(response.content)
            except ValueError:
                raise MalformedPayment(
                    "402 without a PAYMENT-REQUIRED header or a v1 JSON body"
                ) from None
            offers = [r.to_v2() for r in body.accepts]
            version = 1
            resource = ResourceInfo(url=body.accepts[0].resource) if body.accepts else None
        usable = []
        for offer in offers:
            try:
                get_network(offer.network)
                parse_amount(offer.amount)
            except Exception:
                continue
            if offer.scheme == SCHEME and self.policy.allows(offer.network, offer.asset):
                usable.append(offer)
        if not usable:
            raise MalformedPayment("no offer this client can pay (scheme, network or asset)")
        return _Challenge(min(usable, key=lambda o: int(o.amount)), version, resource)

    def _tab(
        self, response: httpx.Response, offer: PaymentRequirements, base: Receipt
    ) -> tuple[int, int]:
        try:
            data = response.json()
            if response.status_code != 200 or not isinstance(data, dict):
                raise ValueError(
                    data.get("error")
                    if isinstance(data, dict)
                    else f"status {response.status_code}"
                )
            tab_id = parse_amount(data.get("tabId", data.get("tab_id")))
            req_id = parse_amount(data.get("nextReqId", data.get("next_req_id")))
            user = str(data.get("userAddress", data.get("user_address", "")))
            recipient = data.get("recipientAddress", data.get("recipient_address"))
            asset = data.get("assetAddress", data.get("asset_address"))
        except (ValueError, TypeError) as exc:
            raise self._refuse(
                PaymentFailed, replace(base, reason=f"tab endpoint failed: {exc}")
            ) from None
        if user.lower() != self.address.lower():
            raise self._refuse(PaymentFailed, replace(base, reason="tab is for another user"))
        if recipient is not None and str(recipient).lower() != offer.pay_to.lower():
            raise self._refuse(
                PaymentFailed, replace(base, reason="tab names another recipient than payTo")
            )
        if asset is not None and str(asset).lower() != offer.asset.lower():
            raise self._refuse(PaymentFailed, replace(base, reason="tab names another asset"))
        return tab_id, req_id

    def _signing_params(
        self, offer: PaymentRequirements, base: Receipt
    ) -> Generator[Any, Any, tuple[str, str, int]]:
        chain_id = get_network(offer.network).chain_id
        rpc = offer.extra.get("rpcUrl")
        if not isinstance(rpc, str) or not rpc.startswith(("http://", "https://")):
            return "4mica", "1", chain_id
        with self._params_lock:
            cached = self._params.get(rpc)
        if cached is None:
            response = yield Send(httpx.Request("GET", rpc.rstrip("/") + "/core/public-params"))
            yield Read(response)
            try:
                data = response.json()
                cached = (
                    str(data["eip712_name"]),
                    str(data["eip712_version"]),
                    int(data["chain_id"]),
                )
            except (ValueError, KeyError, TypeError):
                raise self._refuse(
                    PaymentFailed,
                    replace(base, reason="could not read the Core's signing parameters"),
                ) from None
            with self._params_lock:
                self._params[rpc] = cached
        if cached[2] != chain_id:
            raise self._refuse(
                PaymentFailed, replace(base, reason="the Core signs for another chain")
            )
        return cached

    @staticmethod
    def _result(response: httpx.Response) -> dict[str, Any] | None:
        value = response.headers.get(PAYMENT_RESPONSE_HEADER) or response.headers.get(
            X_PAYMENT_RESPONSE_HEADER
        )
        if not value:
            return None
        try:
            return decode_header_json(value)
        except MalformedPayment:
            return None

    @staticmethod
    def _challenge_error(response: httpx.Response) -> str | None:
        header = response.headers.get(PAYMENT_REQUIRED_HEADER)
        try:
            if header:
                return decode_payment_required(header).error
            return json.loads(response.content).get("error")
        except Exception:
            return None

    def _refuse(self, kind: type[PaymentRefused], receipt: Receipt) -> PaymentRefused:
        receipt = replace(receipt, outcome=kind.reason, finished_at=time.time())
        self.ledger.append(receipt)
        return kind(receipt.reason or kind.reason, receipt=receipt)
