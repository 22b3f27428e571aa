"""Django REST Framework sellers: APIViews, ``@api_view`` functions and ViewSets behind the
Django payment middleware, priced by the route table and by ``@paid``, paid with valid
payments (docs/architecture.md, "Which route is priced").

A DRF view serves the methods it has handlers for (a ViewSet: its route's actions): a free
method beside a priced one runs free, a method it lacks is DRF's own 405.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:  # another Django test module may have configured them already
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="tests",
        INSTALLED_APPS=["fourmica_x402.adapters.django"],
        DATABASES={},
    )
    django.setup()

from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings
from django.urls import include, path
from django.utils.decorators import method_decorator
from fourmica_x402.adapters.django import paid
from rest_framework import routers, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
#: No users, sessions or browsable API: this process has no auth app installed.
DRF = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
seen: list[tuple[str, Any]] = []


class Quotes(APIView):
    """GET sold by a table entry, POST free."""

    def get(self, request: Request) -> Response:
        seen.append(("get", request.payment))  # type: ignore[attr-defined]
        return Response({"quote": "paid content"})

    def post(self, request: Request) -> Response:
        seen.append(("post", request.payment))  # type: ignore[attr-defined]
        return Response({"posted": True}, status=201)


@api_view(["GET", "POST"])
def notes(request: Request) -> Response:
    seen.append((request.method or "", request.payment))  # type: ignore[attr-defined]
    return Response({"method": request.method})


@api_view(["GET"])
@paid(price="$0.02")  # below @api_view, as DRF's own decorators go
def memo(request: Request) -> Response:
    seen.append(("memo", request.payment))  # type: ignore[attr-defined]
    return Response({"memo": "paid content"})


class Items(viewsets.ViewSet):
    """list sold by a table entry; create free."""

    def list(self, request: Request) -> Response:
        seen.append(("list", request.payment))  # type: ignore[attr-defined]
        return Response([{"id": 1}])

    def create(self, request: Request) -> Response:
        seen.append(("create", request.payment))  # type: ignore[attr-defined]
        return Response({"created": True}, status=201)


@paid(price="$0.03")
class Reports(viewsets.ViewSet):
    """Priced whole: every route its router makes."""

    def list(self, request: Request) -> Response:
        seen.append(("list", request.payment))  # type: ignore[attr-defined]
        return Response([{"id": 1}])

    def retrieve(self, request: Request, pk: str) -> Response:
        seen.append(("retrieve", request.payment))  # type: ignore[attr-defined]
        return Response({"id": pk})


class Orders(viewsets.ViewSet):
    """Its list priced by a marker on the action; create free."""

    @method_decorator(paid(price="$0.04"))
    def list(self, request: Request) -> Response:
        seen.append(("list", request.payment))  # type: ignore[attr-defined]
        return Response([{"id": 1}])

    def create(self, request: Request) -> Response:
        seen.append(("create", request.payment))  # type: ignore[attr-defined]
        return Response({"created": True}, status=201)


class Catalog(viewsets.ViewSet):
    """Under a DefaultRouter: each route has a format-suffix twin (``.json``)."""

    def list(self, request: Request, format: str | None = None) -> Response:
        seen.append(("list", request.payment))  # type: ignore[attr-defined]
        return Response([{"id": 1}])

    def retrieve(self, request: Request, pk: str, format: str | None = None) -> Response:
        seen.append(("retrieve", request.payment))  # type: ignore[attr-defined]
        return Response({"id": pk})

    @action(detail=True, methods=["get"])
    def report(self, request: Request, pk: str, format: str | None = None) -> Response:
        seen.append(("report", request.payment))  # type: ignore[attr-defined]
        return Response({"report": pk})


ROUTER = routers.SimpleRouter()
for prefix, viewset in (("items", Items), ("reports", Reports), ("orders", Orders)):
    ROUTER.register(prefix, viewset, basename=prefix)
SUFFIXED = routers.DefaultRouter()
SUFFIXED.register("items", Catalog, basename="catalog")


@paid(price="$0.01")
@api_view(["GET"])
@paid(price="$1.00")
def sandwich(request: Request) -> Response:
    return Response({})  # pragma: no cover - never served


@paid(price="$1.00")
class Dear(APIView):
    def get(self, request: Request) -> Response:
        return Response({})  # pragma: no cover - never served


@paid(price="$1.00")
class DearSet(viewsets.ViewSet):
    def list(self, request: Request) -> Response:
        return Response([])  # pragma: no cover - never served


class Direct(viewsets.ViewSet):
    """``@paid`` right on an action, as on a Flask ``MethodView``'s ``get``."""

    @paid(price="$0.06")
    def list(self, request: Request) -> Response:
        seen.append(("list", request.payment))  # type: ignore[attr-defined]
        return Response([{"id": 1}])


class DirectView(APIView):
    @paid(price="$0.06")
    def get(self, request: Request) -> Response:
        seen.append(("get", request.payment))  # type: ignore[attr-defined]
        return Response({"quote": "paid content"})


#: A view marked twice at two prices: above and below ``@api_view``; a marked class's view
#: marked again; a marked ViewSet's route marked again.
TWICE = {
    "api_view": sandwich,
    "view_class": paid(price="$0.01")(Dear.as_view()),
    "viewset": paid(price="$0.01")(DearSet.as_view({"get": "list"})),
}


URLS = types.ModuleType("django_rest_urls")
URLS.urlpatterns = [  # type: ignore[attr-defined]
    path("quotes", Quotes.as_view()),
    path("notes", notes),
    path("memo", memo),
    path("api/", include(ROUTER.urls)),
    path("v2/", include(SUFFIXED.urls)),
    path("direct", Direct.as_view({"get": "list"})),
    path("direct-view", DirectView.as_view()),
]
sys.modules[URLS.__name__] = URLS


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


@contextmanager
def selling(core: Core, routes: dict[str, str]) -> Iterator[Client]:
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core, "ROUTES": routes}
    with override_settings(
        FOURMICA_X402=options,
        FOURMICA_X402_CONFIG=None,
        MIDDLEWARE=["fourmica_x402.adapters.django.PaymentMiddleware"],
        ROOT_URLCONF=URLS.__name__,
        REST_FRAMEWORK=DRF,
    ):
        seen.clear()
        yield Client()


def amount_of(resp: Any) -> str:
    assert resp.status_code == 402, resp.status_code
    return decode_payment_required(resp.headers["payment-required"]).accepts[0].amount


def pay(client: Client, core: Core, url: str, method: str = "GET") -> Any:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    challenge = client.generic(method, url)
    req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = client.post("/x402/tab", body, content_type="application/json").json()
    name, value = payment_header(buyer, req, tab)
    return buyer, client.generic(method, url, headers={name: value})


def locked(core: Core, buyer: TestBuyer) -> int:
    return core.position(buyer.address, network=NETWORK).locked


@pytest.mark.parametrize(
    ("url", "free"), [("/quotes", "post"), ("/notes", "POST"), ("/api/items/", "create")]
)
def test_a_free_method_of_a_drf_view_beside_a_priced_one_runs_free(
    core: Core, url: str, free: str
) -> None:
    """DRF's APIView.dispatch() only hands on to the method's handler, as Django's does: the
    gate took every DRF view (and a ViewSet, which has no view_class) for one serving every
    method, so a free POST beside a priced GET was answered 405 by the gate, never run."""
    with selling(core, {f"GET {url}": "$0.01"}) as client:
        resp = client.post(url)
        assert resp.status_code in (200, 201) and seen == [(free, None)]
        assert client.put(url).status_code == 405 and len(seen) == 1  # DRF's own 405
        assert amount_of(client.get(url)) == "10000" and len(seen) == 1
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and seen[-1][1].payer == buyer.address
        assert locked(core, buyer) == 10_000


@pytest.mark.parametrize(
    ("url", "amount"), [("/api/reports/", 30_000), ("/api/reports/7/", 30_000)]
)
def test_paid_on_a_drf_viewset_prices_every_route_of_it(core: Core, url: str, amount: int) -> None:
    """``@paid`` on a ViewSet: the gate read the marker from the view's ``view_class``, which a
    ViewSet's routes lack (``cls``): it never challenged, and the guard answered every request
    503 payment_not_enforced, paid or not."""
    with selling(core, {}) as client:
        assert amount_of(client.get(url)) == str(amount) and seen == []
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and seen[0][1].payer == buyer.address
        assert locked(core, buyer) == amount


def test_paid_on_a_drf_viewset_action_prices_the_methods_it_serves(core: Core) -> None:
    """``method_decorator(paid(...))`` on a ViewSet's ``list``: its GET is sold at its price,
    the route's POST (``create``) stays free."""
    with selling(core, {}) as client:
        assert client.post("/api/orders/").status_code == 201 and seen == [("create", None)]
        assert amount_of(client.get("/api/orders/")) == "40000" and len(seen) == 1
        buyer, resp = pay(client, core, "/api/orders/")
        assert resp.status_code == 200 and seen[-1] == ("list", seen[-1][1])
        assert seen[-1][1].payer == buyer.address and locked(core, buyer) == 40_000


@pytest.mark.parametrize(
    ("url", "amount"),
    [
        ("/v2/items/", 10_000),
        ("/v2/items.json", 10_000),
        ("/v2/items/1/", 20_000),
        ("/v2/items/1.json", 20_000),
        ("/v2/items/1/report/", 50_000),
        ("/v2/items/1/report.json", 50_000),
    ],
)
def test_a_default_routers_format_suffix_routes_are_priced_by_the_keys_the_docs_give(
    core: Core, url: str, amount: int
) -> None:
    """DefaultRouter serves each route again with a format suffix: the keys the docs give
    (docs/architecture.md, "Which route is priced") price every one at its own price."""
    table = {
        "GET /v2/items/": "$0.01",
        "GET /v2/items.*": "$0.01",
        "GET /v2/items/*": "$0.02",
        "GET /v2/items/*/report*": "$0.05",
    }
    with selling(core, table) as client:
        assert client.get("/v2/").status_code == 200  # the API root is free
        assert amount_of(client.get(url)) == str(amount) and seen == []
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and seen[0][1].payer == buyer.address
        assert locked(core, buyer) == amount


def test_paid_below_api_view_prices_the_function(core: Core) -> None:
    """``@paid`` below ``@api_view`` (where DRF's policy decorators go): the gate read only
    the view DRF made, never the function's marker, so nothing was challenged and the marker
    answered every request 503 payment_not_enforced, paid or not."""
    with selling(core, {}) as client:
        assert amount_of(client.get("/memo")) == "20000" and seen == []
        buyer, resp = pay(client, core, "/memo")
        assert resp.status_code == 200 and resp.json() == {"memo": "paid content"}
        assert seen[0][1].payer == buyer.address and locked(core, buyer) == 20_000


@pytest.mark.parametrize("which", sorted(TWICE))
def test_a_drf_view_marked_twice_at_two_prices_fails_at_start_up(core: Core, which: str) -> None:
    """``@paid`` at $0.01 over a view already marked at $1.00 (below ``@api_view``, on its
    class, on a ViewSet): the route was sold at $0.01 and the $1.00 marker's guard let that
    payment through (it checks the route, not the price). Two prices: refused at start-up."""
    urls = types.ModuleType(f"django_rest_twice_{which}")
    urls.urlpatterns = [path("twice", TWICE[which])]  # type: ignore[attr-defined]
    sys.modules[urls.__name__] = urls
    refused = pytest.raises(ConfigurationError, match=r"more than one price \('\$0.01', '\$1.00'\)")
    with selling(core, {}), override_settings(ROOT_URLCONF=urls.__name__), refused:
        WSGIHandler()


@pytest.mark.parametrize("url", ["/direct", "/direct-view"])
def test_paid_right_on_a_drf_handler_sells_it(core: Core, url: str) -> None:
    """``@paid`` on a ViewSet's action or an APIView's ``get`` itself (not through
    ``method_decorator``): the route was priced, but its guard took the view for the request
    and raised, so every paid request was answered 500 and nothing was ever sold."""
    with selling(core, {}) as client:
        assert amount_of(client.get(url)) == "60000" and seen == []
        buyer, resp = pay(client, core, url)
        assert resp.status_code == 200 and seen[0][1].payer == buyer.address
        assert locked(core, buyer) == 60_000


OURS = "fourmica_x402.adapters.django.PaymentMiddleware"


def test_drf_views_are_csrf_exempt_so_the_csrf_check_names_none(core: Core) -> None:
    """DRF exempts its views from Django's CSRF check (its own runs for session logins only):
    system check W002 names none of them, and a paid POST is served under the check."""
    from fourmica_x402.adapters.django.checks import check_csrf

    table = {"POST /quotes": "$0.01", "POST /notes": "$0.01", "POST /api/items/": "$0.01"}
    csrf = ["django.middleware.csrf.CsrfViewMiddleware", OURS]
    with selling(core, table), override_settings(MIDDLEWARE=csrf):
        assert check_csrf() == []
        client = Client(enforce_csrf_checks=True)
        for url in table:
            _, resp = pay(client, core, url.split()[1], "POST")
            assert resp.status_code in (200, 201), (url, resp.status_code)
