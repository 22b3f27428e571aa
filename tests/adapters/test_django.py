"""Django-only behaviour: settings, system checks, request.payment, @paid, the async stack.

Priced is the view Django's resolver serves (docs/architecture.md, "Which route is priced"):
``@paid`` prices every method of its view wherever it is routed (re_path, i18n_patterns), a
ROUTES entry names a URL pattern, and a @paid view never runs without a payment made for it.

What every adapter does (challenges, payments, refunds…) lives in tests/conformance.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import django
import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings
from django.conf.urls.i18n import i18n_patterns
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.locale import LocaleMiddleware
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path, re_path, register_converter
from django.urls.converters import get_converters
from django.utils import translation
from django.utils.decorators import async_only_middleware, method_decorator
from django.views import View
from django.views.decorators.cache import cache_page
from django.views.decorators.csrf import csrf_exempt

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
from fourmica_x402.wire import PaymentRequirementsV1, decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MIDDLEWARE = ["fourmica_x402.adapters.django.PaymentMiddleware"]
ROUTES = {"GET /r/:n": "$0.03"}  # the table names /r/<int:n>/ in its own notation
seen: list[Any] = []


@paid(price="$0.01", description="one item")
def item(request: HttpRequest, item_id: int) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"payer": request.payment.payer, "item": item_id})


@paid(price="$0.04")
def files(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse({"file": name})


def deep(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse({"deep": rest})


@paid(price="$0.05")
async def aitem(request: HttpRequest, item_id: int) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"payer": request.payment.payer, "item": item_id})


SLOW_STARTED: list[asyncio.Event] = []


@paid(price="$0.03")
async def aslow(request: HttpRequest) -> JsonResponse:
    SLOW_STARTED[-1].set()
    await asyncio.sleep(30)  # cancelled long before: the client leaves
    return JsonResponse({"late": True})  # pragma: no cover - never reached


@paid(price="$0.02")
def gone(request: HttpRequest) -> JsonResponse:
    raise Http404("sold out")  # Django answers 404; the middleware still sees the exception


@paid(price="$0.09")
def legacy(request: HttpRequest, n: str) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"legacy": n})


@paid(price="$0.08")  # no methods=: every method the view serves
def anything(request: HttpRequest) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"method": request.method, "payer": request.payment.payer})


@paid(price="$0.08", methods=["GET"])
def get_only(request: HttpRequest) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"payer": request.payment.payer})


@paid(price="$0.06")
class AsyncReport(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"payer": request.payment.payer})


@paid(price="$0.01")
def short(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(b"hello")
    response["Content-Length"] = "100"  # the body ends 95 bytes early
    return response


@paid(price="$0.01")
def longer(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(b"hello, and more than was declared")
    response["Content-Length"] = "5"  # the body goes on past it
    return response


CATALOG = JsonResponse({"catalog": ["a", "b"]})  # built once, answered to every buyer


@paid(price="$0.01")
def catalog(request: HttpRequest) -> JsonResponse:
    return CATALOG


@cache_page(60)
@paid(price="$0.01")
def cached(request: HttpRequest) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"doc": "paid content"})


@paid(price="$0.01")
def bulky(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"x" * (16 * 1024 * 1024))  # more than a socket's buffers hold


@paid(price="$0.01")
def wordy(request: HttpRequest) -> HttpResponse:  # GZip above ours halves it: still 8 MB
    return HttpResponse(os.urandom(8 * 1024 * 1024).hex(), content_type="text/plain")


@paid(price="$0.01")
def tagged(request: HttpRequest) -> JsonResponse:
    response = JsonResponse({"doc": "paid content"})
    response["ETag"] = '"v1"'
    return response


def by_table(request: HttpRequest, n: int) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"n": n, "payer": request.payment.payer})


@paid(price="$0.06")
class Report(View):
    def get(self, request: HttpRequest, day: str) -> JsonResponse:
        return JsonResponse({"day": day})


LEFT = threading.Event()  # set once the ASGI client below reported it left


@paid(price="$0.07")
def trickle(request: HttpRequest) -> StreamingHttpResponse:
    def lines() -> Iterator[bytes]:
        yield b"first\n"
        LEFT.wait(5)  # the rest is ready once the client has gone
        time.sleep(0.2)
        yield b"second\n"

    return StreamingHttpResponse(lines())


@async_only_middleware
def async_only(get_response: Any) -> Any:
    """A function middleware, async only."""

    async def middleware(request: HttpRequest) -> Any:
        return await get_response(request)

    return middleware


def sync_only(get_response: Any) -> Any:
    """A function middleware, sync only as Django's docs write one."""
    return lambda request: get_response(request)


@paid(price="$0.07")
def feed(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(f"line {i}\n".encode() for i in range(3))


class Proxied(View):
    """Answers every method in its own dispatch() (a proxy, a GraphQL view): no get/post."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"method": request.method})


@paid(price="$0.05")
class PaidProxied(Proxied):
    pass


class Fallback(View):
    """Serves the verbs it does not define like GET (a common fallback): every method."""

    def get(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"report": "paid content"})

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return self.get(request)


@paid(price="$0.05")
class PaidFallback(Fallback):
    pass


@paid(price="$0.05")
class Graph(View):
    """Answers POST in its dispatch() and GET in get() (a GraphQL endpoint, its IDE page)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method == "POST":
            seen.append(request.payment)
            return JsonResponse({"data": 42})
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ide": True})


def free(request: HttpRequest) -> JsonResponse:
    seen.append(request.payment)  # None: not a paid request
    return JsonResponse({"free": True})


def localized(request: HttpRequest) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"lang": request.LANGUAGE_CODE})


class Custom:
    regex = "[a-z/]+"  # may match "/": priced as a wildcard

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class SwitchUrlconf:
    """A middleware after ours that serves the request from another URLconf."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        request.urlconf = OTHER_URLS.__name__  # type: ignore[attr-defined]
        return self.get_response(request)


class Ledger(View):
    """Its GET is sold by a table entry; its POST is free. Its dispatch() only hands on to
    Django's (the usual idiom): the methods it serves are still its handlers'."""

    @method_decorator(csrf_exempt)
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"ledger": "paid content"})

    def post(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"posted": True})


class MethodOverride:
    """A middleware after ours that takes the method from ``X-HTTP-Method-Override``."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        override = request.META.pop("HTTP_X_HTTP_METHOD_OVERRIDE", None)
        if override:
            request.method = override.upper()
        return self.get_response(request)


class ViewMethodOverride(MethodOverride):
    """The same in ``process_view``, as django-method-override does it: Django runs it after
    ours, just before the view."""

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, *args: Any) -> None:
        override = request.META.pop("HTTP_X_HTTP_METHOD_OVERRIDE", None)
        if override:
            request.method = override.upper()


class TierRewrite:
    """A middleware after ours that serves ``/tier/<t>/<doc>`` from ``/tier/pro/<doc>`` when
    asked (``X-Tier: pro``): a path rewrite after the gate priced the request."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        if request.headers.get("X-Tier") == "pro":
            parts = request.path_info.split("/")  # "", "tier" or "mtier", tier, doc
            request.path_info = "/".join([*parts[:2], "pro", *parts[3:]])
        return self.get_response(request)


def tiered(request: HttpRequest, doc: str, tier: str) -> JsonResponse:
    """One view under several URL patterns (a tier each), each priced its own way."""
    seen.append(request.payment)
    return JsonResponse({"doc": doc, "tier": tier})


@paid(price=lambda request: "$1.00" if "/pro/" in request.path else "$0.01")
def marked_tiered(request: HttpRequest, doc: str, tier: str) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"doc": doc, "tier": tier})


class Outer:
    """A middleware listed above ours that answers with a page of its own after the gate saw
    the paid response (``X-Outer: replace``, a maintenance page)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        response = self.get_response(request)
        if request.headers.get("X-Outer") == "replace":
            return HttpResponse(b"down for maintenance", status=503)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        if request.headers.get("X-Outer") == "fallback":  # a cached page for a failed view
            return HttpResponse(b"cached", status=200)
        return None


class SameUrlconf:
    """A middleware that names the URLconf on every request, as django-hosts does."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        request.urlconf = settings.ROOT_URLCONF  # type: ignore[attr-defined]
        return self.get_response(request)


def article(request: HttpRequest, slug: str) -> JsonResponse:
    seen.append(request.payment)
    return JsonResponse({"slug": slug})


class Article:
    """A converter that answers a retired slug itself: Http404 (Django renders it a 404)."""

    regex = "[a-z]+"

    def to_python(self, value: str) -> str:
        if value == "retired":
            raise Http404("retired")
        return value

    def to_url(self, value: str) -> str:
        return value


if "custom" not in get_converters():  # the conformance app may share this process
    register_converter(Custom, "custom")
    register_converter(Article, "article")


@method_decorator(paid(price="$0.05"), name="dispatch")  # the whole view, Django's way
class DispatchPaid(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"payer": request.payment.payer})  # type: ignore[attr-defined]


@method_decorator([paid(price="$0.05"), csrf_exempt], name="dispatch")  # another decorator after
class StackedDispatchPaid(DispatchPaid):
    pass


class AsyncMethodPaid(View):
    @method_decorator(paid(price="$0.05"))
    async def get(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"payer": request.payment.payer})  # type: ignore[attr-defined]


class MethodPaid(View):
    """``@paid`` on a method (Django's ``method_decorator``): GET priced, POST the class's own."""

    @method_decorator(paid(price="$0.03"))
    def get(self, request: HttpRequest) -> JsonResponse:
        seen.append(request.payment)
        return JsonResponse({"payer": request.payment.payer})  # type: ignore[attr-defined]

    def post(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"posted": True})


URLS = types.ModuleType("django_adapter_urls")
URLS.urlpatterns = [  # type: ignore[attr-defined]
    path("free", free),
    path("gone", gone),
    path("feed", feed),
    path("trickle", trickle),
    path("items/<int:item_id>", item),
    path("async/<int:item_id>", aitem),
    path("aslow", aslow),
    path("api/", include([path("files/<path:name>", files)])),
    path("reports/<slug:day>/<custom:x>", Report.as_view()),
    path("deep/<slug:name>", deep),
    path("deep/<custom:rest>", deep),
    path("areport", AsyncReport.as_view()),
    path("anything", anything),
    path("get-only", get_only),
    path("r/<int:n>/", by_table),
    path("tagged", tagged),
    path("cached", cached),
    path("short", short),
    path("longer", longer),
    path("catalog", catalog),
    path("bulky", bulky),
    path("wordy", wordy),
    path("proxied", Proxied.as_view()),
    path("ledger", Ledger.as_view()),
    path("paid-proxied", PaidProxied.as_view()),
    path("graph", Graph.as_view()),
    path("method-paid", MethodPaid.as_view()),
    path("dispatch-paid", DispatchPaid.as_view()),
    path("stacked-dispatch-paid", StackedDispatchPaid.as_view()),
    path("async-method-paid", AsyncMethodPaid.as_view()),
    path("fallback", Fallback.as_view()),
    path("articles/<article:slug>", article),
    path("paid-fallback", PaidFallback.as_view()),
    *(path(f"tier/{t}/<slug:doc>", tiered, {"tier": t}) for t in ("preview", "basic", "pro")),
    *(path(f"mtier/{t}/<slug:doc>", marked_tiered, {"tier": t}) for t in ("basic", "pro")),
    re_path(r"^legacy/(\d+)$", legacy),
    *i18n_patterns(path("intl", anything), path("lreport", localized)),
]
UNPREFIXED_URLS = types.ModuleType("django_adapter_unprefixed_urls")
UNPREFIXED_URLS.urlpatterns = [  # type: ignore[attr-defined]
    *i18n_patterns(path("lreport", localized), prefix_default_language=False),
    re_path(r"^de/plain$", free),  # not under i18n_patterns: its prefix is its own
]


def by_wildcard(request: HttpRequest, **kwargs: str) -> JsonResponse:  # the table prices it
    seen.append(request.payment)
    return JsonResponse({"payer": request.payment.payer})  # type: ignore[attr-defined]


REGEX_URLS = types.ModuleType("django_adapter_regex_urls")
REGEX_URLS.urlpatterns = [  # type: ignore[attr-defined]
    path("api/list", by_wildcard),
    re_path(r"^api/(?P<rest>.+)$", by_wildcard),  # a catch-all, at the top of the URLconf
    re_path(r"^api2/", include([path("report", by_wildcard)])),  # the old url() style
    path("v1.0/list", by_wildcard),
    re_path(r"^v1\.0\/(?P<rest>.+)$", by_wildcard),  # escaped as re.escape() writes them
    path("gold/list", by_wildcard),
    re_path(r"(?i)^gold/(?P<rest>.+)\Z", by_wildcard),  # inline flags, another anchor
    path("latest/", by_wildcard),
    re_path(r"^latest$", by_wildcard),  # the same path without the slash
    path("quote$", by_wildcard),  # a path() route's "$" is a character of its path
]
OTHER_URLS = types.ModuleType("django_adapter_other_urls")
OTHER_URLS.urlpatterns = [path("elsewhere", anything)]  # type: ignore[attr-defined]
BAD_URLS = types.ModuleType("django_adapter_bad_urls")


@paid(price="$0.01", asset="0x000000000000000000000000000000000000dEaD")  # on which network?
def bad(request: HttpRequest) -> JsonResponse:
    return JsonResponse({})


BAD_URLS.urlpatterns = [path("bad", bad)]  # type: ignore[attr-defined]
HELPERS = types.ModuleType("django_adapter_helpers")
HELPERS.SwitchUrlconf = SwitchUrlconf  # type: ignore[attr-defined]
HELPERS.SameUrlconf = SameUrlconf  # type: ignore[attr-defined]
HELPERS.MethodOverride = MethodOverride  # type: ignore[attr-defined]
HELPERS.TierRewrite = TierRewrite  # type: ignore[attr-defined]
HELPERS.ViewMethodOverride = ViewMethodOverride  # type: ignore[attr-defined]
HELPERS.sync_only = sync_only  # type: ignore[attr-defined]
HELPERS.async_only = async_only  # type: ignore[attr-defined]
HELPERS.Outer = Outer  # type: ignore[attr-defined]
HELPERS.CountingMiddleware = None  # type: ignore[attr-defined]  # set below, once defined
HELPERS.Locale = type("Locale", (LocaleMiddleware,), {})  # type: ignore[attr-defined]
_MODULES = (URLS, UNPREFIXED_URLS, REGEX_URLS, OTHER_URLS, BAD_URLS, HELPERS)
sys.modules.update({m.__name__: m for m in _MODULES})


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


@contextmanager
def selling(core: Core, routes: dict[str, str]) -> Iterator[None]:
    """Settings that sell ``routes`` on ``core`` (FOURMICA_X402 alone: the conformance app's
    FOURMICA_X402_CONFIG may be set in this process)."""
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core, "ROUTES": routes}
    with override_settings(
        FOURMICA_X402=options,
        FOURMICA_X402_CONFIG=None,
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF=URLS.__name__,
    ):
        seen.clear()
        yield


@pytest.fixture
def configured(core: Core) -> Iterator[None]:
    with selling(core, ROUTES):
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
    # @paid views are not table entries: each prices the view Django resolves
    assert config.core is core and dict(config.routes) == ROUTES
    built = PaymentConfig(pay_to=SELLER, core=core, on_failure=print)
    with override_settings(FOURMICA_X402_CONFIG=built):
        assert conf.load() is built  # objects pass through; the built config wins


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
    assert ids(ROOT_URLCONF=OTHER_URLS.__name__) == ["fourmica_x402.E003"]  # no /r/<n>/ there
    with_typo = {**settings.FOURMICA_X402, "ROUTES": {**ROUTES, "GET /itmes/:id": "$0.01"}}
    assert ids(FOURMICA_X402=with_typo) == ["fourmica_x402.E003"]
    no_pay_to = {"NETWORK": NETWORK, "ROUTES": {}}  # every @paid view needs one
    assert ids(FOURMICA_X402=no_pay_to) == ["fourmica_x402.E002"]
    assert ids(ROOT_URLCONF=BAD_URLS.__name__, FOURMICA_X402={"PAY_TO": SELLER}) == [
        "fourmica_x402.E002"  # @paid(asset=…) without network=: checked with the settings'
    ]


def test_a_database_in_a_missing_directory_is_a_system_check_error(
    configured: None, tmp_path: Any
) -> None:
    """``manage.py check`` said "no issues" for a SQLite file the gate could never create."""
    for key in ("CORE", "RECORDS"):
        bad = {**settings.FOURMICA_X402, key: f"sqlite:///{tmp_path}/missing/x.db"}
        assert ids(FOURMICA_X402=bad) == ["fourmica_x402.E004"], key
    fine = {**settings.FOURMICA_X402, "CORE": f"sqlite:///{tmp_path}/x.db"}
    assert ids(FOURMICA_X402=fine) == []
    assert not (tmp_path / "x.db").exists()  # a check creates nothing


def test_a_table_entry_naming_no_url_pattern_fails_at_start_up(configured: None) -> None:
    with_typo = {**settings.FOURMICA_X402, "ROUTES": {**ROUTES, "GET /itmes/:id": "$0.01"}}
    with override_settings(FOURMICA_X402=with_typo):
        with pytest.raises(ConfigurationError, match="/itmes/:id"):
            WSGIHandler()
        with pytest.raises(ConfigurationError, match="/itmes/:id"):
            ASGIHandler()
    only = {"PAY_TO": SELLER, "CORE": settings.FOURMICA_X402["CORE"]}  # not ./fourmica_x402.db
    bad = override_settings(ROOT_URLCONF=BAD_URLS.__name__, FOURMICA_X402=only)
    with bad, pytest.raises(ConfigurationError, match="not registered"):
        WSGIHandler()  # a @paid price the settings make invalid


@pytest.mark.parametrize(
    ("urlconf", "urls"),
    [
        (URLS, ["/en/lreport", "/de/lreport", "/fr/lreport"]),
        (UNPREFIXED_URLS, ["/lreport", "/de/lreport", "/fr/lreport"]),
    ],
)
@pytest.mark.parametrize("named", [False, True], ids=["root-urlconf", "request-urlconf"])
def test_a_table_entry_under_i18n_patterns_prices_the_view_in_every_language(
    configured: None, core: Core, urlconf: Any, urls: list[str], named: bool
) -> None:
    """``GET /lreport`` names the route without its language prefix: every prefix is that
    route. Priced only under the start-up language, /de/lreport used to run unpaid; and so
    did every language once a middleware named the URLconf on the request."""
    table = {"GET /lreport": "$0.04"}
    options = {**settings.FOURMICA_X402, "ROUTES": table}
    locale = ["django.middleware.locale.LocaleMiddleware", *MIDDLEWARE]
    if named:
        locale.insert(1, "django_adapter_helpers.SameUrlconf")
    urlconf_and_table = override_settings(
        FOURMICA_X402=options, MIDDLEWARE=locale, ROOT_URLCONF=urlconf.__name__
    )
    # LocaleMiddleware leaves the language it activates on this thread: undone at the end.
    with urlconf_and_table, translation.override(None):
        client = Client()
        for url in urls:
            assert amount_of(client.get(url)) == "40000", url
        assert seen == []
        buyer, resp = pay(client, core, "/de/lreport")
        assert resp.status_code == 200 and resp.json() == {"lang": "de"}
        assert seen[0].payer == buyer.address and seen[0].route == "GET /lreport"
        assert core.position(buyer.address, network=NETWORK).locked == 40_000
        if urlconf is UNPREFIXED_URLS:  # a pattern outside i18n_patterns keeps its prefix
            assert client.get("/de/plain").status_code == 200
        with_prefix = {**options, "ROUTES": {"GET /de/lreport": "$0.04"}}
        refused = pytest.raises(ConfigurationError, match="/lreport")
        with override_settings(FOURMICA_X402=with_prefix), refused:
            WSGIHandler()  # names no route: the language prefix is not part of it


def test_locale_middleware_after_ours_with_i18n_patterns_is_refused(configured: None) -> None:
    """Listed after ours, LocaleMiddleware activates the language only once we resolved the
    URL under another one: localized views would run unpaid. The system check says so
    (E005) and the middleware refuses to start."""
    from fourmica_x402.adapters.django.checks import check_middleware

    table = {**settings.FOURMICA_X402, "ROUTES": {"GET /lreport": "$0.04"}}
    # Django's own, or a project's subclass of it (a language from a cookie first…)
    for locale in ("django.middleware.locale.LocaleMiddleware", "django_adapter_helpers.Locale"):
        after = [*MIDDLEWARE, locale]
        with override_settings(FOURMICA_X402=table, MIDDLEWARE=after, ROOT_URLCONF=URLS.__name__):
            assert [m.id for m in check_middleware()] == ["fourmica_x402.E005"], locale
            with pytest.raises(ImproperlyConfigured, match="LocaleMiddleware must come before"):
                WSGIHandler()
    before = ["django.middleware.locale.LocaleMiddleware", *MIDDLEWARE]
    with override_settings(FOURMICA_X402=table, MIDDLEWARE=before, ROOT_URLCONF=URLS.__name__):
        assert check_middleware() == []


def test_a_page_cache_read_before_ours_is_refused(configured: None, core: Core) -> None:
    """``cache_page`` keeps the paid response before ours marks it ``private, no-store``: a
    FetchFromCacheMiddleware listed before ours served that copy to every later request,
    unpaid. The system check says so (E006) and the middleware refuses to start."""
    from fourmica_x402.adapters.django.checks import check_middleware

    fetch, update = "django.middleware.cache.FetchFromCacheMiddleware", "UpdateCacheMiddleware"
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    first = [f"django.middleware.cache.{update}", fetch, *MIDDLEWARE]
    for before in (first, ["django.middleware.cache.CacheMiddleware", *MIDDLEWARE]):
        with override_settings(MIDDLEWARE=before, CACHES=caches):
            assert [m.id for m in check_middleware()] == ["fourmica_x402.E006"]
            with pytest.raises(ImproperlyConfigured, match="FetchFromCacheMiddleware must"):
                WSGIHandler()
    after = [f"django.middleware.cache.{update}", *MIDDLEWARE, fetch]  # Django's own order
    with override_settings(MIDDLEWARE=after, CACHES=caches):
        assert check_middleware() == []
        client = Client()
        buyer, resp = pay(client, core, "/cached")
        assert resp.status_code == 200 and seen[0].payer == buyer.address
        assert amount_of(client.get("/cached")) == "10000"  # the cached copy: paid for again


@pytest.mark.parametrize(
    "bad",
    [
        {"price": "ten dollars"},
        {"price": "$0.01", "pay_to": "0xnot-an-address"},
        {"price": "$0.01", "network": "eip155:999999"},
        {"price": "$0.01", "max_timeout_seconds": 0},
        {},  # no price
    ],
)
def test_a_bad_paid_price_fails_when_the_view_is_decorated(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="@paid"):
        paid(**bad)


def test_a_custom_converter_matching_slashes_is_priced_by_a_wildcard_entry(
    configured: None, core: Core
) -> None:
    """``<custom:rest>`` (its regex holds "/") spans segments as ``<path:…>`` does: only the
    ``*`` entry prices it, whatever the table's order."""
    table = {"GET /deep/:name": "$0.01", "GET /deep/*": "$1.00"}
    for routes in (table, dict(reversed(table.items()))):
        with override_settings(FOURMICA_X402={**settings.FOURMICA_X402, "ROUTES": routes}):
            client = Client()
            assert amount_of(client.get("/deep/a/b")) == "1000000"
            assert amount_of(client.get("/deep/monday")) == "10000"
            buyer, resp = pay(client, core, "/deep/a/b")
            assert resp.status_code == 200 and resp.json() == {"deep": "a/b"}
            assert core.position(buyer.address, network=NETWORK).locked == 1_000_000


def test_two_prices_on_one_view_fail_where_it_is_decorated() -> None:
    """``@paid`` twice on a view or a class fails; a subclass of a priced class sets its own."""

    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse({})

    with pytest.raises(ConfigurationError, match="more than one price"):
        paid(price="$0.01")(paid(price="$1.00")(view))

    class Dearer(Report):
        pass

    with pytest.raises(ConfigurationError, match="more than one price"):
        paid(price="$0.01")(paid(price="$1.00")(type("Twice", (View,), {})))
    assert paid(price="$9.00")(Dearer) is Dearer


def test_paid_prices_the_view_django_resolved(configured: None) -> None:
    client = Client()
    assert amount_of(client.get("/items/7")) == "10000"
    assert amount_of(client.post("/items/7")) == "10000"  # every method the view serves
    assert amount_of(client.get("/api/files/a/b.txt")) == "40000"
    assert amount_of(client.get("/reports/monday/a/b")) == "60000"  # a class, a custom converter
    assert client.post("/reports/monday/a/b").status_code == 405  # a method it does not serve
    assert amount_of(client.get("/r/5/")) == "30000"  # the table entry, in its own notation
    assert client.get("/free").status_code == 200 and seen == [None]


def header(client: Any, core: Core, url: str, method: str = "GET", run: Any = lambda r: r) -> Any:
    """A funded buyer and a valid payment header for ``method url`` (challenge, tab, sign)."""
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    challenge = run(client.generic(method, url))
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = run(client.post("/x402/tab", body, content_type="application/json")).json()
    name, value = payment_header(buyer, req, tab)
    return buyer, {name: value}


def pay(client: Any, core: Core, url: str, run: Any = lambda r: r, method: str = "GET") -> Any:
    buyer, headers = header(client, core, url, method, run)
    return buyer, run(client.generic(method, url, headers=headers))


def test_a_content_length_of_digits_int_refuses_is_no_500(configured: None, core: Core) -> None:
    """'²' is a digit to ``str.isdigit`` but not to ``int``; Django reads such a length as 0."""
    client = Client()
    assert client.get("/free", CONTENT_LENGTH="\xb2").status_code == 200
    assert client.get("/no-such-page", CONTENT_LENGTH="\xb2").status_code == 404


def test_a_class_view_answering_in_its_own_dispatch_is_priced_for_every_method(
    core: Core,
) -> None:
    """A class-based view whose dispatch() answers the request itself (no get/post methods)
    serves every method: its table entry and its @paid price them all, and it never runs
    unpaid (it was priced for OPTIONS only, so GET and POST ran free)."""
    with selling(core, {"POST /proxied": "$0.02", "* /paid-proxied": "$0.05"}):
        client = Client()
        assert client.post("/proxied").status_code == 402  # was refused at start-up
        for method in ("GET", "POST", "PUT", "DELETE"):
            assert client.generic(method, "/paid-proxied").status_code == 402, method
            assert client.generic(method, "/graph").status_code == 402, method
        assert seen == []
        allowed = client.options("/paid-proxied")
        assert allowed.status_code == 200 and "POST" in allowed["Allow"] and seen == []
        buyer, resp = pay(client, core, "/paid-proxied", method="POST")
        assert resp.status_code == 200 and resp.json() == {"method": "POST"}
        assert [p.payer for p in seen] == [buyer.address]
        assert core.position(buyer.address, network=NETWORK).locked == 50_000


def test_a_converter_answering_http404_itself_is_djangos_404_not_refused(core: Core) -> None:
    """The gate asks Django which view a request reaches; a converter raising Http404 there
    made the gate answer 400 unroutable_path instead of Django's 404."""
    with selling(core, {"GET /articles/<article:slug>": "$0.02"}):
        client = Client()
        assert client.get("/articles/retired").status_code == 404
        assert amount_of(client.get("/articles/fresh")) == "20000"
        assert seen == [] and core.guarantees() == []


def test_a_class_view_answering_other_verbs_itself_never_runs_them_unpaid(core: Core) -> None:
    """A class-based view whose http_method_not_allowed() serves the verbs it does not define
    (like GET) serves every method: they were passed through unpriced, and its paid GET ran
    for POST, DELETE or any made-up verb with no payment."""
    with selling(core, {"GET /fallback": "$0.02"}):
        client = Client()
        for method in ("POST", "DELETE", "PATCH", "FOO"):
            assert client.generic(method, "/fallback").status_code == 405, method
            assert client.generic(method, "/paid-fallback").status_code == 402, method
        assert seen == [] and core.guarantees() == []
        buyer, resp = pay(client, core, "/paid-fallback", method="POST")
        assert resp.status_code == 200 and resp.json() == {"report": "paid content"}
        assert [p.payer for p in seen] == [buyer.address]
        assert core.position(buyer.address, network=NETWORK).locked == 50_000


def test_a_middleware_after_ours_that_changes_the_method_never_runs_a_priced_view_unpaid(
    configured: None, core: Core
) -> None:
    """A middleware listed after ours changes the request once the gate priced it (a method
    override): the view Django then runs is checked against what the gate priced, and a
    priced one the request did not pay for is refused (503) rather than served free."""
    overriding = [*MIDDLEWARE, "django_adapter_helpers.MethodOverride"]
    table = {**settings.FOURMICA_X402, "ROUTES": {"GET /ledger": "$0.02"}}
    with override_settings(MIDDLEWARE=overriding, FOURMICA_X402=table):
        client = Client()
        refused = client.post("/ledger", HTTP_X_HTTP_METHOD_OVERRIDE="GET")
        assert (refused.status_code, refused.json()["error"]) == (503, "payment_not_enforced")
        assert seen == []
        assert client.post("/ledger").status_code == 200 and seen == [None]  # free: unchanged
        buyer, resp = pay(client, core, "/ledger")
        assert resp.status_code == 200 and resp.json() == {"ledger": "paid content"}
        assert seen[-1].payer == buyer.address


def test_a_path_rewrite_after_ours_never_serves_another_route_of_the_same_view(
    core: Core,
) -> None:
    """One view under several URL patterns, priced per pattern (and free under one): a
    middleware after ours that rewrites the path made Django run the $1.00 route for a $0.01
    payment, and the free route's request ran the priced one unpaid. The check compared the
    view, which is the same under every pattern; it compares the route."""
    table = {"GET /tier/basic/:doc": "$0.01", "GET /tier/pro/:doc": "$1.00"}
    with (
        selling(core, table),
        override_settings(MIDDLEWARE=[*MIDDLEWARE, "django_adapter_helpers.TierRewrite"]),
    ):
        client = Client()
        _, paying = header(client, core, "/tier/basic/x")
        upgraded = client.get("/tier/basic/x", headers={**paying, "X-Tier": "pro"})
        assert (upgraded.status_code, upgraded.json()["error"]) == (503, "payment_not_enforced")
        unpaid = client.get("/tier/preview/x", headers={"X-Tier": "pro"})
        assert (unpaid.status_code, unpaid.json()["error"]) == (503, "payment_not_enforced")
        assert seen == []
        assert client.get("/tier/preview/x").json() == {"doc": "x", "tier": "preview"}
        buyer, resp = pay(client, core, "/tier/basic/y")  # unchanged: served as paid
        assert resp.json() == {"doc": "y", "tier": "basic"} and seen[-1].payer == buyer.address


def test_a_path_rewrite_after_ours_never_serves_a_paid_view_under_another_pattern(
    configured: None, core: Core
) -> None:
    """A @paid view under two URL patterns, its price read from the path: a payment made
    under one pattern ran the view under the other, at the other's price."""
    with override_settings(MIDDLEWARE=[*MIDDLEWARE, "django_adapter_helpers.TierRewrite"]):
        client = Client()
        assert amount_of(client.get("/mtier/pro/x")) == "1000000"
        _, paying = header(client, core, "/mtier/basic/x")
        upgraded = client.get("/mtier/basic/x", headers={**paying, "X-Tier": "pro"})
        assert (upgraded.status_code, upgraded.json()["error"]) == (503, "payment_not_enforced")
        assert seen == []
        buyer, resp = pay(client, core, "/mtier/basic/y")  # unchanged: served as paid
        assert resp.json() == {"doc": "y", "tier": "basic"} and seen[-1].payer == buyer.address


def test_a_method_override_after_ours_never_serves_a_method_priced_higher(core: Core) -> None:
    """A GET paid at its price, turned into a POST the table prices higher by a middleware
    after ours: the payment was taken for the route, whatever its method."""
    table = {"GET /ledger": "$0.02", "POST /ledger": "$1.00"}
    with (
        selling(core, table),
        override_settings(MIDDLEWARE=[*MIDDLEWARE, "django_adapter_helpers.MethodOverride"]),
    ):
        client = Client()
        _, paying = header(client, core, "/ledger")
        posted = client.get("/ledger", headers={**paying, "X-HTTP-Method-Override": "POST"})
        assert (posted.status_code, posted.json()["error"]) == (503, "payment_not_enforced")
        assert seen == []


@pytest.mark.parametrize("helper", ["MethodOverride", "ViewMethodOverride"])
def test_a_payment_is_not_kept_for_a_free_method_a_later_middleware_turns_it_into(
    core: Core, helper: str
) -> None:
    """A GET paid at its price, turned into the free POST by a middleware after ours (in
    ``__call__`` or in ``process_view``): the free handler answered 200 and the buyer was
    charged for a GET that never ran. Refused now (503), and the payment is not kept."""
    table = {"GET /ledger": "$0.02"}
    with (
        selling(core, table),
        override_settings(MIDDLEWARE=[*MIDDLEWARE, f"django_adapter_helpers.{helper}"]),
    ):
        client = Client()
        buyer, paying = header(client, core, "/ledger")
        posted = client.get("/ledger", headers={**paying, "X-HTTP-Method-Override": "POST"})
        assert (posted.status_code, posted.json()["error"]) == (503, "payment_not_enforced")
        assert [g.state for g in core.guarantees()] in (["voided"], ["cancelled"])
        assert core.position(buyer.address, network=NETWORK).locked == 0
        assert client.post("/ledger").status_code == 200  # free, unpaid: unchanged


def test_a_method_override_in_a_later_process_view_never_delivers_a_priced_view_unpaid(
    core: Core,
) -> None:
    """A middleware after ours that changes the method in ``process_view`` does so after our
    check, which ran in ours: a free PATCH turned into the priced GET was served unpaid, and a
    paid GET turned into a POST priced higher at the GET's price. Django runs the view then,
    but its answer is withheld (503) and the payment made for another method refunded."""
    table = {"GET /ledger": "$0.02", "POST /ledger": "$1.00"}
    with (
        selling(core, table),
        override_settings(MIDDLEWARE=[*MIDDLEWARE, "django_adapter_helpers.ViewMethodOverride"]),
    ):
        client = Client()
        free = client.generic("PATCH", "/ledger", HTTP_X_HTTP_METHOD_OVERRIDE="GET")
        assert (free.status_code, free.json()["error"]) == (503, "payment_not_enforced")
        _, paying = header(client, core, "/ledger")
        posted = client.get("/ledger", headers={**paying, "X-HTTP-Method-Override": "POST"})
        assert (posted.status_code, posted.json()["error"]) == (503, "payment_not_enforced")
        assert b"posted" not in posted.content and b"paid content" not in free.content
        assert [g.state for g in core.guarantees()] in (["voided"], ["cancelled"])
        buyer, resp = pay(client, core, "/ledger")  # unchanged: served as paid
        assert resp.json() == {"ledger": "paid content"} and seen[-1].payer == buyer.address


def test_request_payment_in_a_view(configured: None, core: Core) -> None:
    buyer, resp = pay(Client(), core, "/items/3")
    assert resp.status_code == 200 and resp.json() == {"payer": buyer.address, "item": 3}
    (payment,) = seen
    assert (payment.payer, payment.amount, payment.route) == (
        buyer.address,
        10_000,
        "* /items/<int:item_id>",  # every method of the URL pattern, as Django writes it
    )
    assert "payment-response" in resp.headers


def test_a_table_entry_on_a_function_view_refuses_the_methods_it_does_not_price(
    configured: None, core: Core
) -> None:
    """A function view serves every method: "GET /r/:n" left POST, PUT and DELETE free."""
    client = Client()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        resp = client.generic(method, "/r/3/")
        assert resp.status_code == 405, (method, resp.status_code)
        assert resp.json()["error"] == "method_not_allowed"
        assert resp["Allow"] == "GET, HEAD, OPTIONS"
    options = client.options("/r/3/")  # never priced, and the view would serve it whole
    assert options.status_code == 200 and options.content == b""
    assert options["Allow"] == "GET, HEAD, OPTIONS"
    assert seen == [] and core.guarantees() == []
    assert amount_of(client.get("/r/3/")) == "30000"  # GET is still sold
    buyer, resp = pay(client, core, "/r/3/")
    assert resp.status_code == 200 and resp.json() == {"n": 3, "payer": buyer.address}


def test_a_paid_get_is_served_whole_past_an_outer_conditional_get_middleware(
    configured: None, core: Core
) -> None:
    """ConditionalGetMiddleware outside ours turned the paid 200 it counted into a 304/412."""
    outer = ["django.middleware.http.ConditionalGetMiddleware", *MIDDLEWARE]
    with override_settings(MIDDLEWARE=outer):
        client = Client()
        assert client.get("/tagged", headers={"If-None-Match": '"v1"'}).status_code == 402
        for condition in ({"If-None-Match": '"v1"'}, {"If-Match": '"other"'}):
            _, headers = header(client, core, "/tagged", "GET", lambda r: r)
            resp = client.get("/tagged", headers={**headers, **condition})
            assert resp.status_code == 200 and resp.json() == {"doc": "paid content"}
    assert [g.amount for g in core.guarantees()] == [10_000, 10_000]


def outcomes(client: Any, buyer: TestBuyer) -> list[tuple[str, str | None]]:
    """The buyer's records as (status, outcome), once queued writes are committed."""
    layer = client.handler._middleware_chain.__wrapped__
    while not isinstance(layer, PaymentMiddleware):  # under middleware listed above ours
        layer = layer.get_response.__wrapped__
    gate = layer.gate
    gate.flush()
    return [(r.status, r.outcome) for r in gate.records.query(payer=buyer.address)]


def test_a_paid_answer_shorter_than_its_content_length_is_refunded(
    configured: None, core: Core
) -> None:
    """The server sent 5 of the 100 bytes the view declared: not received whole."""
    client = Client()
    buyer, resp = pay(client, core, "/short")
    assert resp.status_code == 200 and resp.content == b"hello"
    assert outcomes(client, buyer) == [("failed", "refunded")]
    assert core.position(buyer.address, network=NETWORK).locked == 0
    app = ASGIHandler()  # the same on the async stack
    buyer, resp = pay_on_the_async_stack(app, core, "/short")
    assert resp.status_code == 200
    app._middleware_chain.__wrapped__.gate.flush()
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_response_a_view_answers_again_is_served_and_charged_each_time(
    configured: None, core: Core
) -> None:
    """A view may answer every request with one response object it built once (a catalog):
    the second paid request for it was a 500 (a payment taken, nothing delivered), its class
    already swapped by the first for one watching the server's writes."""
    client = Client()
    for _ in range(3):
        buyer, resp = pay(client, core, "/catalog")
        assert resp.status_code == 200 and resp.json() == {"catalog": ["a", "b"]}
        assert outcomes(client, buyer) == [("delivered", "delivered")]


def test_a_response_a_view_answers_again_is_judged_for_each_buyer_apart(
    configured: None, core: Core
) -> None:
    """A response object built once (a catalog) is answered to two buyers at once under a
    threaded WSGI server. The first one's ``close()`` ran the second's completion too (both
    were kept on the one object): the second buyer, whose connection broke before the server
    wrote a byte, was charged for an answer it never got."""
    from wsgiref.util import setup_testing_defaults

    app = WSGIHandler()
    client = Client()
    served: list[tuple[TestBuyer, Any]] = []
    for _ in range(2):  # both answered before the server writes either
        buyer, headers = header(client, core, "/catalog")
        environ = {"PATH_INFO": "/catalog", "REQUEST_METHOD": "GET"}
        environ |= {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}
        setup_testing_defaults(environ)
        served.append((buyer, app(environ, lambda status, headers, exc_info=None: None)))
    (first, whole), (second, cut) = served
    assert b"".join(whole) == CATALOG.content
    whole.close()  # the first buyer got it all
    chunks = iter(cut)
    next(chunks)  # the server's write of it failed: the second buyer's connection broke
    cut.close()
    unwrapped(app).gate.flush()
    states = [[g.state for g in core.guarantees(address=b.address)] for b in (first, second)]
    assert states == [["payable"], ["voided"]]


def test_a_whole_answer_longer_than_its_content_length_is_refunded_on_the_async_stack(
    configured: None, core: Core
) -> None:
    """An ASGI server refuses a body longer than its declared ``Content-Length``: uvicorn sent
    the paid answer's head alone, then failed the request, and the buyer was charged for it
    (Django counted the answer delivered when the view returned it)."""
    app = ASGIHandler()
    buyer, resp = pay_on_the_async_stack(app, core, "/longer")
    assert resp.status_code == 200
    gate = unwrapped(app).gate
    gate.flush()
    [record] = gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == ("failed", "refunded")
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_paid_stream_a_middleware_above_ours_replaces_is_refunded(
    configured: None, core: Core
) -> None:
    """A middleware above ours answers with a page of its own: the paid stream is neither read
    nor closed, and the gate, told when a stream ends, never heard of it (a G-v2 lock held
    until its deadline, a G-v1 guarantee charged). It is refunded once collected."""
    with override_settings(MIDDLEWARE=["django_adapter_helpers.Outer", *MIDDLEWARE]):
        client = Client()
        for outer, sent in (("replace", 503), ("no", 200)):
            buyer, headers = header(client, core, "/feed")
            resp = client.get("/feed", headers={**headers, "X-Outer": outer})
            assert resp.status_code == sent
            if sent == 200:
                assert b"".join(resp.streaming_content) == b"line 0\nline 1\nline 2\n"
                resp.close()
            del resp
            gc.collect()  # the dropped response is in a reference cycle of Django's
            for _ in range(200):  # bounded: its refund is queued to a thread
                if outcomes(client, buyer)[0][1] is not None:
                    break
                time.sleep(0.01)
            locked = core.position(buyer.address, network=NETWORK).locked
            if sent == 200:
                assert outcomes(client, buyer) == [("delivered", "delivered")] and locked
            else:
                assert outcomes(client, buyer) == [("failed", "refunded")] and locked == 0


def test_a_site_under_a_script_name_advertises_its_urls_under_it(
    configured: None, core: Core
) -> None:
    """Served under SCRIPT_NAME /shop, the tab endpoint at /x402/tab was out of the site."""
    client = Client(SCRIPT_NAME="/shop")
    challenge = decode_payment_required(client.get("/items/3").headers["payment-required"])
    assert challenge.resource is not None
    assert challenge.resource.url == "http://testserver/shop/items/3"
    req = challenge.accepts[0]
    assert req.extra["tabEndpoint"] == "http://testserver/shop/x402/tab"
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = client.post("/x402/tab", body, content_type="application/json")  # below SCRIPT_NAME
    assert tab.status_code == 200, tab.content
    name, value = payment_header(buyer, req, tab.json())
    resp = client.get("/items/3", headers={name: value})
    assert resp.status_code == 200 and resp.json() == {"payer": buyer.address, "item": 3}


def test_a_view_exception_refunds_even_when_django_answers_4xx(
    configured: None, core: Core
) -> None:
    client = Client(raise_request_exception=False)
    buyer, resp = pay(client, core, "/gone")
    assert resp.status_code == 404
    gate = client.handler._middleware_chain.__wrapped__.gate
    record = gate.records.query(payer=buyer.address)[0]
    assert record.outcome == "refunded" and core.guarantee(record.guarantee_id).state == "voided"


def test_a_view_exception_an_outer_middleware_answers_with_a_2xx_is_charged(
    configured: None, core: Core
) -> None:
    """A middleware above ours answers a view's exception with a 200 of its own (a cached
    page): the buyer got it with a result header saying charged, and the guarantee was
    voided. Judged by the status that went out now, as on the other adapters."""
    with override_settings(MIDDLEWARE=["django_adapter_helpers.Outer", *MIDDLEWARE]):
        client = Client()
        buyer, headers = header(client, core, "/gone")
        resp = client.get("/gone", headers={**headers, "X-Outer": "fallback"})
        assert (resp.status_code, resp.content) == (200, b"cached")
        assert outcomes(client, buyer) == [("delivered", "delivered")]
        [charged] = core.guarantees(address=buyer.address)
        assert charged.state != "voided" and core.position(buyer.address, network=NETWORK).locked
        resp = client.get("/gone", headers=header(client, core, "/gone")[1])
        assert resp.status_code == 404  # the view's own exception, Django's 404: refunded


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


def test_a_sync_stream_on_the_async_stack_is_metered_as_it_is_sent(
    configured: None, core: Core
) -> None:
    """Under ASGI, Django read a sync iterator (a StreamingHttpResponse of a generator, a
    FileResponse) whole in a thread before sending a byte: the gate counted it delivered and
    charged a client that left. It is handed over chunk by chunk now, as an async iterator."""
    app = ASGIHandler()
    client = AsyncClient()
    client.handler._middleware_chain = app._middleware_chain
    gate = app._middleware_chain.__wrapped__.gate
    loop = asyncio.new_event_loop()
    try:
        buyer, resp = pay(client, core, "/feed", loop.run_until_complete)
        assert resp.status_code == 200 and resp.is_async
        [record] = gate.records.query(payer=buyer.address)
        assert record.status == "settled"  # nothing sent yet: not delivered

        async def first_chunk_then_leave() -> bytes:
            chunks = resp.streaming_content.__aiter__()
            first: bytes = await chunks.__anext__()
            await chunks.aclose()  # the client left after one chunk
            await sync_to_async(resp.close)()  # as Django's ASGI handler ends a response
            return first

        assert loop.run_until_complete(first_chunk_then_leave()) == b"line 0\n"
    finally:
        loop.close()
    gate.flush()
    [record] = gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == ("failed", "refunded")
    assert core.position(buyer.address, network=NETWORK).locked == 0


def unwrapped(app: Any) -> PaymentMiddleware:
    """Our middleware in ``app``'s chain, however Django adapted it to the stack."""
    layer = app._middleware_chain
    while not isinstance(layer, PaymentMiddleware):
        layer = next(
            getattr(layer, a) for a in ("__wrapped__", "func", "awaitable") if hasattr(layer, a)
        )
    return layer


def pay_on_the_async_stack(app: ASGIHandler, core: Core, url: str) -> tuple[TestBuyer, Any]:
    """:func:`pay` through ``app``'s middleware, Django's async stack."""
    client = AsyncClient()
    client.handler._middleware_chain = app._middleware_chain
    loop = asyncio.new_event_loop()
    try:
        return pay(client, core, url, loop.run_until_complete)  # type: ignore[no-any-return]
    finally:
        loop.close()


def test_async_view_on_the_async_stack(configured: None, core: Core) -> None:
    app = ASGIHandler()
    middleware = app._middleware_chain.__wrapped__
    assert isinstance(middleware, PaymentMiddleware) and middleware.async_mode
    buyer, resp = pay_on_the_async_stack(app, core, "/async/5")
    assert resp.status_code == 200 and resp.json() == {"payer": buyer.address, "item": 5}
    assert seen[-1].amount == 50_000 and seen[-1].payer == buyer.address


class CountingMiddleware(PaymentMiddleware):
    """A subclass with a process_view of its own."""

    views: ClassVar[list[str]] = []

    def process_view(self, request: HttpRequest, *args: Any) -> Any:
        CountingMiddleware.views.append(request.method or "")
        return super().process_view(request, *args)


HELPERS.CountingMiddleware = CountingMiddleware  # type: ignore[attr-defined]


def test_the_router_check_is_a_coroutine_on_the_async_stack_and_keeps_a_subclass_s(
    configured: None, core: Core
) -> None:
    """On an async stack the router check runs as a coroutine (no thread for every request),
    and a subclass's own ``process_view`` is still the one called."""
    CountingMiddleware.views.clear()
    with override_settings(MIDDLEWARE=["django_adapter_helpers.CountingMiddleware"]):
        app = ASGIHandler()
        assert [type(m).__name__ for m in app._view_middleware] == ["method"]
        _, resp = pay_on_the_async_stack(app, core, "/async/5")
    assert resp.status_code == 200 and CountingMiddleware.views == ["GET"]


def test_missing_django_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "django", None)
    monkeypatch.delitem(sys.modules, "fourmica_x402.adapters.django")
    with pytest.raises(ImportError, match=r'pip install "fourmica-x402\[django\]"'):
        importlib.import_module("fourmica_x402.adapters.django")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_paid_view_charges_every_method_it_serves(
    configured: None, core: Core, method: str
) -> None:
    """@paid without methods= used to price GET only: the other methods ran unpaid."""
    client = Client()
    resp = client.generic(method, "/anything")
    assert amount_of(resp) == "80000" and seen == []
    buyer, resp = pay(client, core, "/anything", method=method)
    assert resp.status_code == 200
    assert resp.json() == {"method": method, "payer": buyer.address}
    (payment,) = seen
    assert (payment.payer, payment.amount) == (buyer.address, 80_000)
    assert core.position(buyer.address, network=NETWORK).locked == 80_000


def test_paid_methods_refuses_the_others_without_running_the_view(configured: None) -> None:
    client = Client()
    assert amount_of(client.get("/get-only")) == "80000"
    resp = client.post("/get-only")
    assert resp.status_code == 405 and resp["Allow"] == "GET, HEAD, OPTIONS"
    resp = client.options("/get-only")  # answered by @paid: the view does not run for it
    assert resp.status_code == 200 and resp["Allow"] == "GET, HEAD, OPTIONS"
    assert client.options("/anything")["Allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert seen == []


def test_options_on_a_view_the_table_prices_for_every_method(core: Core) -> None:
    """A "* /path" entry sells every method, yet its OPTIONS said ``Allow: OPTIONS`` only."""
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core, "ROUTES": {"* /free": "$0.02"}}
    with override_settings(
        FOURMICA_X402=options,
        FOURMICA_X402_CONFIG=None,
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF=URLS.__name__,
    ):
        client = Client()
        resp = client.options("/free")
        assert resp.status_code == 200
        assert resp["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
        assert amount_of(client.put("/free")) == "20000"


@pytest.mark.parametrize(("url", "amount"), [("/legacy/4", 90_000), ("/en-us/intl", 80_000)])
def test_paid_views_under_re_path_and_i18n_patterns_are_charged(
    configured: None, core: Core, url: str, amount: int
) -> None:
    """Both used to be unpriced (system check W002) and their views ran for free."""
    client = Client()
    assert amount_of(client.get(url)) == str(amount) and seen == []
    buyer, resp = pay(client, core, url)
    assert resp.status_code == 200 and seen[0].payer == buyer.address
    assert core.position(buyer.address, network=NETWORK).locked == amount


@pytest.mark.parametrize(
    ("outer_price", "outer_pay_to", "sold"),
    [("$0.03", SELLER, True), ("$0.01", SELLER, False), ("$0.03", TestBuyer.new().address, False)],
)
def test_a_django_site_behind_another_gate_is_paid_once_on_its_own_terms(
    configured: None, core: Core, outer_price: str, outer_pay_to: str, sold: bool
) -> None:
    """A WSGI gate in front of a Django site with the middleware: Django's gate settled the
    outer gate's guarantee again (replayed_request_id), so the outer one refunded and the
    route could never be sold. It runs on the outer payment now, if that meets the route's
    own offer here (docs/architecture.md, "What an adapter does"); else 503, refunded."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware as WsgiPayments
    from werkzeug.test import Client as WsgiClient

    from fourmica_x402 import PaymentConfig

    outer = PaymentConfig(
        pay_to=outer_pay_to, core=core, network=NETWORK, routes={"GET /r/*": outer_price}
    )
    client = WsgiClient(WsgiPayments(WSGIHandler(), config=outer))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    challenge = client.get("/r/7/")
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    name, value = payment_header(buyer, req, client.post("/x402/tab", json=body).get_json())
    resp = client.get("/r/7/", headers={name: value})
    answer = resp.get_json()
    [charged] = core.guarantees(address=buyer.address)
    if sold:
        assert (resp.status_code, answer) == (200, {"n": 7, "payer": buyer.address})
        assert charged.state == "payable" and len(seen) == 1
    else:
        assert (resp.status_code, answer["error"]) == (503, "payment_not_enforced")
        assert charged.state in ("voided", "cancelled") and seen == []


@pytest.mark.parametrize(("url", "amount"), [("/api/secret", 10_000), ("/api2/report", 20_000)])
def test_a_wildcard_entry_prices_a_top_level_re_path_as_its_path_reads(
    core: Core, url: str, amount: int
) -> None:
    """A ``re_path`` at the top of the URLconf kept its regex's "^" in its route
    (``/^api/(?P<rest>.+)$``), which ``GET /api/*`` never matched: served unpaid, and the
    start-up check passed since the entry priced ``api/list``."""
    table = {"GET /api/*": "$0.01", "GET /api2/*": "$0.02"}
    with selling(core, table), override_settings(ROOT_URLCONF=REGEX_URLS.__name__):
        client = Client()
        assert amount_of(client.get(url)) == str(amount) and seen == []
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and seen[0].payer == buyer.address
        assert core.position(buyer.address, network=NETWORK).locked == amount


def test_a_path_route_ending_in_a_dollar_is_priced_as_written(core: Core) -> None:
    """A path() route was read as a regex too: ``quote$`` lost its "$", so ``GET /quote$``
    named no route and the app failed at start-up (it was priced before)."""
    with (
        selling(core, {"GET /quote$": "$0.06"}),
        override_settings(ROOT_URLCONF=REGEX_URLS.__name__),
    ):
        client = Client()
        assert amount_of(client.get("/quote$")) == "60000" and seen == []
        buyer, resp = pay(client, core, "/quote$")
        assert resp.status_code == 200 and seen[0].payer == buyer.address


@pytest.mark.parametrize(
    ("url", "amount"), [("/v1.0/x", 30_000), ("/GOLD/x", 40_000), ("/latest", 50_000)]
)
def test_a_re_path_is_priced_as_its_paths_read_whatever_its_regex_escapes_or_anchors(
    core: Core, url: str, amount: int
) -> None:
    """``^v1\\.0\\/…``, ``(?i)^gold/…\\Z`` and ``^latest$`` kept their escapes, flags and
    anchors in their routes, which ``GET /v1.0/*``, ``GET /gold/*`` and ``GET /latest``
    never matched: served unpaid, the entries naming the path() routes beside them."""
    table = {"GET /v1.0/*": "$0.03", "GET /gold/*": "$0.04", "GET /latest": "$0.05"}
    with selling(core, table), override_settings(ROOT_URLCONF=REGEX_URLS.__name__):
        client = Client()
        assert amount_of(client.get(url)) == str(amount) and seen == []
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and seen[0].payer == buyer.address
        assert core.position(buyer.address, network=NETWORK).locked == amount


@pytest.mark.parametrize(
    ("url", "middleware"),
    [
        ("/items/3", []),  # the payment middleware is missing
        ("/areport", []),  # an async class-based view
        ("/elsewhere", [*MIDDLEWARE, "django_adapter_helpers.SwitchUrlconf"]),  # not priced by it
    ],
)
def test_a_paid_view_the_middleware_did_not_charge_for_fails_closed(
    configured: None, url: str, middleware: list[str]
) -> None:
    with override_settings(MIDDLEWARE=middleware):
        resp = Client().get(url)
    assert resp.status_code == 503 and resp["Cache-Control"] == "no-store"
    assert resp.json()["error"] == "payment_not_enforced"
    assert seen == []  # the view never ran


def test_an_append_slash_redirect_of_a_priced_path_is_not_charged(
    configured: None, core: Core
) -> None:
    """/r/5 is not a URL pattern: Django redirects it to /r/5/, and only that one is priced."""
    common = [*MIDDLEWARE, "django.middleware.common.CommonMiddleware"]
    with override_settings(MIDDLEWARE=common, APPEND_SLASH=True):
        client = Client()
        buyer, headers = header(client, core, "/r/5/")
        resp = client.get("/r/5", headers=headers)
        assert resp.status_code == 301 and resp["Location"] == "/r/5/"
        assert "payment-required" not in resp and "payment-response" not in resp
        assert core.guarantees() == [] and seen == []
        resp = client.get("/r/5/", headers=headers)  # the payment is still good for the route
    assert resp.status_code == 200 and resp.json() == {"n": 5, "payer": buyer.address}
    assert core.position(buyer.address, network=NETWORK).locked == 30_000


def test_an_async_class_based_view_is_charged_on_the_async_stack(
    configured: None, core: Core
) -> None:
    app = ASGIHandler()
    client = AsyncClient()
    client.handler._middleware_chain = app._middleware_chain
    loop = asyncio.new_event_loop()
    try:
        assert amount_of(loop.run_until_complete(client.get("/areport"))) == "60000"
        assert loop.run_until_complete(client.post("/areport")).status_code == 405
        buyer, resp = pay(client, core, "/areport", loop.run_until_complete)
    finally:
        loop.close()
    assert resp.status_code == 200 and resp.json() == {"payer": buyer.address}


@pytest.mark.parametrize("version", [1, 2])
def test_a_client_that_leaves_an_async_view_is_not_charged(
    configured: None, core: Core, version: int
) -> None:
    """Django cancels the view of a client that left: the payment used to stay accepted (G-v1
    charged; G-v2 locked until its validation deadline), the record 'settled' for good."""
    client = Client()
    challenge = client.get("/aslow")
    req = (
        decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        if version == 2
        else PaymentRequirementsV1.model_validate(challenge.json()["accepts"][0]).to_v2()
    )
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    body = {
        "x402Version": version,
        "userAddress": buyer.address,
        "paymentRequirements": req.to_dict(),
    }
    tab = client.post("/x402/tab", body, content_type="application/json").json()
    name, value = payment_header(buyer, req, tab, version=version)

    app = ASGIHandler()

    async def leave_during_the_view() -> list[dict[str, Any]]:
        SLOW_STARTED.append(asyncio.Event())
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "http.request", "body": b"", "more_body": False})
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/aslow",
            "raw_path": b"/aslow",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
            "headers": [(b"host", b"testserver"), (name.lower().encode(), value.encode())],
        }
        task = asyncio.ensure_future(app(scope, inbox.get, send))
        await asyncio.wait_for(SLOW_STARTED[-1].wait(), 10)
        await inbox.put({"type": "http.disconnect"})
        await asyncio.wait_for(task, 10)
        return sent

    assert not any(m["type"] == "http.response.start" for m in asyncio.run(leave_during_the_view()))
    [record] = app._middleware_chain.__wrapped__.gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == ("failed", "refunded")
    assert core.guarantee(record.guarantee_id).state == "voided"
    assert core.position(buyer.address, network=NETWORK).locked == 0


def test_paid_on_a_class_views_method_prices_that_method(core: Core) -> None:
    """``method_decorator(paid(...))`` on ``get``: the route was never priced, so every GET
    answered 503 payment_not_enforced. Now GET (and HEAD) are priced; POST is the view's own."""
    with selling(core, {}):
        client = Client()
        assert amount_of(client.get("/method-paid")) == "30000"
        assert client.head("/method-paid").status_code == 402
        assert client.post("/method-paid").json() == {"posted": True} and seen == []
        buyer, resp = pay(client, core, "/method-paid")
        assert resp.status_code == 200 and resp.json() == {"payer": buyer.address}
        assert core.position(buyer.address, network=NETWORK).locked == 30_000


@pytest.mark.parametrize("url", ["/dispatch-paid", "/stacked-dispatch-paid"])
def test_paid_on_a_class_views_dispatch_leaves_the_methods_it_lacks_to_django(
    core: Core, url: str
) -> None:
    """``method_decorator(paid(...), name="dispatch")``: a method the view does not implement
    (DELETE) answered 503 payment_not_enforced and logged a false alarm, and OPTIONS listed
    every method. They are Django's own now (405; Allow: what it serves), as with ``@paid``
    on the class, another decorator listed after it or not; GET is priced and sold."""
    with selling(core, {}):
        client = Client()
        assert client.delete(url).status_code == 405
        assert client.options(url)["Allow"] == "GET, HEAD, OPTIONS"
        assert amount_of(client.get(url)) == "50000" and seen == []
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and resp.json() == {"payer": buyer.address}
        assert core.position(buyer.address, network=NETWORK).locked == 50_000


def test_paid_on_an_async_class_views_method_refuses_without_a_500(core: Core) -> None:
    """``method_decorator(paid(...))`` on an async ``get``: what the price check answered
    itself (a GET reaching the view unpaid: 503) came back a coroutine Django never awaited,
    a 500. Sold as ever on a payment."""
    with selling(core, {}), override_settings(MIDDLEWARE=[]):  # no gate: reached unpaid
        resp = Client().get("/async-method-paid")
        assert (resp.status_code, resp.json()["error"]) == (503, "payment_not_enforced")
    with selling(core, {}):
        client = Client()
        assert amount_of(client.get("/async-method-paid")) == "50000"
        buyer, resp = pay(client, core, "/async-method-paid")
        assert resp.status_code == 200 and resp.json() == {"payer": buyer.address}


def test_a_client_leaving_during_a_settle_after_settle_completes_its_record(
    configured: None, core: Core
) -> None:
    """Async Django cancels the request of a client that left; in settle-after mode that can
    fall on the settle, inside the response's start: the error escaped it, so the gate was
    never told — the record stayed 'verified' for good, and the count of responses on their
    way out stayed up, so every later exit waited its full 2 s for it."""
    from fourmica_x402.core.store import deferred
    from fourmica_x402.testing import http_scope, slowed_settle

    with override_settings(FOURMICA_X402={**settings.FOURMICA_X402, "SETTLE": "after"}):
        client = Client()
        challenge = client.get("/async/7")
        req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 1_000_000, network=NETWORK)
        body = {
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": req.to_dict(),
        }
        tab = client.post("/x402/tab", body, content_type="application/json").json()
        name, value = payment_header(buyer, req, tab)
        app = ASGIHandler()
        gate = app._middleware_chain.__wrapped__.gate
        started = slowed_settle(gate)
        before = deferred._SERVING[0]

        async def leave_during_the_settle() -> list[dict[str, Any]]:
            inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            await inbox.put({"type": "http.request", "body": b"", "more_body": False})
            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = http_scope("GET", "/async/7", [(name.lower().encode(), value.encode())])
            task = asyncio.ensure_future(app(scope, inbox.get, send))
            for _ in range(500):  # bounded
                if started.is_set():
                    break
                await asyncio.sleep(0.01)
            await inbox.put({"type": "http.disconnect"})
            await asyncio.wait_for(task, 10)
            await asyncio.sleep(1.0)  # the settle's thread is answered meanwhile
            return sent

        sent = asyncio.run(leave_during_the_settle())
        assert not any(m["type"] == "http.response.start" for m in sent)
        assert deferred._SERVING[0] == before
        for _ in range(100):  # bounded: the refund of what the settle accepted
            gate.reconcile(time.time() + 5)
            gate.flush()
            [record] = gate.records.query(payer=buyer.address)
            if (
                record.outcome is not None
                and core.position(buyer.address, network=NETWORK).locked == 0
            ):
                break
            time.sleep(0.05)
        assert record.outcome is not None and record.status != "verified"
        assert core.position(buyer.address, network=NETWORK).locked == 0


def test_a_dispatch_of_its_own_behind_a_django_access_mixin_is_seen(configured: None) -> None:
    """Django's access mixins come first in a view's bases (as Django's docs ask), and their
    dispatch() only hands on: the walk stopped there, so a method-override mixin listed after
    ``LoginRequiredMixin`` went unseen — a logged-in POST with ``X-HTTP-Method-Override: GET``
    ran the priced GET unpaid. The walk goes on past Django's own dispatches."""
    apps_ = [*settings.INSTALLED_APPS, "django.contrib.contenttypes", "django.contrib.auth"]
    with override_settings(INSTALLED_APPS=apps_):
        from django.contrib.auth.mixins import LoginRequiredMixin

    class Override:
        def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if override := request.META.get("HTTP_X_HTTP_METHOD_OVERRIDE"):
                request.method = override.upper()
            return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]

    class Report(LoginRequiredMixin, Override, View):
        def get(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"report": True})

    class Handing(LoginRequiredMixin, Ledger):  # hands on only: its handlers' methods
        pass

    assert conf.describe(Report.as_view()) == (None, None)  # may answer any method
    assert conf.describe(Handing.as_view()) == (None, ["GET", "POST", "HEAD", "OPTIONS"])


def test_a_metered_stream_is_never_compressed_below_the_middleware(core: Core) -> None:
    """Django's ``GZipMiddleware`` below ours (where the docs put it for streamed answers)
    pulled a metered stream's events into its compressor without flushing them: slice 1 was
    counted as sent and charged while the client had no event at all. The middleware drops a
    metered request's ``Accept-Encoding``: the events go out as they are counted."""
    from fourmica_x402 import Slices

    heard: list[str | None] = []

    def metered(request: HttpRequest) -> StreamingHttpResponse:
        heard.append(request.META.get("HTTP_ACCEPT_ENCODING"))
        events = request.payment.stream.events(iter([{"n": 1}, {"n": 2}]))  # type: ignore[attr-defined]
        return StreamingHttpResponse(events, content_type="text/event-stream")

    urls = types.ModuleType("django_metered_urls")
    urls.urlpatterns = [path("met", metered)]  # type: ignore[attr-defined]
    sys.modules[urls.__name__] = urls
    routes = {"GET /met": {"price": "$0.01", "slices": Slices(units=2)}}
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core, "ROUTES": routes}
    below = [*MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    try:
        with override_settings(
            FOURMICA_X402=options,
            FOURMICA_X402_CONFIG=None,
            MIDDLEWARE=below,
            ROOT_URLCONF=urls.__name__,
        ):
            client = Client()
            _, headers = header(client, core, "/met")
            answer = client.get("/met", headers=headers, HTTP_ACCEPT_ENCODING="gzip")
            body = b"".join(answer.streaming_content)
    finally:
        del sys.modules[urls.__name__]
    assert answer.status_code == 200 and "content-encoding" not in answer.headers
    assert heard == [None] and b'"n": 1' in body.replace(b'"n":1', b'"n": 1')


def test_an_unknown_setting_is_named_once_by_the_system_check(configured: None) -> None:
    """E002 read "FOURMICA_X402: FOURMICA_X402: unknown keys …"."""
    with override_settings(FOURMICA_X402={"PAY_TOO": SELLER}):
        [said] = [m.msg for m in run_checks(tags=["fourmica_x402"])]
    assert said.startswith("FOURMICA_X402: unknown keys") and said.count("FOURMICA_X402") == 1


@pytest.mark.parametrize("below", [[], ["django_adapter_helpers.async_only"]])
@pytest.mark.parametrize("leaves", [True, False])
def test_a_client_that_leaves_a_large_answer_under_a_wsgi_server_is_not_charged(
    configured: None, core: Core, leaves: bool, below: list[str]
) -> None:
    """Under a WSGI server (wsgiref) a non-streaming answer is written after the middleware
    returned: it was charged before a byte went out, so a client that reset the connection
    after the first few KB of 16 MB paid for the whole (a Flask app's is refunded). It is
    charged once the server wrote it whole; one read to the end still is. So with an
    async-only middleware below ours, which makes Django run ours async under WSGI."""
    with override_settings(MIDDLEWARE=[*MIDDLEWARE, *below]):
        app = WSGIHandler()
    chain = unwrapped(app)
    import socket
    import struct
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    quiet = type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None})
    server = make_server("127.0.0.1", 0, app, handler_class=quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Client()
    buyer, headers = header(client, core, "/bulky")
    try:
        conn = socket.create_connection(("127.0.0.1", server.server_port), timeout=30)
        sent = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        conn.sendall(f"GET /bulky HTTP/1.0\r\nHost: shop\r\n{sent}\r\n".encode())
        got = len(conn.recv(4096))
        while not leaves and (data := conn.recv(1 << 16)):
            got += len(data)
        if leaves:  # a reset, not a polite close: the server's next write fails
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        for _ in range(500):  # bounded: the server ends the response in its own thread
            chain.gate.flush()
            if [g.state for g in core.guarantees(address=buyer.address)] != ["pending_validation"]:
                break
            time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert got > 16 * 1024 * 1024 or leaves
    states = [g.state for g in core.guarantees(address=buyer.address)]
    assert states == (["voided"] if leaves else ["payable"])


def test_a_whole_answer_a_wsgi_layer_read_to_the_end_without_closing_it_is_charged(
    configured: None, core: Core
) -> None:
    """A WSGI layer around Django (one that buffers the answer to add a header) reads the paid
    answer to its end and never calls its ``close()`` (PEP 3333 asks it to). The buyer got it
    all, as from a Flask app, which is charged: the Django answer was refunded as replaced once
    collected, the buyer paying nothing for it."""
    import http.client
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    django_app = WSGIHandler()

    def buffering(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        got: list[Any] = []
        body = b"".join(django_app(environ, lambda s, h, e=None: got.append((s, h))))
        (status, headers), *_ = got
        start_response(status, [*headers, ("X-Buffered", "1")])
        return [body]  # the app's iterable: read to its end, left unclosed

    quiet = type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None})
    server = make_server("127.0.0.1", 0, buffering, handler_class=quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    buyer, headers = header(Client(), core, "/items/1")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/items/1", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200 and b'"item": 1' in resp.read()
        conn.close()
        for _ in range(500):  # bounded: the server ends the response in its own thread
            gc.collect()
            django_app._middleware_chain.__wrapped__.gate.flush()
            if [g.state for g in core.guarantees(address=buyer.address)] != ["pending_validation"]:
                break
            time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["payable"]


def test_a_re_path_with_an_optional_part_is_priced_by_its_route_as_it_reads(core: Core) -> None:
    """ROUTES names a ``re_path`` as its route reads (``"GET /api/items/?"``), and that worked:
    since keys with a query fail at start-up, the regex's own ``?`` was taken for one and the
    app no longer started (only a werkzeug converter's was let through)."""
    urls = types.ModuleType("django_optional_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        re_path(r"^api/items/?$", free),  # the usual optional trailing slash
        re_path(r"^colou?r$", free),
    ]
    sys.modules[urls.__name__] = urls
    routes = {"GET /api/items/?": "$0.01", "GET /colou?r": "$0.02"}
    try:
        with selling(core, routes), override_settings(ROOT_URLCONF=urls.__name__):
            client = Client()
            got = [amount_of(client.get(p)) for p in ("/api/items", "/api/items/", "/colour")]
    finally:
        del sys.modules[urls.__name__]
    assert got == ["10000", "10000", "20000"]


@pytest.mark.parametrize("leaves", [True, False])
def test_a_client_that_leaves_an_answer_gzip_above_ours_compressed_is_not_charged(
    configured: None, core: Core, leaves: bool
) -> None:
    """A ``GZipMiddleware`` listed above ours (at the top of MIDDLEWARE, where Django's docs put
    it) replaces the paid answer's content with the compressed one: the server then wrote a
    list the gate did not watch, and a client that reset the connection after the first few
    KB of it was charged, as if the server had written it all."""
    import socket
    import struct
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    gzip = "django.middleware.gzip.GZipMiddleware"
    with override_settings(MIDDLEWARE=[gzip, *MIDDLEWARE]):
        app = WSGIHandler()
        quiet = type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None})
        server = make_server("127.0.0.1", 0, app, handler_class=quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        gate = app._middleware_chain.__wrapped__.get_response.__wrapped__.gate
        buyer, headers = header(Client(), core, "/wordy")
        try:
            conn = socket.create_connection(("127.0.0.1", server.server_port), timeout=30)
            sent = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            conn.sendall(
                f"GET /wordy HTTP/1.0\r\nHost: shop\r\nAccept-Encoding: gzip\r\n{sent}\r\n".encode()
            )
            got = conn.recv(4096)
            while b"\r\n\r\n" not in got:  # the head, then a few KB at most
                got += conn.recv(4096)
            while not leaves and (data := conn.recv(1 << 16)):
                got += data
            if leaves:  # a reset, not a polite close: the server's next write fails
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            for _ in range(500):  # bounded: the server ends the response in its own thread
                gate.flush()
                states = [g.state for g in core.guarantees(address=buyer.address)]
                if states != ["pending_validation"]:
                    break
                time.sleep(0.01)
        finally:
            server.shutdown()
            server.server_close()
    assert b"content-encoding: gzip" in got.lower()
    assert len(got) > 4 * 1024 * 1024 or leaves
    states = [g.state for g in core.guarantees(address=buyer.address)]
    assert states == (["voided"] if leaves else ["payable"])


def test_a_sync_stream_is_metered_as_sent_under_asgi_below_a_sync_only_middleware(
    configured: None, core: Core
) -> None:
    """Under ASGI, a sync-only middleware listed below ours makes Django run ours sync: the
    stream was left a sync iterator, which Django's ASGI handler reads whole in a thread
    before sending a byte, so the gate counted it delivered and charged a client that left
    after the first line. It is handed over chunk by chunk under every ASGI stack."""
    with override_settings(MIDDLEWARE=[*MIDDLEWARE, "django_adapter_helpers.sync_only"]):
        app = ASGIHandler()
        buyer, headers = header(Client(), core, "/trickle")
    LEFT.clear()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append({})  # the request, once
            return {"type": "http.request", "body": b"", "more_body": False}
        while not any(m.get("body") for m in sent):
            await asyncio.sleep(0.01)
        LEFT.set()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/trickle",
        "raw_path": b"/trickle",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert b"".join(m.get("body", b"") for m in sent) == b"first\n"
    layer = unwrapped(app)
    layer.gate.flush()
    [record] = layer.gate.records.query(payer=buyer.address)
    assert (record.status, record.outcome) == ("failed", "refunded")
    assert core.position(buyer.address, network=NETWORK).locked == 0


def subscribers(request: Any, route: Any) -> Any:
    """``on_protected_request``: free for the test API key, on /items/<n> only."""
    from fourmica_x402.gate import GRANT

    granted = request.header("x-api-key") == "subscriber-1" and "/items/" in route.key
    return GRANT if granted else None


@pytest.mark.parametrize("stack", ["sync", "async"])
def test_a_grant_serves_a_paid_view_free_and_only_that_view(core: Core, stack: str) -> None:
    """``GRANT`` on a ``@paid`` view (docs/operations.md, "Seller options and hooks"): it was
    answered 503 ``payment_not_enforced``, the marker finding no payment. It runs now, handed
    a ``Payment`` marked granted (amount 0); nothing is charged or recorded; the grant opens
    no other @paid view, and a table-priced route is sold as before."""
    with (
        selling(core, ROUTES),
        override_settings(
            FOURMICA_X402={**settings.FOURMICA_X402, "ON_PROTECTED_REQUEST": subscribers}
        ),
    ):
        if stack == "sync":
            client: Any = Client()
            run: Any = lambda r: r  # noqa: E731
        else:
            client = AsyncClient()
            client.handler._middleware_chain = ASGIHandler()._middleware_chain
            loop = asyncio.new_event_loop()
            run = loop.run_until_complete
        key = {"x-api-key": "subscriber-1"}
        try:
            assert run(client.get("/items/3")).status_code == 402
            granted = run(client.get("/items/3", headers=key))
            assert granted.status_code == 200, granted.content
            assert granted.json() == {"payer": "", "item": 3}
            assert seen[-1].granted and seen[-1].amount == 0 and seen[-1].guarantee_id is None
            assert run(client.get("/async/3", headers=key)).status_code == 402  # bound
            assert run(client.get("/r/4/", headers=key)).status_code == 402  # the table's
        finally:
            if stack == "async":
                loop.close()
    assert core.guarantees() == []
    assert len(seen) == 1


@pytest.mark.parametrize(("outer_price", "sold"), [("$0.03", True), ("$0.01", False)])
def test_a_django_site_bridged_into_an_asgi_app_with_a_gate_is_paid_once_on_its_own_terms(
    configured: None, core: Core, outer_price: str, sold: bool
) -> None:
    """A Starlette app with the ASGI gate mounting a Django site with the middleware as a
    WSGI app, through a2wsgi: the bridge's environ did not carry the outer gate's payment,
    so Django's gate refused the payment's header again (402) and the outer gate refunded;
    the route could never be sold. It runs on the outer payment now, if that meets the
    route's own offer here; else 503, refunded."""
    from a2wsgi import WSGIMiddleware
    from fourmica_x402.adapters.asgi import PaymentMiddleware as AsgiPayments
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    app = Starlette(routes=[Mount("/site", WSGIMiddleware(WSGIHandler()))])
    outer = {"GET /site/*": outer_price}
    app.add_middleware(AsgiPayments, pay_to=SELLER, core=core, network=NETWORK, routes=outer)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with TestClient(app) as client:
        challenge = client.get("/site/r/7/")
        req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        body = {
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": req.to_dict(),
        }
        name, value = payment_header(buyer, req, client.post("/x402/tab", json=body).json())
        resp = client.get("/site/r/7/", headers={name: value})
    [charged] = core.guarantees(address=buyer.address)
    if sold:
        assert (resp.status_code, resp.json()) == (200, {"n": 7, "payer": buyer.address})
        assert charged.state == "payable" and len(seen) == 1
    else:
        assert (resp.status_code, resp.json()["error"]) == (503, "payment_not_enforced")
        assert charged.state in ("voided", "cancelled") and seen == []


@pytest.mark.parametrize("stack", ["sync", "async"])
def test_a_host_allowed_hosts_refuses_gets_djangos_400_not_a_challenge(
    core: Core, stack: str
) -> None:
    """Django refuses a Host outside ``ALLOWED_HOSTS`` (400) on every other path; on a priced
    one the gate answered first, a 402 whose resource and tab endpoint named that host, and
    its tab endpoint opened tabs there."""
    with selling(core, ROUTES), override_settings(ALLOWED_HOSTS=["shop.example.com"]):
        if stack == "sync":
            client: Any = Client()
            get, post = client.get, client.post
        else:  # Django's AsyncClient sends its own Host too: a server's request instead
            get, post = _asgi_get, _asgi_post
        challenge = get("/r/1/", headers={"host": "shop.example.com"})
        assert challenge.status_code == 402
        offer = decode_payment_required(challenge.headers["payment-required"])
        assert offer.resource.url == "http://shop.example.com/r/1/"
        assert offer.accepts[0].extra["tabEndpoint"] == "http://shop.example.com/x402/tab"
        buyer = TestBuyer.new().address
        tab = {"x402Version": 2, "userAddress": buyer, "paymentRequirements": offer.accepts[0]}
        tab["paymentRequirements"] = offer.accepts[0].to_dict()
        evil = "evil.example.net"
        refused = [
            get("/r/1/", headers={"host": evil}),
            get("/items/1", headers={"host": evil}),
            post("/x402/tab", tab, "application/json", headers={"host": evil}),
        ]
        assert [r.status_code for r in refused] == [400, 400, 400]
        assert all("payment-required" not in r.headers for r in refused)
        assert b"tabId" not in refused[2].content
        opened = post("/x402/tab", tab, "application/json", headers={"host": "shop.example.com"})
    assert opened.status_code == 200 and "tabId" in opened.json()
    assert seen == []


def _asgi_get(path: str, headers: dict[str, str]) -> Any:
    return _over_asgi("GET", path, headers)


def _asgi_post(path: str, data: Any, content_type: str, headers: dict[str, str]) -> Any:
    return _over_asgi("POST", path, headers, data)


def _over_asgi(method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
    """``method path`` as an ASGI server hands it to Django's ASGIHandler (one Host)."""
    import httpx

    async def send() -> Any:
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport) as client:
            url = f"http://{headers['host']}{path}"
            resp = await client.request(method, url, json=body)
        resp.status_code, resp.content  # noqa: B018  # read
        return resp

    return asyncio.run(send())
