"""Django Ninja sellers: a ``NinjaAPI`` mounted with ``path("api/", api.urls)`` behind the
Django payment middleware, priced by the route table, paid
with valid payments (docs/architecture.md, "Which route is priced").

A Ninja route serves the methods of its operations: a free one beside a priced one at the
same path runs free, a method none has is Ninja's own 405.
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

from django.http import HttpRequest
from django.test import Client, override_settings
from django.urls import path
from ninja import NinjaAPI

from fourmica_x402.core import Core
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


def pay(client: Any, core: Core, url: str, run: Any = lambda r: r) -> Any:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    req = decode_payment_required(run(client.get(url)).headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    tab = run(client.post("/x402/tab", body, content_type="application/json")).json()
    name, value = payment_header(buyer, req, tab)
    return buyer, run(client.get(url, headers={name: value}))


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
