"""x402's own Python client pays 4Mica sellers through our scheme, spend controls ON.

Since x402 2.20 the client's spend controls refuse any offer whose asset its scheme cannot
name, and the official 4Mica scheme names none; ``fourmica_x402.client.x402_scheme`` does.
These tests run x402's sync (requests) and async (httpx) clients with the scheme, for real
over loopback, on the oldest x402 the scheme supports and the newest:

- against our sellers (embedded Core; the Starlette, FastAPI, Flask and Django conformance
  apps under real servers), over x402 v2 and, through a proxy that hides the v2 header, v1;
- against the official 4mica-x402 middleware seller (x402 v2 only; it runs in the official
  virtualenv of test_official.py, with our service as its facilitator);
- with spend-control caps refusing an offer over them (before any tab is opened), with spend
  controls off, and with our SpendingPolicy refusing on its own.

The buyer runs ``scripts/x402_buyer.py`` in a scratch virtualenv per x402 release (x402,
requests and this project's dependencies, cached like the official one: see
``adapters/_bench/official.py``), with this project's package put on its path as a link to
the one this interpreter imports, so the cached virtualenv never holds a stale copy.
Without network the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from fourmica_x402.adapters._bench.official import official_env, scratch_python
from fourmica_x402.adapters._bench.official import official_python as build_official_python

import fourmica_x402
from fourmica_x402.bench import Skipped
from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.testing import NETWORK

pytestmark = [pytest.mark.interop, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"
#: The oldest x402 the scheme supports (the first with spend controls and the asset lookup it
#: answers) and the newest on the index when this was written.
X402_VERSIONS = ["2.20.0", "2.25.0"]
SELLERS = ["starlette", "fastapi", "flask", "django_sync"]
SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # a throwaway TEST address
PRICE = 10_000  # "$0.01" in USDC atomic units


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loopback helpers shared with the official interop tests: free_port, serving, v1_only_proxy,
# new_key, wait_for.
shared = _load("interop_official_loopback", HERE / "test_official.py")


# -- the buyer's virtualenv: one per x402 release ---------------------------------------------


def _runtime_requirements() -> list[str]:
    """This project's own dependencies (no extras), as its installed metadata lists them."""
    requires = importlib.metadata.requires("fourmica-x402") or []
    return sorted(r for r in requires if ";" not in r)


def _checker(version: str) -> Callable[[Path], str | None]:
    code = (
        "import importlib.metadata as m, requests, httpx, coincurve, pydantic, blspy;"
        "from x402 import x402Client, x402ClientSync;"
        "from x402.http.clients import x402_requests, x402HttpxClient;"
        "print(m.version('x402'))"
    )

    def check(python: Path) -> str | None:
        if not python.exists():
            return f"{python} does not exist"
        out = subprocess.run(
            [str(python), "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env=official_env(),
        )
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            return f"{python} lacks x402 or our dependencies: {lines[-1] if lines else '?'}"
        if out.stdout.strip() != version:
            return f"{python} has x402 {out.stdout.strip()}, want {version}"
        return None

    return check


@pytest.fixture(scope="session")
def our_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only a link to the fourmica_x402 package this interpreter imports."""
    where = tmp_path_factory.mktemp("our-package")
    (where / "fourmica_x402").symlink_to(Path(fourmica_x402.__file__).resolve().parent)
    return where


class X402Buyer:
    """Runs scripts in the buyer virtualenv of one x402 release (our package on its path)."""

    def __init__(self, python: Path, version: str, our_package: Path) -> None:
        self.python, self.version, self._path = python, version, our_package

    def run(self, script: Path, *args: str, env: dict[str, str] | None = None) -> Any:
        environ = {**official_env(), "PYTHONPATH": str(self._path), **(env or {})}
        try:
            return subprocess.run(
                [str(self.python), "-s", str(script), *args],
                capture_output=True,
                text=True,
                timeout=180,
                env=environ,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{script.name} timed out: {exc.stderr!r}"[-2000:])

    def pay(self, key: str, *payments: dict[str, Any]) -> list[dict[str, Any]]:
        """scripts/x402_buyer.py's results, one per payment (see its docstring)."""
        plan = json.dumps({"key": key, "payments": list(payments)})
        out = self.run(HERE / "scripts" / "x402_buyer.py", plan)
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            pytest.fail(
                f"the x402 buyer printed no JSON (rc {out.returncode}): {out.stderr[-3000:]}"
            )
        assert result["x402"] == self.version
        return list(result["results"])


def _x402_buyer(
    version: str, our_package: Path, environment_missing: Callable[[str], NoReturn]
) -> X402Buyer:
    packages = [f"x402=={version}", "requests>=2.31", *_runtime_requirements()]
    try:
        python = scratch_python(
            packages,
            check=_checker(version),
            what=f"x402 {version} and this project's dependencies",
            announce=f"installing x402=={version} for the x402 client tests into {{venv}} (once)",
        )
    except Skipped as exc:
        if "is broken" in str(exc):  # ours to fix, not the machine's
            pytest.fail(str(exc), pytrace=False)
        environment_missing(str(exc))
    return X402Buyer(python, version, our_package)


@pytest.fixture(scope="session", params=X402_VERSIONS, ids=[f"x402-{v}" for v in X402_VERSIONS])
def buyer(
    request: pytest.FixtureRequest,
    our_package: Path,
    environment_missing: Callable[[str], NoReturn],
) -> X402Buyer:
    """The x402 buyer of one release: its virtualenv built once and cached."""
    return _x402_buyer(str(request.param), our_package, environment_missing)


@pytest.fixture(scope="session")
def newest_buyer(our_package: Path, environment_missing: Callable[[str], NoReturn]) -> X402Buyer:
    return _x402_buyer(X402_VERSIONS[-1], our_package, environment_missing)


# -- our sellers under real servers -----------------------------------------------------------


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def asgi_in_thread(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn in this process, its lifespan run (FastAPI's ``Paid``
    markers are collected at start-up); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=shared.free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    shared.wait_for(lambda: server.started or not thread.is_alive(), "the seller to start", 15)
    assert server.started, "the seller did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def wsgi_in_thread(app: Any) -> Iterator[str]:
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def our_seller(kind: str, tmp_path: Path) -> Iterator[tuple[str, Core]]:
    """A conformance app (GET /premium at $0.01) on a loopback port, with its Core."""
    core = Core(str(tmp_path / "core.db"), config=CoreConfig(validation_timeout=600))
    options: dict[str, Any] = {
        "pay_to": SELLER,
        "network": NETWORK,
        "routes": {},
        "core": core,
        "premium_price": "$0.01",
    }
    module = kind.split("_")[0]
    builder = _load(
        f"x402_scheme_{module}_app", HERE.parent / "conformance/apps" / f"{module}_app.py"
    )
    calls: collections.Counter[str] = collections.Counter()
    client = (
        builder.build(options, calls, kind) if module == "django" else builder.build(options, calls)
    )
    serve = asgi_in_thread if client.interface == "asgi" else wsgi_in_thread
    try:
        with serve(client.app) as base:
            yield base, core
    finally:
        getattr(client, "close", lambda: None)()
        core.close()


def paid_guarantees(core: Core, buyer: str) -> list[Any]:
    return [g for g in core.guarantees() if g.user_address == buyer]


def assert_paid(result: dict[str, Any], buyer: str, version: int) -> str:
    """The x402 client got the paid answer; returns the guarantee id the seller reported."""
    assert result["error"] is None, result["causes"]
    assert result["status"] == 200, result
    settle = result["payment_response" if version == 2 else "x_payment_response"]
    other = result["x_payment_response" if version == 2 else "payment_response"]
    assert other is None and settle["success"] is True and settle["payer"] == buyer, result
    return str(settle["transaction"])


# -- a. the matrix: our sellers, sync and async, x402 v2 and v1, spend controls on -------------


@pytest.mark.parametrize("kind", SELLERS)
def test_x402_client_pays_our_seller_with_spend_controls_on(
    buyer: X402Buyer, kind: str, tmp_path: Path
) -> None:
    key, address = shared.new_key()
    with our_seller(kind, tmp_path) as (base, core):
        core.deposit(address, 1_000_000, network=NETWORK)
        with shared.v1_only_proxy(base) as (v1_base, seen):
            # x402's default spend controls (on, $1 a payment): no set_spend_controls call
            plan = [
                {"url": f"{base}/premium", "mode": "sync"},
                {"url": f"{v1_base}/premium", "mode": "sync"},
                {"url": f"{base}/premium", "mode": "async"},
                {"url": f"{v1_base}/premium", "mode": "async"},
            ]
            results = buyer.pay(key, *plan)
        versions = [2, 1, 2, 1]
        ids = [assert_paid(r, address, v) for r, v in zip(results, versions, strict=True)]
        for result, version in zip(results, versions, strict=True):
            body = result["body"]
            assert body["payer"] == address and body["x402_version"] == version, body
        # v1 retries carried X-PAYMENT, never PAYMENT-SIGNATURE
        assert sum("x-payment" in h for h in seen) == 2, seen
        assert not any("payment-signature" in h for h in seen)
        # v2: G-v2 under the default delivery policy, scored 100 once delivered; v1: G-v1
        for gid, version in zip(ids, versions, strict=True):
            record = shared.wait_for(
                lambda gid=gid: (g := core.guarantee(gid)).state == "payable" and g, "payable"
            )
            assert record.version == version and record.user_address == address
            assert record.amount == PRICE and record.recipient_address == SELLER
        assert len(paid_guarantees(core, address)) == 4
        assert core.position(address, network=NETWORK).locked == 4 * PRICE
        assert core.audit() == []


# -- b. caps: x402's spend controls and our policy refuse before anything is signed ------------


def test_caps_refuse_before_anything_is_signed_and_spend_controls_can_be_off(
    buyer: X402Buyer, tmp_path: Path
) -> None:
    key, address = shared.new_key()
    usdc_cap = {"network": NETWORK, "asset": "USDC", "max_amount_per_payment": str(PRICE - 1)}
    under_price = {"max_amount_per_payment": "$0.005"}
    with our_seller("starlette", tmp_path) as (base, core):
        core.deposit(address, 1_000_000, network=NETWORK)
        url = f"{base}/premium"
        refused = buyer.pay(
            key,
            {"url": url, "mode": "sync", "spend_controls": under_price},
            {"url": url, "mode": "async", "spend_controls": under_price},
            # a per-asset atomic cap, matched by the symbol our asset lookup gives x402
            {"url": url, "mode": "sync", "spend_controls": {"allowed_assets": [usdc_cap]}},
            # our own SpendingPolicy, under x402's default spend controls
            {"url": url, "mode": "async", "policy": {"max_per_request": "$0.005"}},
            {
                "url": url,
                "mode": "sync",
                "policy": {"approval_threshold": "$0.005", "approve": False},
            },
        )
        for result in refused[:2]:
            assert result["status"] is None, result
            assert any("max_amount_per_payment ($0.005" in c for c in result["causes"]), result
        assert any("allowed_assets max_amount_per_payment" in c for c in refused[2]["causes"])
        assert any(c.startswith("BudgetExhausted: price $0.01") for c in refused[3]["causes"])
        assert any(c.startswith("NeedsApproval: approval needed") for c in refused[4]["causes"])
        # refused before a tab was opened, let alone a guarantee signed
        assert core.open_tab_count(SELLER) == 0 and paid_guarantees(core, address) == []

        paid = buyer.pay(
            key,
            {"url": url, "mode": "sync", "spend_controls": False},
            {"url": url, "mode": "async", "spend_controls": {"max_amount_per_payment": "$0.01"}},
            {
                "url": url,
                "mode": "async",
                "policy": {"approval_threshold": "$0.005", "approve": True},
            },
        )
        for result in paid:  # spend controls off; a cap the price fits; approved (awaited)
            assert_paid(result, address, 2)
        assert len(paid_guarantees(core, address)) == 3
        assert core.position(address, network=NETWORK).locked == 3 * PRICE


# -- c. the official 4mica-x402 middleware seller ---------------------------------------------


@pytest.fixture(scope="module")
def official_seller(
    tmp_path_factory: pytest.TempPathFactory, environment_missing: Callable[[str], NoReturn]
) -> Iterator[tuple[str, str]]:
    """The official route-dict FastAPI seller (x402 2.20.0 + 4mica-x402, in the official
    virtualenv) with our service as facilitator: yields (seller URL, service URL)."""
    try:
        python = build_official_python()
    except Skipped as exc:
        environment_missing(str(exc))
    where = tmp_path_factory.mktemp("official-seller")
    service_port, seller_port = shared.free_port(), shared.free_port()
    service = f"http://127.0.0.1:{service_port}"
    seller = f"http://127.0.0.1:{seller_port}"
    serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", f"sqlite:///{where / 's.db'}"]
    serve += ["--port", str(service_port), "--sandbox"]
    with shared.serving("fourmica-x402 serve", serve, f"{service}/health", where / "service.log"):
        params = httpx.get(f"{service}/core/public-params", timeout=10).json()
        _, validator = shared.new_key()
        # What a buyer needs besides tabEndpoint (official_seller.py explains). Numbers as
        # strings, which an official seller passes through as written: our scheme reads them
        # leniently, and so does our service as the seller's facilitator (/verify, /settle).
        extra = {
            "rpcUrl": service,
            "validationRegistryAddress": params["trusted_validation_registries"][0],
            "validatorAddress": validator,
            "validatorAgentId": "7",
            "minValidationScore": "80",
            "validationChainId": "84532",
            "jobHash": "0x" + "77" * 32,
        }
        args = [str(python), "-I", str(HERE / "scripts" / "official_seller.py"), str(seller_port)]
        args += [service, SELLER, "--extra", json.dumps(extra)]
        log = where / "official_seller.log"
        with shared.serving("official seller", args, f"{seller}/health", log, official_env()):
            yield seller, service


def test_x402_client_pays_the_official_seller(buyer: X402Buyer, official_seller: Any) -> None:
    seller, service = official_seller
    key, address = shared.new_key()
    funded = httpx.post(
        f"{service}/sandbox/deposit", json={"address": address, "amount": "$1"}, timeout=10
    )
    assert funded.status_code == 200, funded.text
    # The official seller speaks x402 v2 only; x402's default spend controls stay on.
    url = f"{seller}/premium"
    results = buyer.pay(key, {"url": url, "mode": "sync"}, {"url": url, "mode": "async"})
    ids = [assert_paid(result, address, 2) for result in results]
    assert [r["body"] for r in results] == [{"premium": "the good stuff"}] * 2
    rows = httpx.get(f"{service}/api/guarantees", timeout=10).json()
    mine = {row["guarantee_id"]: row for row in rows if row["user_address"] == address}
    assert set(mine) == set(ids), rows
    for row in mine.values():  # G-v2 on the tab the official seller opened at our service
        assert row["version"] == 2 and row["amount"] == PRICE and row["recipient_address"] == SELLER
        assert row["state"] == "pending_validation" and row["min_score"] == 80


def test_x402_client_pays_the_official_seller_an_offer_without_validation_policy(
    buyer: X402Buyer, tmp_path: Path, environment_missing: Callable[[str], NoReturn]
) -> None:
    """The official seller as its README shows it (no validation policy): its tab endpoint
    opens the tab at the tab request's ``x402Version``; our scheme signs G-v1 on that tab."""
    try:
        python = build_official_python()
    except Skipped as exc:
        environment_missing(str(exc))
    with shared._official_seller_on_our_service(python, tmp_path) as (service, seller, pay_to):
        key, address = shared.new_key()
        shared._fund(service, address)
        url = f"{seller}/premium"
        results = buyer.pay(key, {"url": url, "mode": "sync"}, {"url": url, "mode": "async"})
        ids = [assert_paid(result, address, 2) for result in results]
        rows = httpx.get(f"{service}/api/guarantees", timeout=10).json()
    assert {row["guarantee_id"] for row in rows} == set(ids) and len(ids) == 2
    for row in rows:
        assert row["version"] == 1 and row["amount"] == PRICE and row["recipient_address"] == pay_to


# -- d. the example ---------------------------------------------------------------------------


def test_x402_client_example_pays_a_seller(newest_buyer: X402Buyer, tmp_path: Path) -> None:
    key = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"  # throwaway
    address = fourmica_x402.address_of(key)
    with our_seller("starlette", tmp_path) as (base, core):
        core.deposit(address, 1_000_000, network=NETWORK)
        env = {"SELLER_URL": base, "BUYER_KEY": key, "PATHS": "/premium,/premium"}
        out = newest_buyer.run(EXAMPLES / "x402_client_buyer.py", env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count("/premium   200 paid") == 2, out.stdout
        assert "spend controls refused" in out.stdout, out.stdout
        assert len(paid_guarantees(core, address)) == 2
