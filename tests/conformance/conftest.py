"""The conformance harness: one behaviour suite, every adapter.

Each adapter has a builder in ``apps/<kind>_app.py`` exposing
``build(options: dict, calls: Counter) -> client``. The builder makes the SAME
app in its framework (see ``apps/README.md`` for the contract) and returns a
client with ``request(method, path, headers, json) -> (status, headers, body)`` driving
the framework's own test client. The ``seller`` fixture runs every test once
per adapter, against the real gate and a real embedded Core on a SQLite file.
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.testing import NETWORK, ShiftedClock, TestBuyer, payment_header
from fourmica_x402.wire import PaymentRequirementsV1, decode_payment_required

APPS = Path(__file__).parent / "apps"
KINDS = ["starlette", "fastapi", "wsgi", "flask", "django_sync", "django_async"]
SELLER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # throwaway
SELLER = TestBuyer.from_key(SELLER_KEY).address
PREMIUM_PRICE = "$0.01"
#: Routes priced in config; GET /premium is priced by each framework's own way
#: (decorator/dependency where the adapter has one, config otherwise).
ROUTES = {
    "POST /echo": "$0.01",
    "GET /items/:item_id": "$0.02",
    "GET /boom": "$0.01",
    "GET /fail": "$0.01",
    "GET /redirect": "$0.01",
    "GET /stream": "$0.01",
    "GET /missing": "$0.01",
    "GET /cached": "$0.01",
    "GET /stored": "$0.01",
}


@dataclass
class Resp:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Seller:
    kind: str
    client: Any
    core: Core
    clock: ShiftedClock
    calls: collections.Counter[str]
    options: dict[str, Any] = field(default_factory=dict)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, json: Any = None
    ) -> Resp:
        status, got, body = self.client.request(method, path, headers=headers or {}, json=json)
        return Resp(int(status), {k.lower(): v for k, v in got.items()}, bytes(body))

    @property
    def gate(self) -> Any:
        return self.client.gate


def _load(kind: str) -> Any:
    module = kind.split("_")[0]
    path = APPS / f"{module}_app.py"
    if not path.exists():  # every adapter must run the suite
        pytest.fail(f"no conformance builder for {kind}: add {path.name}")
    spec = importlib.util.spec_from_file_location(f"conformance_{module}_app", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_seller(kind: str, tmp_path: Path) -> Iterator[Callable[..., Seller]]:
    """Build the conformance app for ``kind`` with PaymentConfig options overridden."""
    made: list[Seller] = []

    def make(**overrides: Any) -> Seller:
        clock = ShiftedClock()
        core_config = overrides.pop("core_config", CoreConfig(validation_timeout=600))
        core = Core(str(tmp_path / f"core{len(made)}.db"), config=core_config, clock=clock)
        options: dict[str, Any] = {
            "pay_to": SELLER,
            "network": NETWORK,
            "routes": dict(ROUTES),
            "core": core,
            "premium_price": PREMIUM_PRICE,
        }
        options.update(overrides)
        calls: collections.Counter[str] = collections.Counter()
        mod = _load(kind)
        client = (
            mod.build(options, calls)
            if kind.split("_")[0] != "django"
            else mod.build(options, calls, kind)
        )
        seller = Seller(kind, client, core, clock, calls, options)
        made.append(seller)
        return seller

    yield make
    for seller in made:
        close = getattr(seller.client, "close", None)
        if close:
            close()
        seller.core.close()


@pytest.fixture
def seller(make_seller: Callable[..., Seller]) -> Seller:
    return make_seller()


# -- paying helpers (shared by the suites below; tests ask for the ``kit`` fixture) -------------


class Kit:
    """A buyer's moves against a conformance seller, through its test client."""

    @staticmethod
    def b64json(value: str) -> Any:
        return json.loads(base64.b64decode(value))

    @staticmethod
    def funded(seller: Seller, amount: int = 1_000_000) -> TestBuyer:
        buyer = TestBuyer.new()
        seller.core.deposit(buyer.address, amount, network=NETWORK)
        return buyer

    @staticmethod
    def challenge(seller: Seller, path: str, method: str = "GET", version: int = 2) -> Any:
        """The route's payment requirements, read off its 402 (v2 header, or v1 body)."""
        resp = seller.request(method, path, json={"x": 1} if method in ("POST", "PUT") else None)
        assert resp.status == 402, (method, path, resp.status, resp.text)
        if version == 2:
            return decode_payment_required(resp.headers["payment-required"]).accepts[0]
        return PaymentRequirementsV1.model_validate(resp.json()["accepts"][0]).to_v2()

    def header(
        self, seller: Seller, buyer: TestBuyer, path: str, method: str = "GET", version: int = 2
    ) -> dict[str, str]:
        """A valid payment header for ``method path`` (challenge → tab → signature)."""
        req = self.challenge(seller, path, "GET" if method == "HEAD" else method, version)
        body = {"x402Version": version, "userAddress": buyer.address}
        resp = seller.request(
            "POST", "/x402/tab", json={**body, "paymentRequirements": req.to_dict()}
        )
        assert resp.status == 200, resp.text
        name, value = payment_header(buyer, req, resp.json(), version=version)
        return {name: value}

    def pay(self, seller: Seller, buyer: TestBuyer, path: str, method: str = "GET") -> Resp:
        headers = self.header(seller, buyer, path, method)
        body = {"x": 1} if method in ("POST", "PUT", "PATCH") else None
        return seller.request(method, path, headers=headers, json=body)

    @staticmethod
    def error_of(resp: Resp) -> str:
        """The reason a paid request was refused (from the v2 challenge header)."""
        assert resp.status == 402, (resp.status, resp.text)
        return str(decode_payment_required(resp.headers["payment-required"]).error)

    @staticmethod
    def locked(seller: Seller, buyer: TestBuyer) -> int:
        return int(seller.core.position(buyer.address, network=NETWORK).locked)


@pytest.fixture
def base_routes() -> dict[str, Any]:
    """The routes every builder prices by config (builders may add their own)."""
    return dict(ROUTES)


@pytest.fixture
def kit() -> Kit:
    return Kit()


# -- the buyer client through each transport (test_buyer.py asks for ``buyers``) -----------------

TRANSPORTS = ["httpx", "httpx_async", "requests"]


def buyer_harness() -> ModuleType:
    """``buyers.py`` beside this file (Wire, Got, loopback, the clients), loaded once."""
    name = "conformance_buyers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "buyers.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


buyer_harness()  # at import: test_buyer.py subclasses its Wire


@pytest.fixture(params=TRANSPORTS)
def buyers(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Buyer clients for one transport: httpx (sync), httpx (async) or requests."""
    made = buyer_harness().Buyers(str(request.param))
    yield made
    made.close()
