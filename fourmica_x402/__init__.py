"""fourmica_x402: sell an API per request with the 4Mica credit flow on top of x402.

The curated public API lives here; submodules hold the details. Importing
this package never imports a web framework.
"""

from __future__ import annotations

from .config import PaymentConfig
from .core import Core, CoreConfig
from .errors import (
    ConfigurationError,
    CoreError,
    FourmicaError,
    GuaranteeRejected,
    MalformedPayment,
    PaymentError,
    Reason,
    Throttled,
    Unavailable,
)
from .facilitator import Facilitator, HttpFacilitator, LocalFacilitator
from .gate import DENY, GRANT, Gate, Payment
from .guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    address_of,
    recover_signer,
    sign_claims,
)
from .jobs import Job, Jobs, Stage
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
from .records import PaymentRecord, Records
from .routes import Offer, RouteConfig
from .streams import Slices
from .webhooks import Webhooks, verify_signature
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
    "Core",
    "CoreConfig",
    "CoreError",
    "DENY",
    "Eip712Domain",
    "Facilitator",
    "FourmicaError",
    "GRANT",
    "Gate",
    "GuaranteeClaims",
    "GuaranteeRejected",
    "HttpFacilitator",
    "Job",
    "Jobs",
    "LocalFacilitator",
    "MalformedPayment",
    "Network",
    "Offer",
    "Payment",
    "PaymentConfig",
    "PaymentError",
    "PaymentPayload",
    "PaymentPayloadV1",
    "PaymentRecord",
    "PaymentRequired",
    "PaymentRequiredV1",
    "PaymentRequirements",
    "PaymentRequirementsV1",
    "Reason",
    "Records",
    "ResourceInfo",
    "RouteConfig",
    "SettleResponse",
    "SignedGuarantee",
    "Slices",
    "Stage",
    "Throttled",
    "TokenAmount",
    "Unavailable",
    "ValidationPolicy",
    "VerifyResponse",
    "Webhooks",
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
    "verify_signature",
]
