"""fourmica_x402: sell an API per request with the 4Mica credit flow on top of x402.

The curated public API lives here; submodules hold the details. Importing
this package never imports a web framework.
"""

from __future__ import annotations

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
from .guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    address_of,
    recover_signer,
    sign_claims,
)
from .networks import (
    Asset,
    Network,
    TokenAmount,
    default_asset,
    get_network,
    register_asset,
    register_network,
    to_atomic,
)
from .wire import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequired,
    PaymentRequiredV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    ResourceInfo,
    SettleResponse,
    VerifyResponse,
    decode_payment_header,
    encode_header,
)

__version__ = "0.1.0"

__all__ = [
    "Asset",
    "ConfigurationError",
    "Eip712Domain",
    "FourmicaError",
    "GuaranteeClaims",
    "GuaranteeRejected",
    "MalformedPayment",
    "Network",
    "PaymentError",
    "PaymentPayload",
    "PaymentPayloadV1",
    "PaymentRequired",
    "PaymentRequiredV1",
    "PaymentRequirements",
    "PaymentRequirementsV1",
    "Reason",
    "ResourceInfo",
    "SettleResponse",
    "SignedGuarantee",
    "Throttled",
    "TokenAmount",
    "Unavailable",
    "ValidationPolicy",
    "VerifyResponse",
    "__version__",
    "address_of",
    "decode_payment_header",
    "default_asset",
    "encode_header",
    "get_network",
    "recover_signer",
    "register_asset",
    "register_network",
    "sign_claims",
    "to_atomic",
]
