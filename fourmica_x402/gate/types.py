"""The adapter contract: what an adapter builds, drives and renders, and what a handler gets.

An adapter turns its framework's request into a :class:`RequestView`, drives the gate's flows
(generators yielding :class:`Call` objects; see :mod:`.drive`) and renders the
:class:`Response` or :data:`PASS` they return; a paid handler receives a :class:`Payment`.
Nothing here does I/O or knows a framework (docs/architecture.md, "A paid request").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import FourmicaError, Reason
from ..facilitator import SettleResult
from ..guarantee import ValidationPolicy
from ..jobs import JobStage
from ..routes import Endpoint, Route
from ..wire import PaymentPayload, PaymentPayloadV1, PaymentRequirements

log = logging.getLogger("fourmica_x402.gate")

#: What ``on_protected_request`` returns to serve without payment, or to refuse (403).
GRANT = object()
DENY = object()
#: What a paid response tells caches (docs/protocol.md, "Paid responses"): a shared cache or
#: a CDN must never hand paid content to an unpaid client.
PAID_CACHE_CONTROL = "private, no-store"
#: The payment headers a browser client may read (CORS).
EXPOSE_HEADERS = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"


# -- the neutral request and response ---------------------------------------------------------


class Headers(tuple[tuple[str, str], ...]):
    """A request's headers: (lower-cased name, value) pairs, in order, repeated ones repeated;
    ``get`` reads one the way a framework's headers object does (docs/operations.md, "Hooks")."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case), or ``default``."""
        name = name.lower()
        for key, value in self:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class RequestView:
    """What the gate needs of a request, built by each adapter."""

    method: str
    #: The path the framework routes on (percent-decoded).
    path: str
    #: The path as sent, still percent-encoded (for ambiguity checks); "" when unknown.
    raw_path: str
    query: str
    #: Lower-cased names; repeated headers appear repeatedly (adapters pass :class:`Headers`).
    headers: tuple[tuple[str, str], ...]
    scheme: str = "http"
    host: str = "localhost"
    client: str | None = None
    #: Reads the request body (sync or async): all of it, or :class:`BodyTooLarge` past
    #: ``BODY_LIMIT``; the app is then handed the same bytes (docs/protocol.md, "Minimums…").
    read_body: Callable[[], Any] | None = None
    #: The framework's router: returns the :class:`Endpoint` it resolves this request to, or
    #: None when it will not serve it (404, 405, a redirect). None here = an app with no
    #: router, priced by its raw path. Called at most once, only for requests the gate prices.
    resolve: Callable[[], Endpoint | None] | None = None
    #: Where the app is mounted, percent-encoded ("" at the root; ASGI ``root_path``, WSGI
    #: ``SCRIPT_NAME``): ``path`` and ``raw_path`` are below it, URLs given to buyers start
    #: with it (docs/architecture.md, "Which route is priced").
    root: str = ""

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


def error_response(
    status: int, reason: str, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    """An error other than a challenge: JSON ``{"error", "message"}``, never stored by a cache
    (docs/protocol.md, "Reason codes" and "Paid responses")."""
    return Response.json(
        status,
        {"error": str(reason), "message": message},
        [("cache-control", "no-store"), *(headers or [])],
    )


def no_store(cache_control: str | None) -> bool:
    """The handler's Cache-Control already forbids storing (nothing stricter exists)."""
    if not cache_control:
        return False
    return "no-store" in {d.strip().partition("=")[0].lower() for d in cache_control.split(",")}


_SHARED_CACHES = frozenset({"surrogate-control", "edge-control", "x-accel-expires"})


def for_shared_caches(name: str) -> bool:
    """A header only shared caches read, which there wins over ``Cache-Control``: RFC 9213's
    targeted fields (``CDN-Cache-Control``, ``Cloudflare-CDN-Cache-Control``…),
    ``Surrogate-Control``, ``Edge-Control``, nginx's ``X-Accel-Expires``. A paid response never
    carries one (docs/protocol.md, "Paid responses")."""
    name = name.lower()
    return name.endswith("cdn-cache-control") or name in _SHARED_CACHES


def unshared(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of a priced route's answer served free (``GRANT``), marked as a paid
    answer's are: a shared cache would hand it to unpaid clients (docs/operations.md)."""
    kept = [(k, v) for k, v in headers if not for_shared_caches(k)]
    if no_store(next((v for k, v in kept if k.lower() == "cache-control"), None)):
        return kept
    kept = [(k, v) for k, v in kept if k.lower() != "cache-control"]
    return [*kept, ("cache-control", PAID_CACHE_CONTROL)]


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


class Undelivered(Exception):
    """A 2xx answer the route says was not delivered (e.g. a JSON-RPC error in a 200, judged by
    the adapter): refunded whatever ``refund_on_error`` says (docs/protocol.md, "Delivery")."""


class RequestFault(FourmicaError):
    """The request's own fault, found while pricing it (a count of units, a field a price
    callable needs, a body too long to read): answered 4xx with its reason, nothing charged
    (docs/protocol.md)."""

    status = 400


class BodyTooLarge(RequestFault):
    """Pricing asked for a request body longer than the gate reads (``BODY_LIMIT``): refused
    (413), never priced from part of it or from nothing (docs/protocol.md, "Minimums, bundles
    and prepaid caps"). A body reader that raised it says so with ``too_large`` afterwards."""

    status = 413
    reason = Reason.BODY_TOO_LARGE

    def __init__(self) -> None:
        super().__init__("the request body is too large to be priced")


class InvalidBody(BodyTooLarge):
    """Pricing asked for a request body that cannot be read as the app would read it (a
    ``Content-Length`` not a plain number, a broken chunked encoding): refused (400) where a
    body too long is, never priced as empty (docs/protocol.md, "Reading the body")."""

    status = 400
    reason = Reason.INVALID_BODY

    def __init__(self) -> None:
        FourmicaError.__init__(self, "the request body cannot be read to be priced")


def body_refused(read_body: Any) -> BodyTooLarge | None:
    """What a body reader refused (its ``too_large``: True, or the refusal it raised), for a
    callable that caught it and answered all the same."""
    flag = getattr(read_body, "too_large", False)
    return (type(flag)() if isinstance(flag, BodyTooLarge) else BodyTooLarge()) if flag else None


class PassThrough:
    """Not ours to charge: run the app as if the gate were not there."""


PASS = PassThrough()


class Granted(PassThrough):
    """``GRANT`` from ``on_protected_request``: served free like :data:`PASS`, its handler handed
    ``payment`` (``granted`` True, amount 0, no guarantee), bound to the route it was granted
    for as a payment is, so that a per-handler marker runs for it (docs/operations.md)."""

    def __init__(self, payment: Payment) -> None:
        self.payment = payment


# -- the flows' I/O -----------------------------------------------------------------------------


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
    #: What a bundle or a prepaid cap bought (docs/protocol.md, "Minimums, bundles and prepaid
    #: caps"): the units, one unit's price and the cap, in atomic units; None elsewhere.
    units: int | None = None
    unit_price: int | None = None
    cap: int | None = None
    #: Staged work: the job and stage this payment bought (docs/protocol.md, "Staged work").
    job: JobStage | None = None
    #: A metered route's stream: the handler sends its events through it (docs/protocol.md,
    #: "Metered streams"); a ``gate.metered.MeteredStream``.
    stream: Any = field(default=None, repr=False, compare=False)
    #: The route this payment was settled for (an :class:`Endpoint`; its ``key``, the
    #: framework's own object): per-handler markers and the router's check compare it.
    endpoint: Any = field(default=None, repr=False, compare=False)
    #: Whether the handler's own marker set the price (else a table entry did).
    by_marker: bool = field(default=False, repr=False, compare=False)
    #: Served free: the ``on_protected_request`` hook answered ``GRANT``; nothing was charged
    #: or recorded (amount 0; no guarantee, tab or record; ``payer``, ``asset``, ``network``
    #: and ``pay_to`` are "").
    granted: bool = False
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
class Paid:
    """State carried from ``Gate.before`` to ``Gate.response_start`` and ``Gate.finish``.

    Adapters hold it without looking inside."""

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
    #: The outcome of the refund made as a failed response started (``refunded``, ``kept``
    #: or ``refund_pending``); None when none was made then.
    refunded: str | None = None
    #: The client left while this settle-after payment was being settled (its response is
    #: not delivered: :func:`.after.left_during_settle`).
    left: bool = False
