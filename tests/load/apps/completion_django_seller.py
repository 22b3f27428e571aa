"""The completion-queue seller as async Django (an ASGI app without a lifespan), for
``uvicorn --workers``. Env as :mod:`completion_seller` (SELLER_CORE, PAY_TO, SELLER_WINDOW,
SELLER_V2, SELLER_VALIDATION_TIMEOUT)."""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path


def premium(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"guarantee": request.payment.guarantee_id})  # type: ignore[attr-defined]


def free(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"free": True})


urlpatterns = [path("premium", premium), path("free", free)]

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1"],
    SECRET_KEY="completion-tests-only",
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["fourmica_x402.adapters.django.PaymentMiddleware"],
    INSTALLED_APPS=["fourmica_x402.adapters.django"],
    DATABASES={},
    FOURMICA_X402={
        "PAY_TO": os.environ["PAY_TO"],
        "NETWORK": "eip155:84532",
        "CORE": "sqlite:///" + os.environ["SELLER_CORE"],
        "ROUTES": {"GET /premium": "$0.01"},
        "DELIVERY_POLICY": os.environ.get("SELLER_V2") == "1",
        "COMPLETION_WINDOW": float(os.environ["SELLER_WINDOW"]),
    },
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
