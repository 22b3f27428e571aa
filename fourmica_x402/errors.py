"""Every error fourmica_x402 raises, and how each one renders over HTTP.

The hierarchy::

    FourmicaError                     root: catch this to catch everything of ours
    ├── ConfigurationError            bad configuration, raised at start-up (never per request)
    ├── CoreError                     a Core operation was refused (unknown id, wrong state, …)
    ├── PaymentError                  a payment was refused; carries a stable ``reason`` code
    │   ├── MalformedPayment          the payment header or challenge could not be decoded
    │   ├── GuaranteeRejected         the Core refused the guarantee (docs/protocol.md, "Acceptance")
    │   └── Throttled                 too many invalid payments from one payer or address (429)
    ├── TabLimited                    the tab endpoint refused to open a new tab (429)
    ├── Unavailable                   the facilitator or the Core failed or is unreachable (503)
    ├── DiscoveryFailed               (buyer side) a seller's discovery listing could not be read
    └── PaymentRefused                (buyer side) the client did not pay; carries ``receipt``
        ├── NeedsApproval             the approval callback said no (or there is none)
        ├── BlockedSeller             the seller is blocked or not allowed
        ├── BudgetExhausted           a cap or budget would be exceeded
        ├── InsufficientCollateral    the Core refused: not enough collateral
        └── PaymentFailed             the seller or the payment misbehaved (no retry)

Adapters never invent protocol errors: they call :meth:`FourmicaError.render`
(or let the gate do it) and copy status, headers and body onto the wire.
"""

from __future__ import annotations

import json
import logging
import math
from enum import StrEnum
from typing import Any

__all__ = [
    "BlockedSeller",
    "BudgetExhausted",
    "ConfigurationError",
    "CoreError",
    "DiscoveryFailed",
    "FourmicaError",
    "GuaranteeRejected",
    "InsufficientCollateral",
    "MalformedPayment",
    "NeedsApproval",
    "PaymentError",
    "PaymentFailed",
    "PaymentRefused",
    "Reason",
    "TabLimited",
    "Throttled",
    "Unavailable",
]


class Reason(StrEnum):
    """Stable snake_case reason codes. Clients may switch on these; they never change."""

    PAYMENT_REQUIRED = "payment_required"
    NO_MATCHING_REQUIREMENTS = "no_matching_requirements"
    MALFORMED_PAYMENT = "malformed_payment"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    INVALID_VALIDATION_POLICY = "invalid_validation_policy"
    UNTRUSTED_VALIDATION_REGISTRY = "untrusted_validation_registry"
    INVALID_SIGNATURE = "invalid_signature"
    PAYER_SUSPENDED = "payer_suspended"
    REPLAYED_REQUEST_ID = "replayed_request_id"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TIMESTAMP_OUTSIDE_TAB = "timestamp_outside_tab"
    TAB_EXPIRED = "tab_expired"
    UNKNOWN_TAB = "unknown_tab"
    TAB_MISMATCH = "tab_mismatch"
    VALIDATION_POLICY_MISMATCH = "validation_policy_mismatch"
    RECIPIENT_MISMATCH = "recipient_mismatch"
    ASSET_MISMATCH = "asset_mismatch"
    AMOUNT_MISMATCH = "amount_mismatch"
    NETWORK_MISMATCH = "network_mismatch"
    INSUFFICIENT_COLLATERAL = "insufficient_collateral"
    #: A guarantee for zero atomic units (terms asking for nothing): no payment at all.
    INVALID_AMOUNT = "invalid_amount"
    #: The tab's running total would pass 2^63 - 1 atomic units: a new tab takes the payment.
    TAB_TOTAL_EXCEEDED = "tab_total_exceeded"
    THROTTLED = "throttled"
    UNAVAILABLE = "facilitator_unavailable"
    RECORDS_UNAVAILABLE = "records_unavailable"
    #: A payment sent with HEAD: never settled (no body is delivered); use it for the GET.
    HEAD_NOT_CHARGED = "head_not_charged"
    #: A paid handler was reached without a payment settled for it: refused, fail closed.
    PAYMENT_NOT_ENFORCED = "payment_not_enforced"
    #: Too many new tabs from one client address or for one buyer (tab endpoint, 429).
    TAB_RATE_LIMITED = "tab_rate_limited"
    #: The seller's cap on open tabs is reached: no new tab (tab endpoint, 429).
    OPEN_TAB_LIMIT = "open_tab_limit"
    #: A bundled route could not count the units a request buys (400, nothing charged).
    INVALID_UNITS = "invalid_units"
    #: A price or payTo callable could not read this request (it raised ``ValueError``,
    #: ``TypeError`` or ``KeyError``: a field missing or malformed; 400, nothing charged).
    UNPRICEABLE_REQUEST = "unpriceable_request"
    #: A route priced by its request body, sent one longer than the gate reads (413).
    BODY_TOO_LARGE = "body_too_large"
    #: A route priced by its request body, sent one that cannot be read as the app would
    #: read it: a malformed ``Content-Length``, a broken chunked encoding (400).
    INVALID_BODY = "invalid_body"
    #: Such a route under Django, behind a middleware listed before ours that read the body
    #: from its stream (``request.POST`` of a multipart form): the seller's setting (500).
    BODY_READ_BEFORE_GATE = "body_read_before_gate"


class FourmicaError(Exception):
    """Root of every error raised by fourmica_x402.

    ``status`` is the HTTP status this error renders as; ``reason`` a stable
    code; ``message`` human text that never contains a secret.
    """

    status: int = 500
    reason: str = "internal_error"  # a Reason member or another stable snake_case code

    def __init__(self, message: str | None = None, *, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = str(reason)
        self.message = message or self.reason.replace("_", " ")
        super().__init__(self.message)

    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers (besides Content-Type) this error needs."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.reason, "message": self.message}

    def public(self) -> str:
        """The message to answer a caller with. A server-side failure's detail (a database's
        host and user, a driver's text) goes to the log, not to whoever asked."""
        if self.status < 500:
            return self.message
        logging.getLogger("fourmica_x402").warning("%s: %s", self.reason, self.message)
        return f"{self.reason.replace('_', ' ')}: the service cannot answer now; retry later"

    def render(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` of a JSON response describing this error."""
        body = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return self.status, [("content-type", "application/json"), *self.headers()], body


class ConfigurationError(FourmicaError, ValueError):
    """The framework was configured wrongly. Raised at start-up, with what to fix."""

    reason = "configuration_error"


class CoreError(FourmicaError):
    """A Core operation (void, withdrawal, cycle payment, …) was refused.

    ``reason`` is stable (``unknown_guarantee``, ``invalid_state``,
    ``not_recipient``, ``withdrawal_unsafe``, …); ``status`` is the HTTP
    status the service answers with.
    """

    status = 409
    reason = "invalid_state"

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str,
        status: int = 409,
        state: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        #: The guarantee's state when that is why it was refused (a void of one voided already).
        self.state = state

    def to_dict(self) -> dict[str, Any]:
        answer = super().to_dict()
        if self.state is not None:
            answer["state"] = self.state
        return answer


class PaymentError(FourmicaError):
    """A payment was refused. Renders as 402 with the reason; the paid work must not run."""

    status = 402
    reason: str = Reason.PAYMENT_REQUIRED


class MalformedPayment(PaymentError):
    """A payment header (or a 402 challenge, on the buyer side) could not be decoded."""

    reason: str = Reason.MALFORMED_PAYMENT


class GuaranteeRejected(PaymentError):
    """The Core refused a guarantee; ``reason`` is one of the codes in docs/protocol.md."""


class Throttled(PaymentError):
    """Too many invalid payments from one payer or client address."""

    status = 429
    reason: str = Reason.THROTTLED

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after))]


_DAY = 86_400


class TabLimited(FourmicaError):
    """The tab endpoint refused to open a *new* tab (never a reuse of an open one): too many
    from one client address or for one buyer (``tab_rate_limited``), or the seller's cap on
    open tabs is reached (``open_tab_limit``). See docs/operations.md, "The tab endpoint".
    """

    status = 429
    reason: str = Reason.TAB_RATE_LIMITED

    def __init__(
        self, message: str | None = None, *, reason: str | None = None, retry_after: float = 1
    ) -> None:
        super().__init__(message, reason=reason)
        # Whole seconds from 1 to a day: a facilitator's Retry-After of 400 digits reads as
        # infinity, which has no ceiling (it was a 500 instead of this 429).
        wait = retry_after if math.isfinite(retry_after) else _DAY
        self.retry_after = max(1, math.ceil(min(wait, _DAY)))

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after))]


class Unavailable(FourmicaError):
    """The facilitator or the Core failed or could not be reached: fail closed."""

    status = 503
    reason: str = Reason.UNAVAILABLE
    #: The call may have taken effect (sent, then no answer): a settle then needs undoing.
    maybe_applied: bool = False

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", "5")]


class DiscoveryFailed(FourmicaError):
    """A seller's discovery listing could not be read: unreachable, an HTTP error, not JSON or
    not a listing (docs/buyer.md, "Listing offers"). ``message`` says which."""

    status = 502
    reason: str = "discovery_failed"


class PaymentRefused(FourmicaError):
    """The buyer did not pay (policy refusal or a failed payment). ``receipt`` says what happened.

    Never retried automatically.
    """

    status = 402
    reason: str = "payment_failed"

    def __init__(
        self, message: str | None = None, *, receipt: object = None, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.receipt = receipt


class NeedsApproval(PaymentRefused):
    reason: str = "needs_approval"


class BlockedSeller(PaymentRefused):
    reason: str = "blocked_seller"


class BudgetExhausted(PaymentRefused):
    reason: str = "budget_exhausted"


class InsufficientCollateral(PaymentRefused):
    reason: str = "insufficient_collateral"


class PaymentFailed(PaymentRefused):
    reason: str = "payment_failed"
