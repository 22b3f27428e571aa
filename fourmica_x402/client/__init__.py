"""The buyer side: httpx transports (and a ``requests`` adapter) that pay 402s under a spending
policy, with receipts.

    import httpx
    from fourmica_x402.client import PaymentTransport, SpendingPolicy, load_key

    policy = SpendingPolicy(max_per_request="$0.05", per_hour="$2")
    key = load_key(env="FOURMICA_X402_KEY")  # or key_file="buyer.json", password_env=…
    with httpx.Client(transport=PaymentTransport(key, policy=policy)) as client:
        with policy.task("summarise", budget="$0.50"):
            answer = client.get("https://api.example.com/premium")
        receipt = answer.extensions["fourmica_receipt"]

``requests`` users mount :class:`fourmica_x402.client.requests_adapter.PaymentAdapter` on a
session instead (it imports ``requests``, so it is not imported here); x402's own clients
take :class:`FourMicaCreditScheme` (``fourmica_x402.client.x402_scheme.register``, which
imports nothing of x402's; docs/x402-client.md). Refusals raise
:class:`~fourmica_x402.errors.PaymentRefused` subclasses carrying the receipt; they are never
retried (docs/buyer.md). :func:`discover` (and :func:`adiscover`) list a seller's offers and
their prices before anything is paid (docs/buyer.md, "Listing offers").
"""

from .certificates import fetch_certificate, fetch_public_key, verify_certificate
from .discovery import ListedOffer, ListedResource, adiscover, discover
from .flow import RECEIPT_KEY, BuyerFlow
from .jobs import AsyncStagedJob, StagedJob, StageFailed
from .keys import BuyerKey, load_key
from .policy import ApprovalRequest, Decision, SpendingPolicy, Task
from .receipts import Receipt, ReceiptLedger
from .streams import AsyncPaidStream, PaidStream, StreamFailed
from .transport import AsyncPaymentTransport, PaymentTransport
from .x402_scheme import AsyncFourMicaCreditScheme, FourMicaCreditScheme

__all__ = [
    "RECEIPT_KEY",
    "ApprovalRequest",
    "AsyncFourMicaCreditScheme",
    "AsyncPaidStream",
    "AsyncPaymentTransport",
    "AsyncStagedJob",
    "BuyerFlow",
    "BuyerKey",
    "Decision",
    "FourMicaCreditScheme",
    "ListedOffer",
    "ListedResource",
    "PaidStream",
    "PaymentTransport",
    "Receipt",
    "ReceiptLedger",
    "SpendingPolicy",
    "StageFailed",
    "StagedJob",
    "StreamFailed",
    "Task",
    "adiscover",
    "discover",
    "fetch_certificate",
    "fetch_public_key",
    "load_key",
    "verify_certificate",
]
