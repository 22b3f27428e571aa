"""Django Ninja sellers: a ``NinjaAPI`` mounted with ``path("api/", api.urls)`` behind the
Django payment middleware, priced by the route table and by ``@paid`` on its operations, paid
with valid payments (docs/architecture.md, "Which route is priced").

A Ninja route serves the methods of its operations: a free one beside a priced one at the
same path runs free, a method none has is Ninja's own 405.
"""

from __future__ import annotations

import asyncio
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
from django.http import HttpRequest
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from fourmica_x402.adapters.django import paid
from ninja import NinjaAPI

from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
seen: list[tuple[str, Any]] = []
api = NinjaAPI(urls_namespace="fourmica_ninja_tests")


@api.get("/items")
def list_items(request: HttpRequest) -> list[int]:
    seen.append(("list", request.payment))  # type: ignore[attr-defined]
    return [1]


@api.post("/items")
def create_item(request: HttpRequest) -> dict[str, bool]:
    seen.append(("create", request.payment))  # type: ignore[attr-defined]
    return {"created": True}


@api.get("/reports/{day}")
@paid(price="$0.05")
def report(request: HttpRequest, day: int) -> dict[str, Any]:
    seen.append(("report", request.payment))  # type: ignore[attr-defined]
    return {"day": day}


@api.post("/reports/{day}")
def comment(request: HttpRequest, day: int) -> dict[str, Any]:
    seen.append(("comment", request.payment))  # type: ignore[attr-defined]
    return {"commented": day}


@api.get("/areports/{day}")
@paid(price="$0.06")
async def areport(request: HttpRequest, day: int) -> dict[str, Any]:
    seen.append(("areport", request.payment))  # type: ignore[attr-defined]
    return {"day": day}


twice = NinjaAPI(urls_namespace="fourmica_ninja_tests_twice")


@twice.get("/quote")
@paid(price="$0.01")
def quote(request: HttpRequest) -> dict[str, Any]:
    return {}  # pragma: no cover - never served


@twice.post("/quote")
@paid(price="$1.00")
def order(request: HttpRequest) -> dict[str, Any]:
    return {}  # pragma: no cover - never served


TWICE = types.ModuleType("django_ninja_twice_urls")
TWICE.urlpatterns = [path("api/", twice.urls)]  # type: ignore[attr-defined]
sys.modules[TWICE.__name__] = TWICE
above = NinjaAPI(urls_namespace="fourmica_ninja_tests_above")


@paid(price="$0.05")  # above the route decorator: Ninja registered the bare function
@above.get("/secret")
def secret(request: HttpRequest) -> dict[str, Any]:
    seen.append(("secret", getattr(request, "payment", None)))
    return {"secret": "paid content"}


ABOVE = types.ModuleType("django_ninja_above_urls")
ABOVE.urlpatterns = [path("api/", above.urls)]  # type: ignore[attr-defined]
sys.modules[ABOVE.__name__] = ABOVE
both = NinjaAPI(urls_namespace="fourmica_ninja_tests_both")


def forecast(request: HttpRequest) -> dict[str, Any]:
    seen.append(("forecast", getattr(request, "payment", None)))
    return {"forecast": "sunny"}


both.get("/preview")(forecast)  # the same function: free here,
both.get("/forecast")(paid(price="$0.05")(forecast))  # priced here
BOTH = types.ModuleType("django_ninja_both_urls")
BOTH.urlpatterns = [path("api/", both.urls)]  # type: ignore[attr-defined]
sys.modules[BOTH.__name__] = BOTH
URLS = types.ModuleType("django_ninja_urls")
URLS.urlpatterns = [path("api/", api.urls)]  # type: ignore[attr-defined]
sys.modules[URLS.__name__] = URLS


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


@contextmanager
def selling(core: Core, routes: dict[str, str]) -> Iterator[None]:
    options = {"PAY_TO": SELLER, "NETWORK": NETWORK, "CORE": core, "ROUTES": routes}
    with override_settings(
        FOURMICA_X402=options,
        FOURMICA_X402_CONFIG=None,
        MIDDLEWARE=["fourmica_x402.adapters.django.PaymentMiddleware"],
        ROOT_URLCONF=URLS.__name__,
    ):
        seen.clear()
        yield


def amount_of(resp: Any) -> str:
    assert resp.status_code == 402, resp.status_code
    return decode_payment_required(resp.headers["payment-required"]).accepts[0].amount


def pay(client: Any, core: Core, url: str, run: Any = lambda r: r, method: str = "get") -> Any:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    req = decode_payment_required(run(client.get(url)).headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = run(client.post("/x402/tab", body, content_type="application/json")).json()
    name, value = payment_header(buyer, req, tab)
    return buyer, run(getattr(client, method)(url, headers={name: value}))


def locked(core: Core, buyer: TestBuyer) -> int:
    return core.position(buyer.address, network=NETWORK).locked


def test_a_free_operation_beside_a_priced_one_at_one_path_runs_free(core: Core) -> None:
    """Ninja serves every operation of a path with one view: the gate took it for a function
    view serving every method, so a table entry pricing ``GET /api/items`` answered the free
    ``POST /api/items`` 405 itself, never running it."""
    with selling(core, {"GET /api/items": "$0.01"}):
        client = Client()
        resp = client.post("/api/items")
        assert resp.status_code == 200 and seen == [("create", None)]
        assert client.put("/api/items").status_code == 405 and len(seen) == 1  # Ninja's own
        assert amount_of(client.get("/api/items")) == "10000" and len(seen) == 1
        buyer, resp = pay(client, core, "/api/items")
        assert resp.status_code == 200 and resp.json() == [1]
        assert seen[-1][1].payer == buyer.address and locked(core, buyer) == 10_000


def test_paid_on_a_ninja_operation_prices_its_methods(core: Core) -> None:
    """``@paid`` below ``@api.get``: the gate never saw the marker (Ninja routes a wrapper of
    its own), never challenged, and the marker answered every request 503
    payment_not_enforced, paid or not. The POST operation at the same path stays free."""
    with selling(core, {}):
        client = Client()
        assert client.post("/api/reports/3").json() == {"commented": 3}
        assert seen == [("comment", None)]
        assert amount_of(client.get("/api/reports/3")) == "50000" and len(seen) == 1
        buyer, resp = pay(client, core, "/api/reports/3")
        assert resp.status_code == 200 and resp.json() == {"day": 3}
        assert seen[-1][1].payer == buyer.address and locked(core, buyer) == 50_000
        buyer, resp = pay(client, core, "/api/reports/monday")  # Ninja's 422: refunded
        assert resp.status_code == 422 and locked(core, buyer) == 0 and len(seen) == 2


def test_paid_on_an_async_ninja_operation_on_the_async_stack(core: Core) -> None:
    """The same for an ``async def`` operation, through Django's async stack."""
    with selling(core, {}):
        client, loop = AsyncClient(), asyncio.new_event_loop()
        try:
            assert amount_of(loop.run_until_complete(client.get("/api/areports/4"))) == "60000"
            buyer, resp = pay(client, core, "/api/areports/4", loop.run_until_complete)
        finally:
            loop.close()
        assert resp.status_code == 200 and resp.json() == {"day": 4}
        assert seen[-1][1].payer == buyer.address and locked(core, buyer) == 60_000


def test_two_paid_prices_at_one_ninja_path_fail_at_start_up(core: Core) -> None:
    """One route, one marker price: ``@paid`` at $0.01 on GET and $1.00 on POST at one path
    is refused when the middleware is built, naming the path (it started, then answered
    both 503)."""
    refused = pytest.raises(ConfigurationError, match="'/quote' has more than one price")
    with selling(core, {}), override_settings(ROOT_URLCONF=TWICE.__name__), refused:
        WSGIHandler()


def test_paid_above_the_route_decorator_fails_at_start_up(core: Core) -> None:
    """``@paid`` above ``@api.get``: Ninja serves the function it was given, unpriced; the paid
    content went out free with no word at start-up. The middleware now refuses to start."""
    refused = pytest.raises(ConfigurationError, match="secret is routed without its @paid")
    with selling(core, {}), override_settings(ROOT_URLCONF=ABOVE.__name__), refused:
        WSGIHandler()
    assert seen == []


def test_one_function_free_at_one_path_and_paid_at_another_starts(core: Core) -> None:
    """A function Ninja serves free at ``/preview`` and, wrapped in ``@paid``, at ``/forecast``:
    the start-up check looked at one path's operations only, took the free one for ``@paid``
    put above ``@api.get`` and refused to start. Each is served as routed."""
    with selling(core, {}), override_settings(ROOT_URLCONF=BOTH.__name__):
        client = Client()
        assert client.get("/api/preview").json() == {"forecast": "sunny"}
        assert seen == [("forecast", None)]
        assert amount_of(client.get("/api/forecast")) == "50000" and len(seen) == 1
        buyer, resp = pay(client, core, "/api/forecast")
        assert resp.status_code == 200 and resp.json() == {"forecast": "sunny"}
        assert seen[-1][1].payer == buyer.address and locked(core, buyer) == 50_000


def test_head_on_a_priced_ninja_operation_asks_its_price_and_charges_nothing(core: Core) -> None:
    """Ninja does not serve HEAD with GET (its 405); the gate still answers a HEAD on a priced
    operation with its price, and a payment sent with one is not settled."""
    with selling(core, {"GET /api/items": "$0.01"}):
        client = Client()
        asked = client.head("/api/items")
        assert amount_of(asked) == "10000"
        for url in ("/api/items", "/api/reports/3"):  # a table entry; @paid
            buyer, resp = pay(client, core, url, method="head")
            assert resp.status_code == 402 and locked(core, buyer) == 0
        assert seen == []
