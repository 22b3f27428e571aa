"""Django: one payment middleware for sync and async stacks.

    INSTALLED_APPS = [..., "fourmica_x402.adapters.django"]  # system checks
    MIDDLEWARE = [..., "fourmica_x402.adapters.django.PaymentMiddleware"]
    FOURMICA_X402 = {"PAY_TO": "0xYourAddress", "ROUTES": {"GET /premium": "$0.01"}}

Paid views read ``request.payment``; ``@paid(price=…)`` prices a view where it is defined
(every method it serves, or ``methods=``) and refuses to run it unpaid.
"""

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('this adapter needs Django: pip install "fourmica-x402[django]"') from exc

from .conf import paid
from .middleware import PaymentMiddleware

__all__ = ["PaymentMiddleware", "paid"]
