"""The buyer side: httpx transports that pay 402s under a spending policy, with receipts.

    import httpx
    from fourmica_x402.client import PaymentTransport, SpendingPolicy

    policy = SpendingPolicy(max_per_request="$0.05", per_hour="$2")
    with httpx.Client(transport=PaymentTransport(KEY, policy=policy)) as client:
        with policy.task("summarise", budget="$0.50"):
            answer = client.get("https://api.example.com/premium")
        receipt = answer.extensions["fourmica_receipt"]

Refusals raise :class:`~fourmica_x402.errors.PaymentRefused` subclasses carrying
the receipt; they are never retried.
"""

from .flow import RECEIPT_KEY, BuyerFlow
from .policy import ApprovalRequest, Decision, SpendingPolicy, Task
from .receipts import Receipt, ReceiptLedger
from .transport import AsyncPaymentTransport, PaymentTransport

__all__ = [
    "RECEIPT_KEY",
    "ApprovalRequest",
    "AsyncPaymentTransport",
    "BuyerFlow",
    "Decision",
    "PaymentTransport",
    "Receipt",
    "ReceiptLedger",
    "SpendingPolicy",
    "Task",
]
