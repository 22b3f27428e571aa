"""The buyer's steps, written once: from a chosen offer to a signed guarantee.

Both buyers are made of them: :class:`~.flow.BuyerFlow` (behind the httpx transports and the
``requests`` adapter) and the x402 client scheme (:mod:`.x402_scheme`). :class:`Buyer` holds
what they share (key, spending policy, receipts ledger, the Cores' signing parameters) and the
steps: read the offer's validation policy (leniently, as the official buyer does), apply the
spending policy **before** anything is signed, open the tab, read the Core's parameters, sign
G-v1 or G-v2 (docs/protocol.md, "Paying"; docs/buyer.md). Every refusal is in the ledger first.

A step is a generator yielding its I/O: :class:`Send` (answered with the response, its head
within the read timeout: :mod:`.heads`), :class:`Read` (read it to its end, at most 1 MiB),
:class:`Approve` (the approval callback's verdict). :func:`run_sync` and :func:`run_async` are
the one sync and one async driver; a reading problem in a step is a ``ValueError`` saying what
went wrong, which the step turns into a :class:`~fourmica_x402.errors.PaymentFailed` refusal."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import coincurve
import httpx

from .._json import loads
from .._urls import safe_url
from ..errors import (
    BlockedSeller,
    BudgetExhausted,
    InsufficientCollateral,
    NeedsApproval,
    PaymentFailed,
    PaymentRefused,
)
from ..guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    sign_claims,
)
from ..networks import get_network, parse_amount
from ..wire import PaymentRequirements, ResourceInfo
from ._approval import answered, approval
from .answers import aread_answer, error_said, http_url, read_answer
from .certificates import public_key_bytes
from .heads import asend_head, send_head
from .jobs import ahead_of
from .keys import BuyerKey
from .policy import ApprovalRequest, SpendingPolicy
from .receipts import Receipt, ReceiptLedger

__all__ = [
    "Approve",
    "Buyer",
    "CoreParams",
    "Prepared",
    "Read",
    "Send",
    "Steps",
    "core_url",
    "offered",
    "run_async",
    "run_sync",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Read:
    response: httpx.Response


@dataclass(frozen=True)
class Approve:
    request: ApprovalRequest


Steps = Generator[Send | Read | Approve, Any, T]

_REFUSALS: dict[str, type[PaymentRefused]] = {
    "needs_approval": NeedsApproval,
    "blocked_seller": BlockedSeller,
    "budget_exhausted": BudgetExhausted,
    "insufficient_collateral": InsufficientCollateral,
}


@dataclass(frozen=True)
class CoreParams:
    """What the buyer reads once per Core (``GET <rpcUrl>/core/public-params``): the EIP-712
    domain to sign with and, to check certificates, the Core's key and guarantee domain."""

    domain: Eip712Domain
    public_key: bytes | None = None
    guarantee_domain: bytes | None = None


@dataclass(frozen=True)
class Prepared:
    """A payment ready to sign: the spending policy said yes, the tab is open, the Core known."""

    offer: PaymentRequirements
    version: int
    resource: ResourceInfo | None
    policy: ValidationPolicy | None
    tab: tuple[int, int, int]  # its id, the request id, its start (0: not said)
    params: CoreParams
    reservation: int | None
    receipt: Receipt


def core_url(offer: PaymentRequirements) -> str | None:
    """The Core API the offer names (``rpcUrl``), when it is an http(s) URL."""
    return http_url(offer.extra.get("rpcUrl"))


def offered(receipt: Receipt, offer: PaymentRequirements, version: int) -> Receipt:
    """``receipt`` naming the offer being paid."""
    return replace(
        receipt,
        seller=offer.pay_to,
        amount=parse_amount(offer.amount),
        asset=offer.asset,
        network=offer.network,
        x402_version=version,
    )


class Buyer:
    """What a paying client holds, and the steps every buyer takes.

    ``key``: hex, 32 bytes, or a :class:`~.keys.BuyerKey`. ``ledger`` defaults to the
    policy's ledger when it has one (receipts and budgets in one file), else an in-memory one."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None,
        ledger: ReceiptLedger | None,
    ) -> None:
        buyer = BuyerKey(key)
        self._key = buyer.private_key
        self.address = buyer.address
        self.policy = policy
        if ledger is None and policy is not None:
            ledger = policy.ledger
        self.ledger = ledger if ledger is not None else ReceiptLedger()
        self._params: dict[str, CoreParams] = {}
        self._params_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(address={self.address})"

    # -- receipts and refusals ------------------------------------------------------------------

    def _started(self, url: str) -> Receipt:
        task = self.policy.current_task() if self.policy is not None else None
        return Receipt(
            outcome="payment_failed",
            url=safe_url(url),  # the receipt goes to files an audit reads (docs/buyer.md)
            started_at=time.time(),
            task=task.name if task is not None else None,
        )

    def _refuse(self, kind: type[PaymentRefused], receipt: Receipt, reason: str) -> PaymentRefused:
        """The refusal to raise, its receipt written to the ledger."""
        receipt = replace(receipt, outcome=kind.reason, reason=reason, finished_at=time.time())
        self.ledger.append(receipt)
        return kind(reason or kind.reason, receipt=receipt)

    def _spent(self, reservation: int | None, spent: bool) -> None:
        """Commit a reservation once its signed guarantee left the client, else release it."""
        if reservation is not None and self.policy is not None:
            (self.policy.commit if spent else self.policy.release)(reservation)

    # -- the steps -------------------------------------------------------------------------------

    def _prepare(
        self,
        offer: PaymentRequirements,
        version: int,
        resource: ResourceInfo | None,
        receipt: Receipt,
    ) -> Steps[Prepared]:
        """From a chosen offer to a payment ready to sign. A reservation of the budget is
        released when a later step fails; the caller commits or releases it after signing."""
        if not parse_amount(offer.amount):  # the Core refuses to guarantee 0 (invalid_amount)
            raise self._refuse(PaymentFailed, receipt, "the offer asks an amount of 0")
        try:  # read now: a challenge no guarantee can be signed for costs no tab and no budget
            chain = get_network(offer.network).chain_id
            policy = ValidationPolicy.from_extra(offer.extra, chain, lenient=True)
        except ValueError as exc:
            why = f"invalid validation policy: {exc}"
            raise self._refuse(PaymentFailed, receipt, why) from None
        reservation = None
        if self.policy is not None:
            reservation = yield from self._decide(self.policy, offer, receipt)
        try:
            try:
                tab = yield from self._open_tab(offer, version, resource, 2 if policy else 1)
                receipt = replace(receipt, tab_id=hex(tab[0]), request_id=hex(tab[1]))
                params = yield from self._signing_params(offer)
            except ValueError as exc:
                raise self._refuse(PaymentFailed, receipt, str(exc)) from None
        except BaseException:
            self._spent(reservation, False)
            raise
        return Prepared(offer, version, resource, policy, tab, params, reservation, receipt)

    def _decide(
        self, policy: SpendingPolicy, offer: PaymentRequirements, receipt: Receipt
    ) -> Steps[int]:
        """Apply the spending policy (asking the approval callback when it says so); the
        reservation, or the refusal raised."""
        if not policy.allows(offer.network, offer.asset):
            reason = f"the spending policy allows no {offer.asset} on {offer.network}"
            raise self._refuse(PaymentFailed, receipt, reason)
        check = functools.partial(
            policy.check,
            seller=offer.pay_to,
            url=receipt.url,
            amount=parse_amount(offer.amount),
            asset=offer.asset,
            network=offer.network,
            ahead=ahead_of(offer),
        )
        decision = check()
        if decision.outcome == "needs_approval" and policy.approve is not None:
            assert decision.approval is not None
            if (yield Approve(decision.approval)) is True:  # "no" or {"approved": False}: no
                decision = check(approved=True)
        if decision.outcome != "paid" or decision.reservation is None:
            kind = _REFUSALS.get(decision.outcome, PaymentFailed)
            raise self._refuse(kind, receipt, decision.detail)
        return decision.reservation

    def _open_tab(
        self, offer: PaymentRequirements, version: int, resource: ResourceInfo | None, signs: int
    ) -> Steps[tuple[int, int, int]]:
        """``POST <tabEndpoint>``: ``(tab id, request id, start)``, checked against the offer. Its
        ``x402Version`` is the guarantee version to sign (docs/protocol.md, "Paying")."""
        url = http_url(offer.extra.get("tabEndpoint"))
        if url is None:
            raise ValueError("challenge has no tabEndpoint")
        body: dict[str, Any] = {
            "x402Version": signs,
            "userAddress": self.address,
            "paymentRequirements": offer.to_dict(),
        }
        if resource is not None and version == 2:
            body["resource"] = resource.to_dict()
        response = yield from _call(httpx.Request("POST", url, json=body))
        if response.status_code != 200:  # its status, and what it says (JSON or not)
            said = error_said(response)
            raise ValueError(f"tab endpoint failed: status {response.status_code}: {said}")
        try:
            data = loads(response.content)
        except (ValueError, RecursionError):
            data = None  # not the parser's words: they mean nothing to the buyer
        try:
            if not isinstance(data, dict):
                raise ValueError("its answer is not a JSON object")
            tab_id = parse_amount(data.get("tabId", data.get("tab_id")))
            req_id = parse_amount(data.get("nextReqId", data.get("next_req_id")))
            start = data.get("startTimestamp", data.get("start_timestamp"))
            user = str(data.get("userAddress", data.get("user_address", "")))
            recipient = data.get("recipientAddress", data.get("recipient_address"))
            asset = data.get("assetAddress", data.get("asset_address"))
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"tab endpoint failed: {str(exc)[:200]}") from None
        if user.lower() != self.address.lower():
            raise ValueError("tab is for another user")
        if recipient is not None and str(recipient).lower() != offer.pay_to.lower():
            raise ValueError("tab names another recipient than payTo")
        if asset is not None and str(asset).lower() != offer.asset.lower():
            raise ValueError("tab names another asset")
        return tab_id, req_id, start if type(start) is int else 0

    def _signing_params(self, offer: PaymentRequirements) -> Steps[CoreParams]:
        """The Core's parameters for ``offer`` (read once per Core URL, then cached)."""
        chain_id = get_network(offer.network).chain_id
        rpc = core_url(offer)
        if rpc is None:  # no Core API advertised: the default domain (docs/protocol.md)
            return CoreParams(Eip712Domain(chain_id))
        with self._params_lock:
            known = self._params.get(rpc)
        if known is None:
            request = httpx.Request("GET", rpc.rstrip("/") + "/core/public-params")
            response = yield from _call(request)
            known = _read_params(response)
            with self._params_lock:  # a seller naming a new Core URL each time: bounded
                if len(self._params) >= 64:
                    self._params.clear()
                self._params[rpc] = known
        if known.domain.chain_id != chain_id:
            raise ValueError("the Core signs for another chain")
        return known

    def _sign(self, prepared: Prepared) -> tuple[SignedGuarantee, Receipt]:
        """Sign exactly what the offer asks on the tab: G-v2 when it carries a validation
        policy, else G-v1. The receipt gains the signed claims and the Core's URL."""
        (offer, (tab_id, req_id, start)), now = (prepared.offer, prepared.tab), int(time.time())
        fields: dict[str, Any] = dict(
            user=self.address,
            recipient=offer.pay_to,
            tab_id=tab_id,
            req_id=req_id,
            amount=parse_amount(offer.amount),
            asset=offer.asset,
            timestamp=start if now < start <= now + 60 else now,  # not before the tab's start
        )
        try:
            claims = (
                GuaranteeClaims.v2(**fields, policy=prepared.policy)
                if prepared.policy
                else GuaranteeClaims.v1(**fields)
            )
            signed = sign_claims(claims, self._key, prepared.params.domain)
        except ValueError as exc:
            raise self._refuse(PaymentFailed, prepared.receipt, str(exc)) from None
        receipt = replace(
            prepared.receipt,
            claims=json.dumps(signed.to_json()["claims"], separators=(",", ":")),
            core_url=core_url(offer),
        )
        return signed, receipt


def _read_params(response: httpx.Response) -> CoreParams:
    try:
        data = loads(response.content)
        chain_id = data["chain_id"]
        if isinstance(chain_id, str) and chain_id.isascii() and chain_id.isdigit():
            chain_id = int(chain_id)
        if not isinstance(chain_id, int) or isinstance(chain_id, bool):
            raise TypeError("chain_id is not an integer")
        params = CoreParams(
            Eip712Domain(chain_id, str(data["eip712_name"]), str(data["eip712_version"]))
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValueError("could not read the Core's signing parameters") from None
    try:  # only needed to check certificates: a Core may leave them out
        domain = data.get("active_guarantee_domain_separator")
        return replace(
            params,
            public_key=public_key_bytes(data["public_key"]),
            guarantee_domain=bytes.fromhex(domain[2:]) if domain else None,
        )
    except (ValueError, KeyError, TypeError):
        return params


def _call(request: httpx.Request) -> Steps[httpx.Response]:
    """One of the flow's own idempotent calls (the tab endpoint, the Core's parameters), read
    to its end. A connection that closes before any answer is tried once more: a kept-alive
    connection the server closed as the request left, or a restarted worker. A timeout is
    not retried (docs/buyer.md, "Dropped connections")."""
    try:
        response = yield Send(request)
    except (httpx.NetworkError, httpx.RemoteProtocolError, ConnectionError):
        response = yield Send(request)  # httpx's timeouts are none of these
    yield Read(response)
    return response


# -- the drivers -------------------------------------------------------------------------------


def run_sync(
    steps: Steps[T],
    send: Callable[[httpx.Request], httpx.Response],
    approve: Callable[[ApprovalRequest], Any] | None,
    read: Callable[[httpx.Response], Any] = read_answer,
) -> T:
    """Perform the steps' I/O with blocking calls; an async approval callback is run to its
    end. An exception raised by a call, Ctrl-C too, is thrown back into the steps at once."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(answer)
        except StopIteration as stop:
            done: T = stop.value
            return done
        answer, error = None, None
        try:
            if isinstance(step, Send):
                answer = send_head(send, step.request)
                answer.request = step.request  # its reader's deadline: the read timeout
            elif isinstance(step, Read):
                read(step.response)
            else:
                answer = answered(approve, step.request) if approve else False
        except BaseException as exc:  # a cancelled call too: what left is kept now
            error = exc


async def run_async(
    steps: Steps[T],
    send: Callable[[httpx.Request], Awaitable[httpx.Response]],
    approve: Callable[[ApprovalRequest], Any] | None,
) -> T:
    """Perform the steps' I/O on an event loop (an approval callback may be sync or async)."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(answer)
        except StopIteration as stop:
            done: T = stop.value
            return done
        answer, error = None, None
        try:
            if isinstance(step, Send):
                answer = await asend_head(send, step.request)
                answer.request = step.request  # its reader's deadline: the read timeout
            elif isinstance(step, Read):
                await aread_answer(step.response)
            else:  # a sync callback: in a thread, one payment at a time (docs/buyer.md)
                answer = await approval(approve, step.request)
        except BaseException as exc:  # a cancelled call too: what left is kept now
            error = exc
