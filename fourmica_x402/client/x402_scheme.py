"""Pay 4Mica sellers with x402's own client: the ``4mica-credit`` scheme for ``x402`` ≥ 2.20.

x402's client (``pip install "fourmica-x402[x402]"``) refuses, under its spend controls, any
offer whose asset its scheme cannot name. This scheme names it (``find_default_asset``, for
the dollar tokens of :mod:`fourmica_x402.networks`), so spend controls stay on and keep
applying their caps; then it opens the tab, signs a G-v1 or G-v2 guarantee with our signer
and applies our :class:`~.policy.SpendingPolicy` when given one (docs/x402-client.md;
docs/protocol.md, "Paying").

    from x402 import x402ClientSync
    from x402.http.clients import x402_requests
    from fourmica_x402.client import SpendingPolicy
    from fourmica_x402.client.x402_scheme import register

    client = x402ClientSync()
    register(client, KEY, policy=SpendingPolicy(per_hour="$2"))  # every network, x402 v1 + v2
    client.set_spend_controls({"max_amount_per_payment": "$0.05"})  # x402's caps still apply
    answer = x402_requests(client).get("https://api.example.com/premium")

For x402's async client (``x402Client``) :func:`register` installs
:class:`AsyncFourMicaCreditScheme`: the tab and the Core's signing parameters are fetched in
x402's before-payment hook, awaited, so the event loop never waits on the network (x402 calls
``create_payment_payload`` synchronously; here it only signs). Refusals raise
:class:`~fourmica_x402.errors.PaymentRefused` subclasses, which x402's HTTP clients wrap in
their ``PaymentError`` (``__cause__``). Every signed guarantee counts against the policy's
budgets, whatever the seller then does with it, as with the httpx transports. The payment's
steps are the transports' own (:class:`~._steps.Buyer`): the same checks, messages and
receipts, in the same ledger (the policy's, by default).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import coincurve
import httpx
from pydantic import ValidationError

from .._eth import parse_address
from ..errors import BudgetExhausted, ConfigurationError, PaymentFailed
from ..networks import _DOLLAR_SYMBOLS, find_asset, get_network, parse_amount
from ..networks import networks as known_networks
from ..wire import SCHEME, PaymentRequirements, PaymentRequirementsV1, ResourceInfo
from ._steps import Buyer, Prepared, Steps, offered, run_async, run_sync
from .flow import cost
from .heads import bound
from .keys import BuyerKey
from .policy import ApprovalRequest, SpendingPolicy
from .receipts import ReceiptLedger

__all__ = ["AsyncFourMicaCreditScheme", "FourMicaCreditScheme", "register"]


@dataclass(frozen=True)
class _Pending:
    """What the before-payment hook prepared, for ``create_payment_payload`` to sign."""

    scheme: FourMicaCreditScheme
    requirements: Any  # the x402 object it was prepared for
    prepared: Prepared


# The before-payment hook hands its preparation to create_payment_payload through the context:
# x402 runs both for one payment in one thread (sync) or one task (async).
_pending: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "fourmica_x402_scheme_pending", default=None
)


class FourMicaCreditScheme(Buyer):
    """``4mica-credit`` for x402's sync client (``x402ClientSync``), x402 v1 and v2.

    ``key``: hex, 32 bytes or a :class:`~.keys.BuyerKey`; ``policy``: our spending policy,
    applied before a tab is opened; ``ledger``: where receipts go (default: the policy's
    ledger when it has one, else an in-memory one, as with the transports); ``http``: an
    ``httpx.Client`` for the tab endpoint and the Core API (one is made, with ``timeout``,
    when not given).
    """

    scheme = SCHEME

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(key, policy=policy, ledger=ledger)
        self._timeout = timeout
        self._http = http
        bound(http)  # the heads of its answers bounded in time (docs/buyer.md, "Challenges")
        self._own_http: httpx.Client | None = None
        self._lock = threading.Lock()
        # x402 (≥ 2.20) runs a registered scheme's ``scheme_hooks`` around its payloads.
        self.scheme_hooks: dict[str, Any] = {
            "on_before_payment_creation": self._before,
            "on_payment_creation_failure": self._failed,
        }

    # -- what x402 calls -----------------------------------------------------------------------

    def find_default_asset(self, asset: str, network: str) -> dict[str, Any] | None:
        """x402's asset lookup: the dollar tokens we know, so its USD caps apply to them.

        Other tokens answer None: x402 then pays them only when its ``allowed_assets`` names
        them (with an atomic cap), never by reading a dollar cap as so many tokens.
        """
        token = find_asset(str(network), str(asset))
        if token is None or token.symbol.upper() not in _DOLLAR_SYMBOLS:
            return None
        return {
            "asset": token.address,
            "name": token.symbol,
            "symbol": token.symbol,
            "decimals": token.decimals,
        }

    def create_payment_payload(self, requirements: Any, context: Any = None) -> dict[str, Any]:
        """The inner payload ``{"claims", "signature", "scheme"}`` for ``requirements``.

        Prepared by the before-payment hook when x402 ran it (the usual case), else here.
        ``context`` (x402 ≥ 2.25) carries x402's resolved cap, checked once more.
        """
        pending = self._take(requirements)
        prepared = pending.prepared if pending else self._run(self._prepare_for(requirements, None))
        try:
            cap = getattr(context, "max_amount_per_payment", None)
            if cap is not None and parse_amount(prepared.offer.amount) > int(cap):
                reason = (
                    f"price {prepared.offer.amount} is over x402's spend cap {cap} (atomic units)"
                )
                raise self._refuse(BudgetExhausted, prepared.receipt, reason)
            signed, receipt = self._sign(prepared)
        except BaseException:
            self._spent(prepared.reservation, False)
            raise
        # The signature leaves the client now: it counts, whatever the seller does with it.
        # x402 sends it and reads the seller's answer; the receipt says what left (no status).
        self._spent(prepared.reservation, True)
        self.ledger.append(replace(receipt, outcome="paid", finished_at=time.time()))
        return signed.to_json()

    def _before(self, context: Any) -> None:
        self._discard()
        requirements = context.selected_requirements
        steps = self._prepare_for(requirements, context.payment_required)
        _pending.set(_Pending(self, requirements, self._run(steps)))

    def _failed(self, context: Any) -> None:
        self._discard()

    # -- the payment: the buyer's shared steps, from x402's requirements -----------------------

    def _prepare_for(self, requirements: Any, required: Any) -> Steps[Prepared]:
        offer, version, resource = self._offer_of(requirements, required)
        url = resource.url if resource is not None else ""
        receipt = offered(self._started(url), offer, version)
        try:
            get_network(offer.network)
        except ConfigurationError:
            raise self._refuse(PaymentFailed, receipt, f"unknown network {offer.network}") from None
        if offer.scheme != SCHEME:
            raise self._refuse(PaymentFailed, receipt, f"not a {SCHEME} offer: {offer.scheme}")
        return (yield from self._prepare(offer, version, resource, receipt))

    def _offer_of(
        self, requirements: Any, required: Any
    ) -> tuple[PaymentRequirements, int, ResourceInfo | None]:
        """Our model of x402's requirements (v1 or v2), the x402 version, and the resource."""
        data = (
            requirements.model_dump(by_alias=True, exclude_none=True)
            if hasattr(requirements, "model_dump")
            else dict(requirements)
        )
        try:
            if "maxAmountRequired" in data:
                v1 = PaymentRequirementsV1.model_validate(data)
                return v1.to_v2(), 1, ResourceInfo(url=v1.resource)
            offer = PaymentRequirements.model_validate(data)
            resource = getattr(required, "resource", None)
            if resource is not None and hasattr(resource, "model_dump"):
                resource = ResourceInfo.model_validate(
                    resource.model_dump(by_alias=True, exclude_none=True)
                )
            return offer, 2, resource if isinstance(resource, ResourceInfo) else None
        except (ValidationError, ValueError, TypeError) as exc:
            reason = f"malformed payment requirements: {exc}"
            raise self._refuse(PaymentFailed, self._started(""), reason) from None

    def _approver(self) -> Callable[[ApprovalRequest], Any] | None:
        return self.policy.approve if self.policy is not None else None

    # -- the sync driver's I/O -----------------------------------------------------------------

    def _run(self, steps: Steps[Prepared]) -> Prepared:
        return run_sync(steps, self._send, self._approver())

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._client().send(request, stream=True)  # read bounded by the steps
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None

    def _client(self) -> httpx.Client:
        if self._http is not None:
            return self._http
        with self._lock:
            if self._own_http is None:
                self._own_http = httpx.Client(timeout=self._timeout)
                bound(self._own_http)
            return self._own_http

    def close(self) -> None:
        """Close the HTTP client this scheme made (not one it was given)."""
        with self._lock:
            own, self._own_http = self._own_http, None
        if own is not None:
            own.close()

    # -- hand-over between the hook and create_payment_payload ---------------------------------

    def _take(self, requirements: Any) -> _Pending | None:
        pending = _pending.get()
        if pending is None or pending.scheme is not self:
            return None
        _pending.set(None)
        if pending.requirements is requirements or pending.requirements == requirements:
            return pending
        self._spent(pending.prepared.reservation, False)
        return None

    def _discard(self) -> None:
        """Give back a preparation x402 never used (another hook aborted, or creation failed)."""
        stale = _pending.get()
        if stale is not None and stale.scheme is self:
            _pending.set(None)
            self._spent(stale.prepared.reservation, False)


class AsyncFourMicaCreditScheme(FourMicaCreditScheme):
    """``4mica-credit`` for x402's async client (``x402Client``): the same payment, its I/O
    awaited in x402's before-payment hook. ``http`` is an ``httpx.AsyncClient`` (one per
    event loop is made when not given)."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(key, policy=policy, ledger=ledger, timeout=timeout)
        self._ahttp = http
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._aclients = weakref.WeakKeyDictionary()
        self.scheme_hooks["on_before_payment_creation"] = self._abefore

    async def _abefore(self, context: Any) -> None:
        self._discard()
        requirements = context.selected_requirements
        steps = self._prepare_for(requirements, context.payment_required)
        prepared = await run_async(steps, self._asend, self._approver())
        _pending.set(_Pending(self, requirements, prepared))

    async def _asend(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._aclient().send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None

    def _aclient(self) -> httpx.AsyncClient:
        if self._ahttp is not None:
            return self._ahttp
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(timeout=self._timeout)
        return client

    async def aclose(self) -> None:
        """Close the HTTP clients this scheme made (not one it was given)."""
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()


def register(
    client: Any,
    key: str | bytes | coincurve.PrivateKey | BuyerKey | FourMicaCreditScheme,
    *,
    policy: SpendingPolicy | None = None,
    ledger: ReceiptLedger | None = None,
    networks: Iterable[str] | None = None,
    x402_versions: Iterable[int] = (1, 2),
) -> FourMicaCreditScheme:
    """Register ``4mica-credit`` on an x402 client (sync or async) and return the scheme.

    For every network :mod:`fourmica_x402.networks` knows (or ``networks``), for x402 v1
    and v2 (or ``x402_versions``). Given a key, makes the scheme that fits the client (with
    ``policy`` and ``ledger``); with a policy, also registers an x402 policy that skips 4mica
    offers on networks or assets the spending policy does not allow, so x402 can choose
    another offer.
    """
    is_async = inspect.iscoroutinefunction(getattr(client, "create_payment_payload", None))
    if isinstance(key, FourMicaCreditScheme):
        if policy is not None or ledger is not None:
            raise ConfigurationError("give the policy and ledger to the scheme, not to register()")
        scheme = key
    else:
        kind = AsyncFourMicaCreditScheme if is_async else FourMicaCreditScheme
        scheme = kind(key, policy=policy, ledger=ledger)
    if isinstance(scheme, AsyncFourMicaCreditScheme) and not is_async:
        raise ConfigurationError(
            "AsyncFourMicaCreditScheme needs x402's async client (x402Client); "
            "use FourMicaCreditScheme with x402ClientSync"
        )
    versions = set(x402_versions)
    if not versions or versions - {1, 2}:
        raise ConfigurationError(f"x402_versions must be 1 and/or 2, got {sorted(versions)}")
    for network in networks if networks is not None else [n.caip2 for n in known_networks()]:
        if 2 in versions:
            client.register(network, scheme)
        if 1 in versions:
            client.register_v1(network, scheme)
    spending = scheme.policy
    if spending is not None:

        def allowed_offers(version: int, offers: list[Any]) -> list[Any]:
            return [
                offer
                for offer in offers
                if offer.scheme != SCHEME or spending.allows(str(offer.network), str(offer.asset))
            ]

        client.register_policy(allowed_offers)
    client.register_policy(_cheapest_first)
    return scheme


def _cheapest_first(version: int, offers: list[Any]) -> list[Any]:
    """x402 pays the first offer its policies leave: ours go to it cheapest first, as our
    transports choose, each in a place the seller gave one of ours (docs/x402-client.md)."""
    ours = iter(sorted((offer for offer in offers if offer.scheme == SCHEME), key=_rank))
    return [next(ours) if offer.scheme == SCHEME else offer for offer in offers]


def _rank(offer: Any) -> tuple[int, Fraction]:
    """An offer's place: by value, as the transports rank offers; last, one they pass over (an
    amount of 0, one that does not parse, no payTo, a network we do not know)."""
    amount = getattr(offer, "amount", None) or getattr(offer, "max_amount_required", None)
    try:
        value = parse_amount(amount)
        get_network(str(offer.network))
        parse_address(offer.pay_to)
    except (ValueError, AttributeError, ConfigurationError):
        return 3, Fraction(0)
    return cost(str(offer.network), str(offer.asset), value) if value else (3, Fraction(0))


def _unreachable(exc: httpx.HTTPError) -> ValueError:
    """A failed exchange with the tab endpoint or the Core, as the steps' reading problem: the
    payment is refused (PaymentFailed, with its receipt), which x402 wraps like any refusal."""
    return ValueError(str(exc) or type(exc).__name__)
