"""Where guarantees go: the Facilitator protocol and its implementations.

- :class:`LocalFacilitator` — in-process, over an embedded :class:`~fourmica_x402.core.Core`.
- ``HttpFacilitator`` — any x402-4mica-compatible facilitator over HTTP (``remote``).

A facilitator opens tabs, verifies (checks everything that does not change
state) and settles (the Core accepts the guarantee and locks capacity). Async
twins carry an ``a`` prefix (``averify``, ``asettle``, …).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .._eth import parse_address
from .._memo import ByIdentity
from ..core.models import Expected, Tab
from ..errors import GuaranteeRejected, MalformedPayment, Reason
from ..guarantee import SignedGuarantee, ValidationPolicy
from ..networks import get_network, parse_amount
from ..wire import (
    SCHEME,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    SettleResponse,
    VerifyResponse,
)
from .local import LocalFacilitator
from .remote import HttpFacilitator

__all__ = [
    "Facilitator",
    "HttpFacilitator",
    "LocalFacilitator",
    "SettleResult",
    "expected_from_requirements",
    "signed_from_payload",
]


@dataclass(frozen=True)
class SettleResult:
    """The outcome of settling one payment."""

    success: bool
    network: str
    error_reason: str | None = None
    payer: str | None = None
    guarantee_id: str | None = None
    tab_id: int | None = None
    req_id: int | None = None
    amount: int | None = None
    state: str | None = None
    certificate: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_settle_response(self) -> SettleResponse:
        """The x402 result-header body: ``transaction`` is the guarantee id (made once: the
        record stores it and the response header carries it)."""
        made: SettleResponse | None = self.__dict__.get("_response")
        if made is None:
            made = self._response()
            object.__setattr__(self, "_response", made)
        return made

    def response_json(self) -> bytes:
        """:meth:`to_settle_response` as compact JSON, made once: the record stores it and the
        result header carries it."""
        made: bytes | None = self.__dict__.get("_json")
        if made is None:
            made = self.to_settle_response().to_json_bytes()
            object.__setattr__(self, "_json", made)
        return made

    def _response(self) -> SettleResponse:
        extra: dict[str, Any] = {}
        if self.req_id is not None:
            extra["requestId"] = hex(self.req_id)
        if self.tab_id is not None:
            extra["tabId"] = hex(self.tab_id)
        if self.certificate:
            extra["certificate"] = self.certificate
        return SettleResponse(
            success=self.success,
            error_reason=self.error_reason,
            payer=self.payer,
            transaction=self.guarantee_id or "",
            network=self.network,
            extra=extra or None,
        )


class Facilitator(Protocol):
    """What the seller gate needs from wherever guarantees are settled."""

    def supported(self) -> list[dict[str, Any]]: ...

    def open_tab(
        self,
        *,
        user: str,
        recipient: str,
        network: str,
        asset: str,
        guarantee_version: int,
        ttl_seconds: int | None = None,
    ) -> Tab: ...

    def verify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> VerifyResponse: ...

    def settle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> SettleResult: ...

    def void(self, guarantee_id: str, *, by: str) -> None: ...

    def post_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> None: ...

    async def asupported(self) -> list[dict[str, Any]]: ...

    async def aopen_tab(
        self,
        *,
        user: str,
        recipient: str,
        network: str,
        asset: str,
        guarantee_version: int,
        ttl_seconds: int | None = None,
    ) -> Tab: ...

    async def averify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> VerifyResponse: ...

    async def asettle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> SettleResult: ...

    async def avoid(self, guarantee_id: str, *, by: str) -> None: ...

    async def apost_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> None: ...


def expected_from_requirements(
    requirements: PaymentRequirements | PaymentRequirementsV1,
) -> Expected:
    """What the seller asked for, from its requirements. Bad requirements → MalformedPayment.

    The validation policy's numbers may be JSON integers or canonical strings (docs/buyer.md,
    "Challenges"); anything else is malformed. Read once per requirements object (a
    route's are built once and reused).
    """
    return _expected(requirements)


def _read_expected(requirements: PaymentRequirements | PaymentRequirementsV1) -> Expected:
    if requirements.scheme != SCHEME:
        raise GuaranteeRejected(f"scheme {requirements.scheme!r}", reason=Reason.UNSUPPORTED_SCHEME)
    try:
        chain_id = get_network(requirements.network).chain_id
    except Exception:
        raise GuaranteeRejected(
            f"unknown network {requirements.network!r}", reason=Reason.NETWORK_MISMATCH
        ) from None
    try:
        # Read as the official facilitator reads it: a seller on the official stack passes its
        # configured ``extra`` through, so its numbers may be canonical strings ("84532").
        policy = ValidationPolicy.from_extra(requirements.extra, chain_id, lenient=True)
        return Expected(
            network=requirements.network,
            pay_to=parse_address(requirements.pay_to),
            asset=parse_address(requirements.asset),
            amount=parse_amount(requirements.amount),
            policy=policy,
        )
    except ValueError as exc:
        raise MalformedPayment(f"payment requirements: {exc}") from None


_expected: ByIdentity[PaymentRequirements | PaymentRequirementsV1, Expected] = ByIdentity(
    _read_expected
)


def signed_from_payload(
    payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
) -> SignedGuarantee:
    """The signed guarantee inside an x402 payload, after the envelope-level checks."""
    if payload.scheme != SCHEME:
        raise GuaranteeRejected(f"scheme {payload.scheme!r}", reason=Reason.UNSUPPORTED_SCHEME)
    if payload.network != requirements.network:
        raise GuaranteeRejected(reason=Reason.NETWORK_MISMATCH)
    return SignedGuarantee.from_json(payload.payload)
