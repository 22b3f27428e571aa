"""The x402 HTTP envelope, v1 and v2: models and the base64-JSON header codec.

Header values are standard base64 (padded) of compact UTF-8 JSON with
camelCase keys and nulls omitted. Decoding never trusts its input: bad
base64, bad JSON, wrong types, headers over :data:`MAX_HEADER_BYTES` and
deeply nested JSON all raise :class:`~fourmica_x402.errors.MalformedPayment`
and nothing else.

    >>> paid = PaymentPayloadV1(scheme="4mica-credit", network="eip155:84532", payload={})
    >>> decode_payment_header(encode_header(paid)).x402_version
    1
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from .errors import MalformedPayment
from .networks import parse_amount

__all__ = [
    "MAX_HEADER_BYTES",
    "PAYMENT_REQUIRED_HEADER",
    "PAYMENT_RESPONSE_HEADER",
    "PAYMENT_SIGNATURE_HEADER",
    "SCHEME",
    "X_PAYMENT_HEADER",
    "X_PAYMENT_RESPONSE_HEADER",
    "PaymentPayload",
    "PaymentPayloadV1",
    "PaymentRequired",
    "PaymentRequiredV1",
    "PaymentRequirements",
    "PaymentRequirementsV1",
    "ResourceInfo",
    "SettleResponse",
    "VerifyResponse",
    "decode_header_json",
    "decode_payment_header",
    "decode_payment_required",
    "encode_header",
]

PAYMENT_REQUIRED_HEADER = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE_HEADER = "PAYMENT-RESPONSE"
X_PAYMENT_HEADER = "X-PAYMENT"
X_PAYMENT_RESPONSE_HEADER = "X-PAYMENT-RESPONSE"
SCHEME = "4mica-credit"
#: Largest payment header value we decode; a real one is about 2 KiB.
MAX_HEADER_BYTES = 16 * 1024


class _Model(BaseModel):
    # Unknown keys are kept and sent back out: x402 peers add fields over time.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )

    def to_json_bytes(self) -> bytes:
        """Compact JSON, camelCase keys, nulls omitted, in field order."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _atomic(value: object) -> str:
    # Amounts travel as decimal strings; 0x hex is accepted on input and normalised.
    try:
        return str(parse_amount(value))
    except ValueError as exc:
        raise ValueError(str(exc)) from None


class ResourceInfo(_Model):
    url: str
    description: str | None = None
    mime_type: str | None = None


class PaymentRequirements(_Model):
    """One offer (x402 v2). ``extra`` carries ``tabEndpoint`` and the validation policy."""

    scheme: str
    network: str
    asset: str
    amount: str
    pay_to: str
    max_timeout_seconds: int = 300
    extra: dict[str, Any] = Field(default_factory=dict)

    _check_amount = field_validator("amount", mode="before")(_atomic)

    def to_v1(self, resource: ResourceInfo) -> PaymentRequirementsV1:
        """The same offer in the v1 shape (``maxAmountRequired``, resource inline)."""
        return PaymentRequirementsV1(
            scheme=self.scheme,
            network=self.network,
            max_amount_required=self.amount,
            resource=resource.url,
            description=resource.description or "",
            mime_type=resource.mime_type or "",
            pay_to=self.pay_to,
            max_timeout_seconds=self.max_timeout_seconds,
            asset=self.asset,
            extra=self.extra,
        )


class PaymentRequirementsV1(_Model):
    """One offer (x402 v1)."""

    scheme: str
    network: str
    max_amount_required: str
    resource: str
    description: str = ""
    mime_type: str = ""
    output_schema: dict[str, Any] | None = None
    pay_to: str
    max_timeout_seconds: int = 300
    asset: str
    extra: dict[str, Any] = Field(default_factory=dict)

    _check_amount = field_validator("max_amount_required", mode="before")(_atomic)

    @property
    def amount(self) -> str:
        return self.max_amount_required

    def to_v2(self) -> PaymentRequirements:
        return PaymentRequirements(
            scheme=self.scheme,
            network=self.network,
            asset=self.asset,
            amount=self.max_amount_required,
            pay_to=self.pay_to,
            max_timeout_seconds=self.max_timeout_seconds,
            extra=self.extra,
        )


class PaymentRequired(_Model):
    """The v2 challenge, sent base64-encoded in ``PAYMENT-REQUIRED``."""

    x402_version: Literal[2] = 2
    error: str | None = None
    resource: ResourceInfo | None = None
    accepts: list[PaymentRequirements]
    extensions: dict[str, Any] | None = None


class PaymentRequiredV1(_Model):
    """The v1 challenge, sent as the JSON body of the 402."""

    x402_version: Literal[1] = 1
    error: str | None = None
    accepts: list[PaymentRequirementsV1]


class PaymentPayload(_Model):
    """The v2 paid retry, base64-encoded in ``PAYMENT-SIGNATURE``."""

    x402_version: Literal[2] = 2
    payload: dict[str, Any]
    accepted: PaymentRequirements
    resource: ResourceInfo | None = None
    extensions: dict[str, Any] | None = None

    @property
    def scheme(self) -> str:
        return self.accepted.scheme

    @property
    def network(self) -> str:
        return self.accepted.network


class PaymentPayloadV1(_Model):
    """The v1 paid retry, base64-encoded in ``X-PAYMENT``."""

    x402_version: Literal[1] = 1
    scheme: str
    network: str
    payload: dict[str, Any]


class VerifyResponse(_Model):
    is_valid: bool
    invalid_reason: str | None = None
    payer: str | None = None


class SettleResponse(_Model):
    """Sent back in ``PAYMENT-RESPONSE`` / ``X-PAYMENT-RESPONSE``.

    ``transaction`` holds the guarantee id; ``extra`` the request id and,
    once produced, the Core's certificate.
    """

    success: bool
    error_reason: str | None = None
    payer: str | None = None
    transaction: str = ""
    network: str = ""
    extra: dict[str, Any] | None = None


def encode_header(model: _Model) -> str:
    """base64(compact JSON) of a model, ready to use as a header value."""
    return base64.b64encode(model.to_json_bytes()).decode("ascii")


def decode_header_json(value: str | bytes) -> dict[str, Any]:
    """base64 → JSON object, refusing anything hostile with :class:`MalformedPayment`."""
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedPayment("payment header is not ASCII base64") from None
    elif not isinstance(value, bytes):
        raise MalformedPayment("payment header must be a string")
    value = value.strip()
    if len(value) > MAX_HEADER_BYTES:
        raise MalformedPayment(f"payment header larger than {MAX_HEADER_BYTES} bytes")
    if not value:
        raise MalformedPayment("payment header is empty")
    try:
        # Tolerate missing padding; reject any character outside the alphabet.
        raw = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPayment("payment header is not valid base64") from None
    try:
        # jiter (pydantic-core) caps nesting depth, so deep JSON fails fast here.
        data = pydantic_core.from_json(raw, cache_strings=False)
    except (ValueError, RecursionError):
        raise MalformedPayment("payment header is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedPayment("payment header must hold a JSON object")
    return data


def decode_payment_header(
    value: str | bytes, *, expected_version: int | None = None
) -> PaymentPayload | PaymentPayloadV1:
    """Decode ``PAYMENT-SIGNATURE`` / ``X-PAYMENT``.

    ``expected_version`` is the x402 version the header name implies
    (2 for ``PAYMENT-SIGNATURE``, 1 for ``X-PAYMENT``); a body claiming
    another version is refused rather than guessed at.
    """
    data = decode_header_json(value)
    version = data.get("x402Version")
    if expected_version is not None and version != expected_version:
        raise MalformedPayment(f"x402Version {version!r:.20} does not match the header used")
    model: type[PaymentPayload] | type[PaymentPayloadV1]
    if version == 2 and type(version) is int:
        model = PaymentPayload
    elif version == 1 and type(version) is int:
        model = PaymentPayloadV1
    else:
        raise MalformedPayment(f"unsupported x402Version {version!r:.20}")
    try:
        return model.model_validate(data)
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedPayment(f"payment header fields are invalid: {_first_error(exc)}") from None


def decode_payment_required(value: str | bytes) -> PaymentRequired:
    """Decode a v2 ``PAYMENT-REQUIRED`` header (buyer side)."""
    data = decode_header_json(value)
    try:
        return PaymentRequired.model_validate(data)
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedPayment(f"payment challenge is invalid: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        if errors:
            first = errors[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            return f"{where}: {first.get('msg', 'invalid')}"[:200]
    return str(exc)[:200]
