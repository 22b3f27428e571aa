"""Django-only behaviour: settings, system checks, request.payment, @paid, the async stack.

What every adapter does (challenges, payments, refunds…) lives in tests/conformance.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.apps import apps
from django.conf import settings
from django.core.checks import run_checks
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import Http404, HttpRequest, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path, re_path, register_converter
from django.views import View

if not settings.configured:  # the conformance builder may have configured them already
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="tests",
        INSTALLED_APPS=["fourmica_x402.adapters.django"],
        DATABASES={},
    )
    django.setup()

from fourmica_x402.adapters.django import PaymentMiddleware, conf, paid

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MIDDLEWARE = ["fourmica_x402.adapters.django.PaymentMiddleware"]
seen: list[Any] = []


@paid(price="$0.01", description="one item")
def item(request: HttpRequest, item_id: int) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"payer": request.payment.payer, "item": item_id})


@paid(price="$0.04")
def files(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse({"file": name})


@paid(price="$0.05")
async def aitem(request: HttpRequest, item_id: int) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"payer": request.payment.payer, "item": item_id})


@paid(price="$0.02")
def gone(request: HttpRequest) -> JsonResponse:
    raise Http404("sold out")  # Django answers 404; the middleware still sees the exception


@paid(price="$0.09")
def legacy(request: HttpRequest) -> JsonResponse:
    return JsonResponse({})


@paid(price="$0.06")
class Report(View):
    def get(self, request: HttpRequest, day: str) -> JsonResponse:
        return JsonResponse({"day": day})


@paid(price="$0.07")
def feed(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(f"line {i}\n".encode() for i in range(3))


def free(request: HttpRequest) -> JsonResponse:
    seen.append(request.payment)  # None: not a paid request
    return JsonResponse({"free": True})


class Custom:
    regex = "[a-z/]+"  # may match "/": priced as a wildcard

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(Custom, "custom")
URLS = types.ModuleType("django_adapter_urls")
URLS.urlpatterns = [  # type: ignore[attr-defined]
    path("free", free),
    path("gone", gone),
    path("feed", feed),
    path("items/<int:item_id>", item),
    path("async/<int:item_id>", aitem),
    path("api/", include([path("files/<path:name>", files)])),
    path("reports/<slug:day>/<custom:x>", Report.as_view()),
]
REGEX_URLS = types.ModuleType("django_adapter_regex_urls")
REGEX_URLS.urlpatterns = [re_path(r"^legacy/(\d+)$", legacy)]  # type: ignore[attr-defined]
sys.modules.update({URLS.__name__: URLS, REGEX_URLS.__name__: REGEX_URLS})


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


@pytest.fixture
def configured(core: Core) -> Iterator[None]:
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core, "ROUTES": {"GET /r": "$0.03"}}
    with override_settings(
        FOURMICA_X402=options,
        FOURMICA_X402_CONFIG=None,
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF=URLS.__name__,
    ):
        seen.clear()
        yield


def ids(**overrides: Any) -> list[str]:
    with override_settings(**overrides):
        return [m.id for m in run_checks(tags=["fourmica_x402"])]


def amount_of(resp: Any) -> str:
    assert resp.status_code == 402, resp.status_code
    return decode_payment_required(resp.headers["payment-required"]).accepts[0].amount


def test_settings_map_onto_payment_config(configured: None, core: Core) -> None:
    with override_settings(
        FOURMICA_X402={**settings.FOURMICA_X402, "PREFIX": "/pay", "SETTLE": "after"}
    ):
        config = conf.load()
    assert (config.pay_to, config.network, config.prefix, config.settle) == (
        SELLER,
        NETWORK,
        "/pay",
        "after",
    )
    assert config.core is core and list(config.routes) == [  # @paid views after the settings
        "GET /r",
        "GET /gone",  # @paid prices its methods only (GET by default): a POST is not charged
        "GET /feed",
        "GET /items/:item_id",
        "GET /async/:item_id",
        "GET /api/files/*",
        "GET /reports/:day/*",
    ]
    built = PaymentConfig(pay_to=SELLER, core=core, on_failure=print)
    with override_settings(FOURMICA_X402_CONFIG=built):
        loaded = conf.load()  # objects pass through; the built config wins over FOURMICA_X402
    assert (loaded.core, loaded.on_failure, loaded.prefix) == (core, print, "/x402")
    with override_settings(FOURMICA_X402_CONFIG=built, ROOT_URLCONF=REGEX_URLS.__name__):
        assert conf.load() is built  # no @paid route to add: the very object


def test_unknown_settings_are_named(configured: None) -> None:
    with (
        override_settings(FOURMICA_X402={"PAY_TO": SELLER, "PAY_TOO": SELLER, "ROOTES": {}}),
        pytest.raises(ConfigurationError, match=r"\['PAY_TOO', 'ROOTES'\]"),
    ):
        conf.load()


def test_system_checks(configured: None) -> None:
    assert type(apps.get_app_config("fourmica_x402")).__name__ == "FourmicaX402Config"
    assert ids() == []
    assert ids(FOURMICA_X402=None) == ["fourmica_x402.E001"]
    assert ids(FOURMICA_X402=["PAY_TO"]) == ["fourmica_x402.E001"]
    assert ids(FOURMICA_X402={"PAY_TO": SELLER, "ROUTES": {"GET /x": "ten"}}) == [
        "fourmica_x402.E002"
    ]
    assert ids(FOURMICA_X402={"PAY_TOO": SELLER}) == ["fourmica_x402.E002"]
    assert ids(FOURMICA_X402_CONFIG="nope") == ["fourmica_x402.E001"]
    assert ids(MIDDLEWARE=["django.middleware.common.CommonMiddleware"]) == ["fourmica_x402.W001"]
    assert ids(ROOT_URLCONF=REGEX_URLS.__name__) == ["fourmica_x402.W002"]


def test_paid_converts_url_converters(configured: None) -> None:
    gate = WSGIHandler()._middleware_chain.__wrapped__.gate
    keys = {route.key for route in gate.routes.routes}
    assert keys == {
        "GET /r",
        "GET /gone",
        "GET /feed",
        "GET /items/:item_id",
        "GET /async/:item_id",
        "GET /api/files/*",
        "GET /reports/:day/*",  # a class-based view; a custom converter becomes a wildcard
    }
    client = Client()
    assert amount_of(client.get("/items/7")) == "10000"
    assert gate.routes.match("POST", "/items/7") is None  # @paid prices GET (and HEAD) only
    assert amount_of(client.get("/api/files/a/b.txt")) == "40000"
    assert amount_of(client.get("/reports/monday/a/b")) == "60000"
    assert client.get("/free").status_code == 200 and seen == [None]


def pay(client: Any, core: Core, url: str, run: Any = lambda r: r) -> Any:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    req = decode_payment_required(run(client.get(url)).headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = run(client.post("/x402/tab", body, content_type="application/json")).json()
    name, value = payment_header(buyer, req, tab)
    return buyer, run(client.get(url, headers={name: value}))


def test_request_payment_in_a_view(configured: None, core: Core) -> None:
    buyer, resp = pay(Client(), core, "/items/3")
    assert resp.status_code == 200 and resp.json() == {"payer": buyer.address, "item": 3}
    (payment,) = seen
    assert (payment.payer, payment.amount, payment.route) == (
        buyer.address,
        10_000,
        "GET /items/:item_id",
    )
    assert "payment-response" in resp.headers


def test_a_view_exception_refunds_even_when_django_answers_4xx(
    configured: None, core: Core
) -> None:
    client = Client(raise_request_exception=False)
    buyer, resp = pay(client, core, "/gone")
    assert resp.status_code == 404
    gate = client.handler._middleware_chain.__wrapped__.gate
    record = gate.records.query(payer=buyer.address)[0]
    assert record.outcome == "refunded" and core.guarantee(record.guarantee_id).state == "voided"


def test_a_paid_stream_nobody_read_is_refunded(configured: None, core: Core) -> None:
    """The client left before the first chunk: Django closes the response unread."""
    client = Client()
    buyer, resp = pay(client, core, "/feed")
    assert resp.status_code == 200 and resp.streaming
    gate = client.handler._middleware_chain.__wrapped__.gate
    [record] = gate.records.query(payer=buyer.address)
    assert record.status == "settled"  # paid, the body not sent yet
    resp.close()
    [record] = gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == ("failed", "refunded")
    assert core.guarantee(record.guarantee_id).state == "voided"
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_paid_stream_read_to_the_end_is_delivered(configured: None, core: Core) -> None:
    client = Client()
    buyer, resp = pay(client, core, "/feed")
    assert b"".join(resp.streaming_content) == b"line 0\nline 1\nline 2\n"
    resp.close()  # after the end: nothing more happens
    gate = client.handler._middleware_chain.__wrapped__.gate
    [record] = gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == ("delivered", "delivered")


def test_async_view_on_the_async_stack(configured: None, core: Core) -> None:
    app = ASGIHandler()
    middleware = app._middleware_chain.__wrapped__
    assert isinstance(middleware, PaymentMiddleware) and middleware.async_mode
    client = AsyncClient()
    client.handler._middleware_chain = app._middleware_chain
    loop = asyncio.new_event_loop()
    try:
        buyer, resp = pay(client, core, "/async/5", loop.run_until_complete)
    finally:
        loop.close()
    assert resp.status_code == 200 and resp.json() == {"payer": buyer.address, "item": 5}
    assert seen[-1].amount == 50_000 and seen[-1].payer == buyer.address


def test_missing_django_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "django", None)
    monkeypatch.delitem(sys.modules, "fourmica_x402.adapters.django")
    with pytest.raises(ImportError, match=r'pip install "fourmica-x402\[django\]"'):
        importlib.import_module("fourmica_x402.adapters.django")
