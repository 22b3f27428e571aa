"""Django: a route priced from its body, behind a middleware that read the body first.

Django parses a multipart body from its stream for ``request.POST``; ``request.body`` is then
gone (``RawPostDataException``). A middleware listed before ours that reads ``request.POST``
leaves the gate no body to price (docs/protocol.md, "Reading the body")."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path

if not settings.configured:  # another suite may have configured them already
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="tests",
        INSTALLED_APPS=["fourmica_x402.adapters.django"],
        DATABASES={},
    )
    django.setup()

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
served: list[str] = []


def lenient(request: Any) -> str:
    """A seller's price callable that takes a body it cannot read for the cheap default."""
    try:
        return "$0.50" if b"dear" in request.read_body() else "$0.01"
    except Exception:
        return "$0.01"


def strict(request: Any) -> str:
    return "$0.50" if b"dear" in request.read_body() else "$0.01"


def upload(request: HttpRequest) -> JsonResponse:
    served.append(request.POST.get("model", ""))
    return JsonResponse({"model": request.POST.get("model")})


def reads_post(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """An audit middleware listed before ours: it logs the form fields."""

    def middleware(request: HttpRequest) -> Any:
        request.POST.get("model")
        return get_response(request)

    return middleware


MODULE = types.ModuleType("django_read_body_helpers")
MODULE.urlpatterns = [path("upload", upload)]  # type: ignore[attr-defined]
MODULE.reads_post = reads_post  # type: ignore[attr-defined]
sys.modules[MODULE.__name__] = MODULE
OURS = "fourmica_x402.adapters.django.PaymentMiddleware"


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


@pytest.mark.parametrize("price", [lenient, strict])
def test_a_body_read_by_a_middleware_before_ours_is_never_priced_as_unread(
    core: Core, price: Any
) -> None:
    """The audit middleware parsed the multipart form; the price callable's read raised
    RawPostDataException and, caught, priced the cheap default: the view served the dear
    form on a cheap payment (and uncaught it was a bare 500 ``pricing_failed``). Now a 500
    that names the misconfiguration, nothing charged, whatever the callable does."""
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core}
    options["ROUTES"] = {"POST /upload": {"price": price}}
    middleware = [f"{MODULE.__name__}.reads_post", OURS]
    with override_settings(
        FOURMICA_X402=options,
        FOURMICA_X402_CONFIG=None,
        MIDDLEWARE=middleware,
        ROOT_URLCONF=MODULE.__name__,
    ):
        client = Client()
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 1_000_000, network=NETWORK)
        with override_settings(MIDDLEWARE=[OURS]):  # the terms of a cheap upload
            challenge = Client().post("/upload", {"model": "cheap"})
        assert challenge.status_code == 402
        (req,) = decode_payment_required(challenge.headers["payment-required"]).accepts
        assert req.amount == "10000"
        tab = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
        opened = client.post("/x402/tab", tab, content_type="application/json").json()
        name, value = payment_header(buyer, req, opened)
        served.clear()
        resp = client.post("/upload", {"model": "dear"}, headers={name: value})
        assert resp.status_code == 500, (resp.status_code, resp.content[:200])
        assert resp.json()["error"] == "body_read_before_gate"
        assert served == [] and core.position(buyer.address, network=NETWORK).locked == 0
