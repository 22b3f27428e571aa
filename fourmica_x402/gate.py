"""The payment gate: the seller's flow, written once for every framework.

For a protected route (docs/architecture.md): match → challenge | decode → match offer →
settle (the Core locks the buyer's collateral) → record → run the handler →
result header → delivery marker, validation score or refund.

**One flow, two drivers.** The flow is a set of generators that *yield* the
I/O they need as :class:`Call` objects and receive the results back (the
pattern of httpx's ``auth_flow``). :meth:`Gate.run_sync` drives them for WSGI
and sync Django; :meth:`Gate.run_async` for ASGI and async Django. Adapters
only translate their framework's request into a :class:`RequestView`, call
:meth:`Gate.before`, and wrap the response with :meth:`Gate.response_start`
and :meth:`Gate.finish`.

Hooks (sync or async):

- ``on_protected_request(request, route)`` → None to continue, ``GRANT`` to
  serve without payment, ``DENY`` (403) or a :class:`Response`;
- ``before_settle(request, payload, requirements)`` may raise a PaymentError;
- ``after_settle(request, result)``;
- ``on_failure(request, error)``;
- ``after_delivery(payment, record_outcome)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

from . import coreapi
from .config import PaymentConfig
from .core.store import Conflict, Tx, WouldBlock
from .errors import (
    ConfigurationError,
    FourmicaError,
    GuaranteeRejected,
    MalformedPayment,
    PaymentError,
    Reason,
    Throttled,
    Unavailable,
)
from .facilitator import Facilitator, LocalFacilitator, SettleResult, signed_from_payload
from .guarantee import SignedGuarantee, ValidationPolicy, guarantee_id
from .networks import find_asset, get_network
from .records import Records
from .routes import Endpoint, Offer, Route, RouteTable
from .wire import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequired,
    PaymentRequiredV1,
    PaymentRequirements,
    ResourceInfo,
    SettleResponse,
    decode_payment_header,
    encode_header,
)

__all__ = [
    "DENY",
    "GRANT",
    "PAID_CACHE_CONTROL",
    "BodyTap",
    "Call",
    "Endpoint",
    "Gate",
    "PassThrough",
    "Payment",
    "RequestView",
    "Response",
]

log = logging.getLogger("fourmica_x402.gate")
T = TypeVar("T")

GRANT = object()
DENY = object()
_EXPOSE = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"
#: Times the event loop tries the embedded Core's write itself, waiting (without blocking)
#: for this process's other writers in between, before handing it to a worker thread.
_LOOP_TRIES = 3
_DELIVERY_TAG = "delivery"
#: What a paid response tells caches (docs/protocol.md, "Paid responses"): a shared cache or
#: a CDN must never hand paid content to an unpaid client.
PAID_CACHE_CONTROL = "private, no-store"


# -- the neutral request and response ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestView:
    """What the gate needs of a request, built by each adapter."""

    method: str
    #: The path the framework routes on (percent-decoded).
    path: str
    #: The path as sent, still percent-encoded (for ambiguity checks); "" when unknown.
    raw_path: str
    query: str
    #: Lower-cased names; repeated headers appear repeatedly.
    headers: tuple[tuple[str, str], ...]
    scheme: str = "http"
    host: str = "localhost"
    client: str | None = None
    #: Reads the request body (sync or async); only the gate's own endpoints call it.
    read_body: Callable[[], Any] | None = None
    #: The framework's router: returns the :class:`Endpoint` it resolves this request to, or
    #: None when it will not serve it (404, 405, a redirect). None here = an app with no
    #: router, priced by its raw path. Called at most once, only for requests the gate prices.
    resolve: Callable[[], Endpoint | None] | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    @classmethod
    def json(cls, status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, [("content-type", "application/json"), *(headers or [])], body)


class BodyTap:
    """Watches a response body stream by: hashes it, and keeps a copy for idempotent replay.

    Adapters feed it each chunk as it passes; nothing is buffered unless replay is on,
    and then only up to ``limit`` bytes.
    """

    __slots__ = ("_hash", "_kept", "_limit", "_size")

    def __init__(self, keep: bool, limit: int) -> None:
        self._hash = hashlib.sha256()
        self._kept: list[bytes] | None = [] if keep else None
        self._limit, self._size = limit, 0

    def feed(self, chunk: bytes) -> bytes:
        self._hash.update(chunk)
        if self._kept is not None:
            self._size += len(chunk)
            if self._size <= self._limit:
                self._kept.append(chunk)
        return chunk

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    @property
    def body(self) -> bytes | None:
        """The whole body when it was kept and small enough; else None."""
        if self._kept is None or self._size > self._limit:
            return None
        return b"".join(self._kept)


class PassThrough:
    """Not ours to charge: run the app as if the gate were not there."""


PASS = PassThrough()


class Call(NamedTuple):
    """One piece of I/O the flow needs.

    ``fn`` is called by the sync driver (an awaitable result is run to completion);
    the async driver prefers ``afn``, runs a ``blocking`` ``fn`` in a worker thread,
    and calls a non-blocking one directly (awaiting it if it returns an awaitable).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    afn: Callable[..., Awaitable[Any]] | None = None
    blocking: bool = True


Flow = Generator[Call, Any, Any]


# -- what a paid request carries ---------------------------------------------------------------


@dataclass
class Payment:
    """The payment context handed to a paid handler (``request.state.payment``, ``g.payment``…)."""

    payer: str
    amount: int
    asset: str
    network: str
    pay_to: str
    guarantee_id: str | None
    request_id: str | None
    tab_id: str | None
    x402_version: int
    guarantee_version: int
    route: str
    record_id: int | None = None
    settled: bool = True
    #: The framework's own object for the route this payment was settled for (an
    #: :attr:`Endpoint.key`); per-handler markers check it is theirs.
    endpoint: Any = field(default=None, repr=False, compare=False)
    #: Makes the certificate when asked (embedded Core); None when the facilitator gave it.
    _certify: Callable[[], dict[str, str]] | None = field(default=None, repr=False)
    _made: dict[str, str] | None = field(default=None, repr=False)

    @property
    def certificate(self) -> dict[str, str] | None:
        """The Core's BLS certificate for this payment's guarantee.

        Made on demand (~0.5 ms of BLS signing, then stored by the Core): a paid request
        never pays for it unless its handler asks (docs/architecture.md, "Certificates").
        """
        if self._made is None and self._certify is not None:
            try:
                self._made = self._certify()
            except Exception:  # the guarantee was voided meanwhile, the store is closing…
                log.exception("could not make the certificate of %s", self.guarantee_id)
                return None
        return self._made


@dataclass
class _Paid:
    """State carried from :meth:`Gate.before` to :meth:`Gate.finish`."""

    payment: Payment
    request: RequestView
    requirements: PaymentRequirements
    payload: PaymentPayload | PaymentPayloadV1
    header_hash: str
    result: SettleResult | None
    policy: ValidationPolicy | None
    delivery_policy: bool
    replay: Response | None = None
    settle_failed: SettleResult | None = None
    route: Route | None = None


# -- throttling --------------------------------------------------------------------------------


class _Throttle:
    """Counts invalid payments per key in a sliding window (in-process)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str | None) -> float:
        """Seconds until ``key`` may try again (0: not blocked)."""
        if not key:
            return 0.0
        now = time.monotonic()
        with self._lock:
            hits = [t for t in self._hits.get(key, ()) if t > now - self.window]
            self._hits[key] = hits
            if len(hits) >= self.limit:
                return hits[0] + self.window - now
        return 0.0

    def hit(self, *keys: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > 100_000:  # bounded memory under a flood of addresses
                self._hits.clear()
            for key in keys:
                if key:
                    self._hits.setdefault(key, []).append(now)


class _Reconciler:
    """Voids, in the background, guarantees a remote facilitator may have accepted unanswered.

    Runs only while intents are open (:meth:`Gate.reconcile` does the work); woken at
    once when a new one is filed, and at startup when a previous process left some.
    """

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        self._wake.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fourmica-reconciler", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        records = self._gate.records
        while True:
            try:
                self._gate.reconcile()
                due = records.next_followup_due()
            except Exception:  # the records database may be down too: try again later
                log.exception("reconciling payments in doubt failed")
                due = time.time() + 5
            with self._lock:
                if due is None and not self._wake.is_set():
                    self._thread = None
                    return
            self._wake.clear()
            self._wake.wait(min(max((due or 0) - time.time(), 0.0), 5.0))


# -- the gate ----------------------------------------------------------------------------------


class Gate:
    """The seller's payment flow for one app. Build once per app (it holds the Core)."""

    def __init__(self, config: PaymentConfig) -> None:
        self.config = config
        self.routes = RouteTable(
            config.routes, network=config.network, pay_to=config.pay_to, asset=config.asset
        )
        self.core = None
        if config.facilitator is None:
            from .core import Core
            from .facilitator import LocalFacilitator

            core = config.core if not isinstance(config.core, str) else Core(config.core)
            self.core = core
            self.facilitator: Facilitator = LocalFacilitator(core)
        else:
            self.facilitator = config.facilitator
        records = config.records
        if records is None:
            if self.core is None:
                raise FourmicaError("with a remote facilitator, set records= to a database URL")
            records = Records(self.core.store)
        self.records = records if isinstance(records, Records) else Records(records)
        self._throttle = _Throttle(config.throttle_failures, config.throttle_window)
        self.tap = lambda: BodyTap(config.idempotent_replay, config.replay_body_limit)
        self._reconciler = _Reconciler(self)
        if self.records.next_followup_due() is not None:
            self._reconciler.kick()  # a previous process left voids to do
        self._prefix = config.prefix
        self._tab_path = (
            urlsplit(config.tab_endpoint).path if config.tab_endpoint else config.prefix + "/tab"
        )
        from .tabs import TabGuard

        #: The tab endpoint's recipients and limits on new tabs (docs/operations.md).
        self._tabs = TabGuard(config, self.routes)

    @property
    def _shared(self) -> bool:
        """Records in the embedded Core's own database: a payment's record is written in the
        acceptance's transaction and completed in the validation's (one commit each)."""
        return (
            self.core is not None
            and isinstance(self.facilitator, LocalFacilitator)
            and self.facilitator.core is self.core
            and self.records.store is self.core.store
        )

    def add_route(self, key: str, value: Any) -> Route:
        """Price one more route (``key`` and ``value`` as in the route table)."""
        return self.routes.add(key, value)

    def check_routes(self, templates: Any) -> None:
        """Fail (ConfigurationError) when a table entry names no route of the app.

        ``templates``: ``(template, methods)`` of every route the framework knows, methods
        None when any. Adapters call it at start-up; a typo would otherwise leave a route free.
        """
        templates = list(templates)
        missing = self.routes.unmatched(templates)
        if missing:
            known = sorted({t for t, _ in templates})
            shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
            raise ConfigurationError(
                f"priced route(s) {', '.join(repr(m) for m in missing)} name no route of this app "
                f"(its routes: {shown or 'none'}); a route-table entry names a route template "
                "the framework knows, e.g. 'GET /items/:id' for /items/{id}"
            )

    def refuses_websocket(self, request: RequestView) -> bool:
        """A WebSocket on a priced route: refused (no paid-WebSocket mode exists yet).

        ``request`` describes the handshake (method GET)."""
        if request.path == self._tab_path or request.path.startswith(self._prefix + "/"):
            return False
        if request.resolve is not None:
            endpoint = request.resolve()
            return endpoint is not None and self.routes.for_endpoint("GET", endpoint) is not None
        return self.routes.match("GET", request.path) is not None

    @staticmethod
    def marker_refusal(
        payment: Payment | None, key: Any, method: str, methods: frozenset[str] | None
    ) -> tuple[int, str, str] | None:
        """Why a per-handler marker must not run its handler: ``(status, reason, message)``,
        or None when ``payment`` was made for this request on this route (``key``).

        A method the marker does not price is answered 405 (never run unpaid); a missing or
        foreign payment fails closed (503) with a log line naming the cause.
        """
        alias = "GET" if method.upper() == "HEAD" else method.upper()
        if methods is not None and alias not in methods:
            return 405, "method_not_allowed", "method not allowed"
        if payment is None:
            cause = "no payment middleware ran for it, or it did not price this route"
        elif payment.endpoint is not key:
            cause = f"the payment was made for another route ({payment.route})"
        else:
            return None
        log.error("a paid handler was reached without a payment for it: %s", cause)
        return 503, Reason.PAYMENT_NOT_ENFORCED, "payments are not enforced here; not served"

    # -- drivers ---------------------------------------------------------------------------------

    @staticmethod
    def run_sync(flow: Flow) -> Any:
        """Drive a flow with blocking I/O (WSGI, sync Django)."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                call = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                result = call.fn(*call.args)
                if inspect.isawaitable(result):
                    result = _run_coroutine(result)
            except Exception as exc:  # handed back to the flow, which decides
                result, error = None, exc

    @staticmethod
    async def run_async(flow: Flow) -> Any:
        """Drive a flow on an event loop (ASGI, async Django)."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                call = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                if call.afn is not None:
                    result = await call.afn(*call.args)
                elif call.blocking:
                    result = await asyncio.to_thread(call.fn, *call.args)
                else:
                    result = call.fn(*call.args)
                    if inspect.isawaitable(result):
                        result = await result
            except Exception as exc:
                result, error = None, exc

    # -- before the handler ----------------------------------------------------------------------

    def before(self, request: RequestView) -> Flow:
        """Decide: pass through, answer (402, 4xx, 503, our endpoints), or run the paid handler.

        Returns :data:`PASS`, a :class:`Response`, or the state to hand to the later steps.
        """
        method = request.method.upper()
        if request.path == self._tab_path:
            return (yield from self._tab(request))
        if self.core is not None and (
            request.path == self._prefix or request.path.startswith(self._prefix + "/")
        ):
            return (yield from self._endpoint(request))
        if method == "OPTIONS":
            return PASS
        endpoint = None
        if request.resolve is not None:  # price what the framework's router resolved
            endpoint = request.resolve()
            route = None if endpoint is None else self.routes.for_endpoint(method, endpoint)
            if route is not None and _ambiguous(request):
                return self._error_response(400, "ambiguous_path", "ambiguous request path")
        else:  # a router-less app: its raw path
            route = self.routes.match(method, request.path)
            if _ambiguous(request) and (
                route is not None or self._matches_variant(method, request)
            ):
                return self._error_response(400, "ambiguous_path", "ambiguous request path")
        if route is None:
            return PASS
        if self.config.on_protected_request is not None:
            verdict = yield Call(self.config.on_protected_request, (request, route), blocking=False)
            if verdict is GRANT:
                return PASS
            if verdict is DENY:
                return self._error_response(403, "denied", "access denied")
            if isinstance(verdict, Response):
                return verdict
        try:
            requirements = yield from self._requirements(route, request)
        except Exception as exc:  # a price or payTo callable failed: nothing to charge safely
            log.exception("could not price %s", route.key)
            return self._error_response(
                500, "pricing_failed", f"could not price this request: {exc}"
            )
        if method == "HEAD" and (
            request.header_values(PAYMENT_SIGNATURE_HEADER)
            or request.header_values(X_PAYMENT_HEADER)
        ):  # a response without a body is never charged: keep the payment for the GET
            return self._challenge(
                request, route, requirements, Reason.HEAD_NOT_CHARGED, version=_version_of(request)
            )
        try:
            return (yield from self._paid(request, route, requirements, endpoint))
        except Unavailable as exc:
            yield from self._failure(request, exc)
            return self._error_response(503, exc.reason, exc.message, exc.headers())
        except FourmicaError as exc:  # e.g. a remote facilitator's 4xx in a shape of its own
            yield from self._failure(request, exc)
            if exc.status < 500:
                return self._challenge(
                    request, route, requirements, exc.reason, version=_version_of(request)
                )
            return self._error_response(503, exc.reason, exc.message)

    def _paid(
        self,
        request: RequestView,
        route: Route,
        requirements: list[PaymentRequirements],
        endpoint: Endpoint | None = None,
    ) -> Flow:
        v2_values = request.header_values(PAYMENT_SIGNATURE_HEADER)
        v1_values = request.header_values(X_PAYMENT_HEADER)
        if not v2_values and not v1_values:
            return self._challenge(request, route, requirements, Reason.PAYMENT_REQUIRED)
        wait = max(self._throttle.blocked(request.client), 0.0)
        if wait > 0:
            return self._throttled(wait)
        try:
            if len(v2_values) + len(v1_values) != 1:
                raise MalformedPayment("send exactly one payment header")
            version = 2 if v2_values else 1
            header = (v2_values or v1_values)[0]
            payload = decode_payment_header(header, expected_version=version)
            chosen = self._match(payload, requirements)
            signed = signed_from_payload(payload, chosen)
        except PaymentError as exc:
            self._throttle.hit(request.client)
            yield from self._failure(request, exc)
            return self._challenge(
                request, route, requirements, exc.reason, version=_version_of(request)
            )
        payer = signed.claims.user_address
        wait = self._throttle.blocked(payer)
        if wait > 0:
            return self._throttled(wait)
        header_hash = hashlib.sha256(header.encode("ascii", "replace")).hexdigest()
        if self.config.idempotent_replay:
            found = yield Call(self.records.by_header, (header_hash,))
            if found is not None:
                if (found[0].route, found[0].method) != (route.key, request.method.upper()):
                    return self._challenge(  # a payment replays only the request it paid for
                        request, route, requirements, Reason.REPLAYED_REQUEST_ID, version=version
                    )
                return self._replayed(found, version)
        if self.config.before_settle is not None:
            try:
                yield Call(self.config.before_settle, (request, payload, chosen), blocking=False)
            except PaymentError as exc:
                yield from self._failure(request, exc)
                return self._challenge(request, route, requirements, exc.reason, version=version)
        policy = ValidationPolicy.from_extra(chosen.extra, get_network(chosen.network).chain_id)
        delivery = (
            policy is not None and policy.tag == _DELIVERY_TAG and policy.validator == chosen.pay_to
        )
        base: dict[str, Any] = dict(
            route=route.key,
            method=request.method.upper(),
            path=request.path,
            header_version=version,
            header_hash=header_hash,
            pay_to=chosen.pay_to,
            amount=int(chosen.amount),
            asset=chosen.asset,
            network=chosen.network,
            settle_mode=self.config.settle,
        )
        if self.config.settle == "before":
            result = yield Call(
                self._settle_and_record,
                (payload, chosen, base, signed),
                afn=self._asettle_and_record,
            )
            if isinstance(result, SettleResult):  # refused
                self._count_refusal(request, payer, result.error_reason)
                yield from self._failure(
                    request, GuaranteeRejected(reason=result.error_reason or "rejected")
                )
                return self._challenge(
                    request,
                    route,
                    requirements,
                    result.error_reason or "settle_failed",
                    version=version,
                    settle=result,
                )
            result, record_id = result
        else:
            verdict = yield Call(
                self.facilitator.verify, (payload, chosen), afn=self.facilitator.averify
            )
            if not verdict.is_valid:
                self._count_refusal(request, payer, verdict.invalid_reason)
                yield from self._failure(
                    request, GuaranteeRejected(reason=verdict.invalid_reason or "invalid")
                )
                return self._challenge(
                    request,
                    route,
                    requirements,
                    verdict.invalid_reason or "invalid",
                    version=version,
                )
            try:  # the record's unique header hash stops a replay before the handler runs
                record_id = yield Call(
                    lambda: self.records.begin(
                        **base,
                        settle_result={},
                        status="verified",
                        payer=payer,
                        # unique while in flight: another encoding of this guarantee waits
                        request_id=hex(signed.claims.req_id),
                        tab_id=hex(signed.claims.tab_id),
                    )
                )
            except Conflict:
                return self._challenge(
                    request, route, requirements, Reason.REPLAYED_REQUEST_ID, version=version
                )
            result = None
        claims = signed.claims
        payment = Payment(
            payer=payer,
            amount=claims.amount,
            asset=claims.asset_address,
            network=chosen.network,
            pay_to=chosen.pay_to,
            guarantee_id=result.guarantee_id if result else None,
            request_id=hex(claims.req_id),
            tab_id=hex(claims.tab_id),
            x402_version=version,
            guarantee_version=claims.version,
            route=route.key,
            record_id=record_id,
            settled=result is not None,
            endpoint=None if endpoint is None else endpoint.key,
        )
        self._certificate_source(payment, result)
        if self.config.after_settle is not None and result is not None:
            try:
                yield Call(self.config.after_settle, (request, result), blocking=False)
            except Exception:  # paid but not served: give the money back before answering
                log.exception("after_settle hook raised; refunding %s", result.guarantee_id)
                yield Call(self._abandon, (result, chosen.pay_to, record_id))
                return self._error_response(
                    503, "seller_hook_failed", "the seller failed; the payment was voided"
                )
        return _Paid(
            payment, request, chosen, payload, header_hash, result, policy, delivery, route=route
        )

    def _abandon(self, result: SettleResult, pay_to: str, record_id: int | None) -> None:
        """Void a settled payment whose handler will not run, and say so in its record."""
        self._undo(result, pay_to)
        if record_id is not None:
            self.records.finish(
                record_id, status="failed", http_status=503, response_hash=None, outcome="refunded"
            )

    def _count_refusal(self, request: RequestView, payer: str, reason: str | None) -> None:
        """Throttle who caused a refusal, and only them.

        An invalid signature proves nothing about the claimed payer (anyone could name a
        victim), so it counts against the client address; a refusal of a properly signed
        payment (no collateral left, a replay, a mismatch) counts against its payer, never
        against everyone else behind the same address (a NAT, a proxy, an agent platform).
        """
        if reason in (
            Reason.INVALID_SIGNATURE,
            Reason.MALFORMED_PAYMENT,
            Reason.UNSUPPORTED_SCHEME,
        ):
            self._throttle.hit(request.client)
        else:
            self._throttle.hit(payer)

    def _certificate_source(self, payment: Payment, result: SettleResult | None) -> None:
        """Where the payment's certificate comes from: the facilitator's answer when it sent
        one (a remote ``/settle``), else the embedded Core, on demand."""
        if result is None or not result.guarantee_id:
            return
        if result.certificate:
            payment._made = result.certificate
        elif self.core is not None:
            payment._certify = partial(self.facilitator.certify, result.guarantee_id)

    def _settle_and_record(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        chosen: PaymentRequirements,
        base: dict[str, Any],
        signed: SignedGuarantee,
        nowait: bool = False,
    ) -> SettleResult | tuple[SettleResult, int]:
        """Settle, then write the record; one worker-thread hop for the async driver.

        ``signed`` is the guarantee the gate decoded from ``payload`` (not decoded twice).
        ``nowait``: the event loop's attempt (:meth:`_local_write`); anything but a clean
        answer raises as it is, nothing committed, and is redone in a worker thread.
        """
        if self._shared:  # the embedded Core: acceptance and record commit together
            assert isinstance(self.facilitator, LocalFacilitator)
            try:
                result, record_id = self.facilitator.settle_signed(
                    signed,
                    chosen,
                    lambda tx, result: self._record(result, base, tx),
                    nowait=nowait,
                )
            except Exception as exc:
                if nowait or isinstance(exc, FourmicaError):
                    raise
                # the record failed: the acceptance was rolled back with it
                log.exception("could not record a payment; nothing was accepted")
                raise Unavailable(
                    f"could not record the payment: {type(exc).__name__}",
                    reason=Reason.RECORDS_UNAVAILABLE,
                ) from exc
            return result if record_id is None else (result, record_id)
        self._refuse_in_doubt(signed, chosen)
        try:
            result = self.facilitator.settle(payload, chosen)
        except Unavailable as exc:
            raise self._in_doubt(exc, signed, chosen) from None
        except FourmicaError:
            raise
        except Exception as exc:
            raise Unavailable(f"facilitator error: {type(exc).__name__}") from exc
        if not result.success:
            return result
        try:
            return result, self._record(result, base)
        except Exception as exc:  # accepted but unrecorded: never keep money for work not done
            self._undo(result, base["pay_to"])
            raise Unavailable(
                f"could not record the payment: {type(exc).__name__}",
                reason=Reason.RECORDS_UNAVAILABLE,
            ) from exc

    def _undo(self, result: SettleResult, pay_to: str) -> None:
        if result.guarantee_id:
            try:
                self.facilitator.void(result.guarantee_id, by=pay_to)
            except Exception:
                log.exception("could not void %s after a failed record", result.guarantee_id)

    def _refuse_in_doubt(self, signed: SignedGuarantee, chosen: PaymentRequirements) -> None:
        """A guarantee whose earlier settle went unanswered is being voided: never serve it."""
        if self.records.followup(self._guarantee_id(signed, chosen)) is not None:
            raise PaymentError(
                "this payment's earlier settle went unanswered and is being voided; sign a new one",
                reason=Reason.REPLAYED_REQUEST_ID,
            )

    @staticmethod
    def _guarantee_id(signed: SignedGuarantee, chosen: PaymentRequirements) -> str:
        claims = signed.claims
        chain_id = get_network(chosen.network).chain_id
        return "0x" + guarantee_id(chain_id, claims.tab_id, claims.req_id).hex()

    def _in_doubt(
        self, error: Unavailable, signed: SignedGuarantee, chosen: PaymentRequirements
    ) -> Unavailable:
        """A settle that may have been accepted without an answer: file a void for it."""
        if not error.maybe_applied:
            return error
        gid = self._guarantee_id(signed, chosen)
        try:
            self.records.add_followup(gid, chosen.pay_to, "in_doubt")
        except Exception:  # nowhere to remember it: say so loudly, the lock needs an operator
            log.exception("could not file a void for %s after an unanswered settle", gid)
            return error
        log.warning("settle of %s went unanswered (%s); it will be voided", gid, error.message)
        self._reconciler.kick()
        return error

    #: Backoff between void attempts (seconds), and how long "unknown guarantee" is awaited
    #: before concluding the facilitator never accepted it.
    RECONCILE_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
    RECONCILE_UNKNOWN_FOR = 300.0
    RECONCILE_GIVE_UP = 86_400.0

    def reconcile(self, now: float | None = None) -> dict[str, int]:
        """Do the follow-ups that are due, as far as possible now: void the guarantees whose
        settle went unanswered or whose refund failed, post the delivery scores that failed.

        Runs by itself in the background; callable by hand (a cron job, the CLI, tests).
        Returns how many follow-ups ended in each state this call.
        """
        now = time.time() if now is None else now
        done: dict[str, int] = {}
        for item in self.records.due_followups(now):
            gid, pay_to, created = item.guarantee_id, item.pay_to, item.created_at
            status, detail = "open", ""
            if item.kind == "in_doubt" and self.records.query(guarantee_id=gid, limit=1):
                status = "superseded"  # a later settle of the same guarantee was served
            else:
                try:
                    if item.kind == "score":
                        assert item.score is not None
                        self.facilitator.post_validation(
                            gid, validator=pay_to, score=item.score, tag=_DELIVERY_TAG
                        )
                        status = "scored"
                    else:
                        self.facilitator.void(gid, by=pay_to)
                        status = "voided"
                except PaymentError as exc:
                    status, detail = "abandoned", exc.reason
                except FourmicaError as exc:
                    detail = exc.reason
                    unknown = exc.status == 404 or exc.reason == "unknown_guarantee"
                    if unknown and now - created > self.RECONCILE_UNKNOWN_FOR:
                        status = "never_accepted"
                    elif not unknown and exc.status < 500:
                        status = "abandoned"  # e.g. netted, cancelled or voided already
                except Exception as exc:
                    detail = type(exc).__name__
            if status == "open" and now - created > self.RECONCILE_GIVE_UP:
                status = "abandoned"
            if status == "abandoned":
                log.error("gave up the %s follow-up of %s: %s", item.kind, gid, detail)
            delay = self.RECONCILE_BACKOFF[min(item.attempts, len(self.RECONCILE_BACKOFF) - 1)]
            self.records.update_followup(
                gid, status=status, next_at=now + delay if status == "open" else None, detail=detail
            )
            done[status] = done.get(status, 0) + 1
        return done

    async def _asettle_and_record(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        chosen: PaymentRequirements,
        base: dict[str, Any],
        signed: SignedGuarantee,
    ) -> SettleResult | tuple[SettleResult, int]:
        if self.core is not None:  # local: settle and record together
            return await self._local_write(self._settle_and_record, payload, chosen, base, signed)
        await asyncio.to_thread(self._refuse_in_doubt, signed, chosen)
        try:
            result = await self.facilitator.asettle(payload, chosen)
        except Unavailable as exc:
            raise await asyncio.to_thread(self._in_doubt, exc, signed, chosen) from None
        except FourmicaError:
            raise
        except Exception as exc:
            raise Unavailable(f"facilitator error: {type(exc).__name__}") from exc
        if not result.success:
            return result
        try:
            return result, await asyncio.to_thread(self._record, result, base)
        except Exception as exc:
            await asyncio.to_thread(self._undo, result, base["pay_to"])
            raise Unavailable(
                f"could not record the payment: {type(exc).__name__}",
                reason=Reason.RECORDS_UNAVAILABLE,
            ) from exc

    def _record(self, result: SettleResult, base: dict[str, Any], tx: Tx | None = None) -> int:
        begin = self.records.begin if tx is None else partial(Records.insert, tx)
        return begin(
            **base,
            settle_result=result.to_settle_response().to_dict(),
            status="settled",
            request_id=None if result.req_id is None else hex(result.req_id),
            tab_id=None if result.tab_id is None else hex(result.tab_id),
            guarantee_id=result.guarantee_id,
            payer=result.payer,
        )

    def _match(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: list[PaymentRequirements]
    ) -> PaymentRequirements:
        """Our requirements the payment was made against (never the buyer's copy)."""
        if isinstance(payload, PaymentPayload):
            got = payload.accepted
            for req in requirements:
                if (
                    got.scheme == req.scheme
                    and got.network == req.network
                    and int(got.amount) == int(req.amount)
                    and got.asset.lower() == req.asset.lower()
                    and got.pay_to.lower() == req.pay_to.lower()
                ):
                    return self._v2_requirements([req])[0]  # the wire form, no internal marks
            raise PaymentError(reason=Reason.NO_MATCHING_REQUIREMENTS)
        claims = payload.payload.get("claims") if isinstance(payload.payload, dict) else None
        for req in self._v1_requirements(requirements):
            if payload.scheme == req.scheme and payload.network == req.network:
                if not isinstance(claims, dict):
                    return req
                if str(claims.get("asset_address", "")).lower() == req.asset.lower():
                    return req
        raise PaymentError(reason=Reason.NO_MATCHING_REQUIREMENTS)

    # -- after the handler -----------------------------------------------------------------------

    def response_start(self, state: _Paid, status: int, cache_control: str | None = None) -> Flow:
        """Headers to add when the handler's response starts (or a replacement response).

        ``cache_control`` is the handler's own ``Cache-Control`` value, if any: a paid
        response is never stored by a shared cache, so the result may hold a
        ``cache-control`` header that *replaces* the handler's (adapters drop theirs then).
        In settle-after mode this is where the payment is settled: a failure replaces
        the handler's response with a 402.
        """
        headers = [("access-control-expose-headers", _EXPOSE)]
        if not _no_store(cache_control):
            headers.append(("cache-control", PAID_CACHE_CONTROL))
        if state.replay is not None:
            return headers
        result = state.result
        if result is None and 200 <= status < 300:  # settle after a successful handler
            settled = yield Call(self._settle_after, (state,))
            if isinstance(settled, SettleResult) and not settled.success:
                state.settle_failed = settled
                requirements = [state.requirements]
                return self._challenge(
                    state.request,
                    state.route,
                    requirements,
                    settled.error_reason or "settle_failed",  # type: ignore[arg-type]
                    version=state.payment.x402_version,
                    settle=settled,
                )
            result = state.result
        if result is not None and not 200 <= status < 300 and self.config.refund_on_error:
            # The guarantee is voided once the response is done: say so, so buyers do not count it.
            refunded = SettleResponse(
                success=False,
                error_reason="refunded",
                payer=result.payer,
                transaction=result.guarantee_id or "",
                network=result.network,
            )
            name = (
                PAYMENT_RESPONSE_HEADER
                if state.payment.x402_version == 2
                else X_PAYMENT_RESPONSE_HEADER
            )
            headers.append((name.lower(), encode_header(refunded)))
        elif result is not None:
            response = result.to_settle_response()
            certificate = state.payment._made  # only if made already: never on the hot path
            if certificate:
                extra = dict(response.extra or {})
                extra["certificate"] = certificate
                response = response.model_copy(update={"extra": extra})
            name = (
                PAYMENT_RESPONSE_HEADER
                if state.payment.x402_version == 2
                else X_PAYMENT_RESPONSE_HEADER
            )
            headers.append((name.lower(), encode_header(response)))
        return headers

    def _settle_after(self, state: _Paid) -> SettleResult:
        try:
            result = self.facilitator.settle(state.payload, state.requirements)
        except Exception as exc:
            log.error("settle after the handler failed: %s", exc)
            if isinstance(exc, Unavailable) and exc.maybe_applied:
                signed = signed_from_payload(state.payload, state.requirements)
                self._in_doubt(exc, signed, state.requirements)
            result = SettleResult(
                success=False,
                network=state.requirements.network,
                error_reason="facilitator_unavailable",
            )
        if result.success:
            state.result = result
            state.payment.guarantee_id = result.guarantee_id
            state.payment.settled = True
            self._certificate_source(state.payment, result)
        return result

    def finish(
        self,
        state: _Paid,
        status: int | None,
        body_hash: str | None,
        error: BaseException | None = None,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Flow:
        """After the response went out: delivery marker, validation score or refund."""
        if state.replay is not None:
            return None
        payment = state.payment
        # Only a 2xx is delivered: a redirect, a 4xx, a 5xx, an exception or a response that
        # did not finish gave the buyer nothing it paid for (docs/protocol.md, "Delivery").
        delivered = error is None and status is not None and 200 <= status < 300
        outcome = "delivered" if delivered else "kept"
        action: tuple[str, int] | None = None
        if state.settle_failed is not None or state.result is None:
            outcome = "not_charged"  # settle-after: a failed handler is never charged
        elif self.config.refund_on_error and not delivered:
            action, outcome = ("void", 0), "refunded"
        elif state.delivery_policy and payment.guarantee_version == 2:
            action = ("score", 100 if delivered else 0)
            outcome = "delivered" if delivered else "cancelled"
        certificate = payment._made  # if the handler asked for it; else the Core makes it later
        keep = None
        if self.config.idempotent_replay and body is not None and outcome == "delivered":
            keep = (headers or [], body)
        record = dict(
            status="delivered" if delivered else "failed",
            http_status=status,
            response_hash=body_hash,
            certificate=certificate,
            response=keep,
            settle_result=state.result.to_settle_response().to_dict() if state.result else None,
        )
        # The local Core: on the loop when it need not wait, else one worker-thread hop for all
        # of it; remote facilitators go async.
        afn = self._afinish_local if self.core is not None else self._afinish_io
        outcome = yield Call(self._finish_io, (payment, action, outcome, record), afn=afn)
        if self.config.after_delivery is not None:
            yield Call(self.config.after_delivery, (payment, outcome), blocking=False)
        return None

    async def _afinish_local(
        self, payment: Payment, action: tuple[str, int] | None, outcome: str, record: dict[str, Any]
    ) -> str:
        return await self._local_write(self._finish_io, payment, action, outcome, record)

    async def _local_write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` for the embedded Core, on the event loop when it need not wait.

        ``fn(*args, nowait=True)`` is tried on the loop first (records in the Core's own
        database only); this process's other writer is awaited without blocking, up to
        ``_LOOP_TRIES`` times. Anything else — another process's lock, or any error, after
        which nothing was committed — sends the work to a worker thread, where waiting is
        harmless and failures are handled.
        """
        if self._shared:
            assert self.core is not None
            wait = getattr(self.core.store, "wait_writable", None)
            for _ in range(_LOOP_TRIES):
                try:
                    return fn(*args, nowait=True)
                except WouldBlock as exc:
                    if not exc.local or wait is None:
                        break
                    await wait()
                except Exception:  # rolled back: the thread path redoes and handles it
                    break
        return await asyncio.to_thread(fn, *args)

    def _finish_io(
        self,
        payment: Payment,
        action: tuple[str, int] | None,
        outcome: str,
        record: dict[str, Any],
        nowait: bool = False,
    ) -> str:
        record_id = payment.record_id
        if nowait:  # the event loop's attempt: one short write to the shared database, or none
            if record_id is None or payment.guarantee_id is None:
                raise WouldBlock("not a write the event loop may do")
            if action is None:
                self.records.finish(record_id, outcome=outcome, nowait=True, **record)
            else:
                self._resolve_and_complete(payment, action, outcome, record, nowait=True)
            return outcome
        if self._shared and action is not None and record_id is not None:
            try:
                self._resolve_and_complete(payment, action, outcome, record)
                return outcome
            except Exception as exc:
                outcome = self._action_failed(payment, action, exc, outcome)
                action = None  # record the outcome alone below
        try:
            if action is not None and action[0] == "void":
                self._void(payment)
            elif action is not None:
                self._score(payment, action[1])
        except Exception as exc:
            assert action is not None
            outcome = self._action_failed(payment, action, exc, outcome)
        if payment.record_id is not None:
            self.records.finish(payment.record_id, outcome=outcome, **record)
        return outcome

    def _resolve_and_complete(
        self,
        payment: Payment,
        action: tuple[str, int],
        outcome: str,
        record: dict[str, Any],
        nowait: bool = False,
    ) -> None:
        """The refund or score and the record's completion, in one transaction."""
        assert self.core is not None and payment.guarantee_id and payment.record_id is not None
        record_id = payment.record_id
        self.core.resolve(
            payment.guarantee_id,
            by=payment.pay_to,
            score=None if action[0] == "void" else action[1],
            tag=_DELIVERY_TAG,
            also=lambda tx: Records.complete(tx, record_id, outcome=outcome, **record),
            nowait=nowait,
        )

    def _action_failed(
        self, payment: Payment, action: tuple[str, int], error: Exception, outcome: str
    ) -> str:
        """A refund or score that did not go through: the outcome to record.

        Refused for good (netted already, say): a refund is ``kept``, a score leaves the
        outcome as it was. One that only could not reach the facilitator or the database
        is filed for the reconciler to retry: ``refund_pending`` then ``refunded``, or
        ``score_pending`` then the outcome the score makes.
        """
        log.error("%s of %s failed: %s", action[0], payment.guarantee_id, error)
        definitive = isinstance(error, FourmicaError) and not isinstance(error, Unavailable)
        if definitive or payment.guarantee_id is None:
            return "kept" if outcome == "refunded" else outcome
        kind, pending = (
            ("refund", "refund_pending") if action[0] == "void" else ("score", "score_pending")
        )
        try:
            self.records.add_followup(
                payment.guarantee_id,
                payment.pay_to,
                kind,
                score=None if kind == "refund" else action[1],
            )
        except Exception:
            log.exception("could not file the %s of %s for a retry", kind, payment.guarantee_id)
            return "kept" if outcome == "refunded" else outcome
        self._reconciler.kick()
        return pending

    async def _afinish_io(
        self, payment: Payment, action: tuple[str, int] | None, outcome: str, record: dict[str, Any]
    ) -> str:
        try:
            if action is not None and action[0] == "void":
                await self._avoid(payment)
            elif action is not None:
                await self._ascore(payment, action[1])
        except Exception as exc:
            assert action is not None
            outcome = await asyncio.to_thread(self._action_failed, payment, action, exc, outcome)
        record_id = payment.record_id
        if record_id is not None:
            await asyncio.to_thread(
                lambda: self.records.finish(record_id, outcome=outcome, **record)
            )
        return outcome

    def _void(self, payment: Payment) -> None:
        assert payment.guarantee_id
        self.facilitator.void(payment.guarantee_id, by=payment.pay_to)

    async def _avoid(self, payment: Payment) -> None:
        assert payment.guarantee_id
        await self.facilitator.avoid(payment.guarantee_id, by=payment.pay_to)

    def _score(self, payment: Payment, score: int) -> None:
        assert payment.guarantee_id
        self.facilitator.post_validation(
            payment.guarantee_id, validator=payment.pay_to, score=score, tag=_DELIVERY_TAG
        )

    async def _ascore(self, payment: Payment, score: int) -> None:
        assert payment.guarantee_id
        await self.facilitator.apost_validation(
            payment.guarantee_id, validator=payment.pay_to, score=score, tag=_DELIVERY_TAG
        )

    def _failure(self, request: RequestView, error: FourmicaError) -> Flow:
        if self.config.on_failure is not None:
            try:
                yield Call(self.config.on_failure, (request, error), blocking=False)
            except Exception:
                log.exception("on_failure hook raised")

    # -- challenges ------------------------------------------------------------------------------

    def _origin(self, request: RequestView) -> str:
        return self.config.public_url or f"{request.scheme}://{request.host}"

    def _requirements(self, route: Route, request: RequestView) -> Flow:
        """The route's payment requirements for this request (never mutated by callers).

        Static offers (a fixed price and payTo) give the same requirements for every
        request from the same origin: they are built once and reused.
        """
        origin = self._origin(request)
        cached = route.cache.get(origin)
        if cached is not None:
            return cached
        reqs = []
        for offer in route.offers:
            amount, asset = (
                (offer.amount.amount, offer.amount.asset) if offer.amount else (None, None)
            )
            if amount is None:
                from .networks import resolve_price

                price = yield Call(offer.price, (request,), blocking=False)  # type: ignore[arg-type]
                token = resolve_price(price, offer.network, offer.asset)
                amount, asset = token.amount, token.asset
            pay_to = offer.pay_to
            if callable(pay_to):
                from ._eth import parse_address

                pay_to = parse_address((yield Call(pay_to, (request,), blocking=False)))
                self._tabs.advertised(pay_to)  # the tab endpoint opens tabs for it
            chain_id = get_network(offer.network).chain_id
            extra: dict[str, Any] = {
                "tabEndpoint": self.config.tab_endpoint or f"{origin}{self._tab_path}"
            }
            if self.core is not None:
                extra["rpcUrl"] = f"{origin}{self._prefix}"
            extra.update(offer.extra)
            reqs.append(
                (
                    PaymentRequirements(
                        scheme=offer.scheme,
                        network=offer.network,
                        asset=str(asset),
                        amount=str(amount),
                        pay_to=pay_to,
                        max_timeout_seconds=offer.max_timeout_seconds,
                        extra=extra,
                    ),
                    self._policy_for(route, offer, pay_to, chain_id),
                )
            )
        built = [self._with_policy(req, policy) for req, policy in reqs]
        if all(offer.amount is not None and not callable(offer.pay_to) for offer in route.offers):
            if len(route.cache) >= 64:  # the origin comes from the Host header: bounded
                route.cache.clear()
            route.cache[origin] = built
        return built

    def _policy_for(
        self, route: Route, offer: Offer, pay_to: str, chain_id: int
    ) -> tuple[ValidationPolicy | None, bool]:
        """(policy, seller_chosen): the route's or config's policy, else the delivery policy."""
        chosen = route.config.validation_policy or self.config.validation_policy
        if chosen is None and offer.extra:  # e.g. an official route dict carrying its own policy
            chosen = ValidationPolicy.from_extra(offer.extra, chain_id)
        if chosen is not None:
            return chosen, True
        if (
            not self.config.delivery_policy
            or self.core is None
            or 2 not in self.core.config.accepted_versions
        ):
            return None, False
        from ._eth import keccak
        from .core.ledger import SANDBOX_REGISTRY

        return ValidationPolicy(
            registry=self.core.config.trusted_registries[0]
            if self.core.config.trusted_registries
            else SANDBOX_REGISTRY,
            validator=pay_to,
            validator_agent_id=0,
            min_score=100,
            job_hash=keccak(f"fourmica-x402 delivery {route.key}".encode()),
            chain_id=chain_id,
            tag=_DELIVERY_TAG,
        ), False

    @staticmethod
    def _with_policy(
        req: PaymentRequirements, policy: tuple[ValidationPolicy | None, bool]
    ) -> PaymentRequirements:
        chosen, seller_chosen = policy
        if chosen is None:
            return req
        extra = {**req.extra, **chosen.to_extra(), "_v1Policy": seller_chosen}
        return req.model_copy(update={"extra": extra})

    @staticmethod
    def _v1_requirements(requirements: list[PaymentRequirements]) -> list[PaymentRequirements]:
        """The v1 view: a validation policy only when the seller chose one (v1 buyers sign G-v1)."""
        out = []
        for req in requirements:
            extra = dict(req.extra)
            seller_chosen = extra.pop("_v1Policy", False)
            if not seller_chosen:
                for key in (
                    *ValidationPolicy._EXTRA_KEYS,
                    "requiredValidationTag",
                    "validationChainId",
                ):
                    extra.pop(key, None)
            out.append(req.model_copy(update={"extra": extra}))
        return out

    @staticmethod
    def _v2_requirements(requirements: list[PaymentRequirements]) -> list[PaymentRequirements]:
        out = []
        for req in requirements:
            extra = dict(req.extra)
            extra.pop("_v1Policy", None)
            out.append(req.model_copy(update={"extra": extra}))
        return out

    def _challenge(
        self,
        request: RequestView,
        route: Route | None,
        requirements: list[PaymentRequirements],
        reason: str,
        *,
        version: int | None = None,
        settle: SettleResult | None = None,
    ) -> Response:
        description = route.config.description if route else ""
        mime = route.config.mime_type if route else ""
        url = (route.config.resource if route and route.config.resource else None) or (
            f"{self._origin(request)}{request.path}"
            + (f"?{request.query}" if request.query else "")
        )
        error = "Payment required" if reason == Reason.PAYMENT_REQUIRED else str(reason)
        if reason == Reason.NO_MATCHING_REQUIREMENTS:
            error = "No matching payment requirements"
        resource = ResourceInfo(url=url, description=description, mime_type=mime)
        v2 = PaymentRequired(
            error=error, resource=resource, accepts=self._v2_requirements(requirements)
        )
        v1 = PaymentRequiredV1(
            error=error, accepts=[r.to_v1(resource) for r in self._v1_requirements(requirements)]
        )
        headers = [
            (PAYMENT_REQUIRED_HEADER.lower(), encode_header(v2)),
            ("cache-control", "no-store"),
            ("access-control-expose-headers", _EXPOSE),
        ]
        if settle is not None or (version is not None and reason != Reason.PAYMENT_REQUIRED):
            failed = SettleResponse(
                success=False,
                error_reason=str(reason),
                transaction="",
                network=requirements[0].network if requirements else "",
            )
            name = PAYMENT_RESPONSE_HEADER if version != 1 else X_PAYMENT_RESPONSE_HEADER
            headers.append((name.lower(), encode_header(failed)))
        accept = request.header("accept") or ""
        if self.config.paywall and "text/html" in accept and reason == Reason.PAYMENT_REQUIRED:
            body = _paywall(url, description, requirements).encode()
            return Response(402, [("content-type", "text/html; charset=utf-8"), *headers], body)
        return Response(402, [("content-type", "application/json"), *headers], v1.to_json_bytes())

    def _replayed(self, found: Any, version: int) -> _Paid | Response:
        record, stored = found
        if stored is None or record.status != "delivered":
            return self._error_response(
                409,
                "payment_in_progress" if record.delivered_at is None else "replay_unavailable",
                "this payment was already used; its response cannot be replayed",
            )
        headers, body = stored
        cache = next((v for k, v in headers if k.lower() == "cache-control"), None)
        drop = ("content-length",) if _no_store(cache) else ("content-length", "cache-control")
        headers = [(k, v) for k, v in headers if k.lower() not in drop]
        if not _no_store(cache):  # paid content, replayed: still never for a shared cache
            headers.append(("cache-control", PAID_CACHE_CONTROL))
        settle = SettleResponse.model_validate(record.settle_result)
        name = PAYMENT_RESPONSE_HEADER if version == 2 else X_PAYMENT_RESPONSE_HEADER
        headers.append((name.lower(), encode_header(settle)))
        headers.append(("access-control-expose-headers", _EXPOSE))
        return Response(record.http_status or 200, headers, body)

    def _throttled(self, wait: float) -> Response:
        exc = Throttled(retry_after=int(wait) + 1)
        return self._error_response(
            429, exc.reason, "too many invalid payments; slow down", exc.headers()
        )

    @staticmethod
    def _error_response(
        status: int, reason: str, message: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return Response.json(
            status,
            {"error": str(reason), "message": message},
            [("cache-control", "no-store"), *(headers or [])],
        )

    def _matches_variant(self, method: str, request: RequestView) -> bool:
        raw = request.raw_path or request.path
        variants = {unquote(raw).replace("\\", "/"), raw.replace("\\", "/")}
        for variant in list(variants):
            parts: list[str] = []
            for seg in variant.split("/"):
                if seg == "..":
                    if parts:
                        parts.pop()
                elif seg not in (".", ""):
                    parts.append(seg)
            variants.add("/" + "/".join(parts))
        return any(self.routes.match(method, v) for v in variants)

    # -- the gate's own endpoints (embedded mode) ------------------------------------------------

    def _endpoint(self, request: RequestView) -> Flow:
        core = self.core
        assert core is not None
        sub = request.path[len(self._prefix) :] or "/"
        method = request.method.upper()
        chain_id = get_network(self.config.network).chain_id
        origin = self._origin(request)
        if sub == "/core/public-params" and method in ("GET", "HEAD"):
            params = coreapi.public_params(core, chain_id, f"{origin}{self._prefix}/rpc")
            return Response.json(200, params)
        if sub == "/rpc" and method == "POST":
            body = yield from self._json_body(request)
            status, data = coreapi.json_rpc(core, chain_id, body)
            return Response.json(status, data)
        # The Core's own tab and issue calls (/core/payment-tabs, /core/guarantees) are not
        # mounted on a seller's public app: unauthenticated, anyone holding a buyer's payment
        # header could settle it there first and the buyer would pay for a request that the
        # gate then refuses as a replay. `fourmica-x402 serve --api-key` serves them.
        return Response.json(404, {"error": "not found"})

    def _tab(self, request: RequestView) -> Flow:
        if request.method.upper() != "POST":
            return Response.json(405, {"error": "use POST"}, [("allow", "POST")])
        body = yield from self._json_body(request)
        # Only a route's payTo (static, or one a payTo callable chose for a challenge we
        # served); new tabs limited per client, buyer and seller, reuses never
        # (docs/operations.md, "The tab endpoint"). Runs off the event loop: it writes the Core.
        status, data, headers = yield Call(
            self._tabs.handle, (self.facilitator, request.client, body)
        )
        return Response.json(status, data, [("cache-control", "no-store"), *headers])

    def _json_body(self, request: RequestView) -> Flow:
        if request.read_body is None:
            return None
        raw = yield Call(request.read_body, (), blocking=False)
        if not raw or len(raw) > 64 * 1024:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return None


# -- helpers ------------------------------------------------------------------------------------


def _version_of(request: RequestView) -> int | None:
    if request.header_values(PAYMENT_SIGNATURE_HEADER):
        return 2
    if request.header_values(X_PAYMENT_HEADER):
        return 1
    return None


def _ambiguous(request: RequestView) -> bool:
    """Encodings a proxy and the framework may read differently: refuse, never guess."""
    raw = request.raw_path or ""
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw or "\\" in request.path:
        return True
    if "%" in raw:
        i = raw.find("%")
        while i != -1:
            chunk = raw[i + 1 : i + 3]
            if len(chunk) < 2 or any(c not in "0123456789abcdefABCDEF" for c in chunk):
                return True
            i = raw.find("%", i + 1)
    segments = request.path.split("/")
    return ".." in segments or "." in segments or ".." in unquote(raw).split("/")


def _no_store(cache_control: str | None) -> bool:
    """The handler's Cache-Control already forbids storing (nothing stricter exists)."""
    if not cache_control:
        return False
    return "no-store" in {d.strip().partition("=")[0].lower() for d in cache_control.split(",")}


def _run_coroutine(awaitable: Any) -> Any:
    async def runner() -> Any:
        return await awaitable

    return asyncio.run(runner())


def _paywall(url: str, description: str, requirements: list[PaymentRequirements]) -> str:
    rows = []
    for req in requirements:
        asset = find_asset(req.network, req.asset)
        if asset is not None:
            human = Decimal(int(req.amount)).scaleb(-asset.decimals).normalize()
            price = f"{human:f} {asset.symbol}"
        else:
            price = f"{req.amount} (atomic units of {req.asset})"
        rows.append(
            f"<tr><td>{html.escape(price)}</td><td>{html.escape(get_network(req.network).name)}</td><td><code>{html.escape(req.pay_to)}</code></td></tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Payment required</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}}
code{{font-size:.85em;word-break:break-all}}</style></head>
<body><h1>Payment required</h1>
<p>{html.escape(description) or "This resource is paid per request."}</p>
<p><code>{html.escape(url)}</code></p>
<table><tr><th>Price</th><th>Network</th><th>Pay to</th></tr>{"".join(rows)}</table>
<p>Pay with an x402 client that supports the <code>4mica-credit</code> scheme: it reads the
<code>PAYMENT-REQUIRED</code> header, opens a tab, signs a guarantee and retries.</p>
</body></html>"""
