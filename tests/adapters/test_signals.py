"""The monitoring signals over HTTP (docs/operations.md, "Monitoring signals"): a seller gate's
``/x402/metrics`` (opt-in, behind the seller's token), and two real seller processes plus the
service on one database (SQLite file; PostgreSQL where available) reporting the same values.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.client import PaymentTransport
from fourmica_x402.core import Core
from fourmica_x402.core.signals import AssetSignals, CycleSignals, SellerSignals, Signals
from fourmica_x402.gate.endpoints import METRICS_TOKEN_ENV
from fourmica_x402.networks import default_asset
from fourmica_x402.server.charts import signals_section
from fourmica_x402.service import create_app
from fourmica_x402.signals import RefusalCounter
from fourmica_x402.testing import NETWORK, TestBuyer

APPS = Path(__file__).resolve().parent / "apps"
USDC = default_asset(NETWORK).address
PRICE = 10_000  # "$0.01"
SELLER = TestBuyer.new().address
#: What each process counts for itself; everything else comes from the database.
PER_PROCESS = (
    "fourmica_invalid_payments",
    "fourmica_settle",
    "fourmica_guarantees_rejected",
    "fourmica_request_seconds",
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def from_database(got: Samples) -> Samples:
    return {k: v for k, v in got.items() if not k[0].startswith(PER_PROCESS)}


def seller_key(name: str, seller: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, (("asset", USDC), ("network", NETWORK), ("seller", seller))


def asset_key(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, (("asset", USDC), ("network", NETWORK))


# -- the gate's endpoint, in process ----------------------------------------------------------


def seller_app(core: Core) -> tuple[Starlette, PaymentConfig]:
    config = PaymentConfig(
        pay_to=SELLER,
        routes={"GET /premium": "$0.01"},
        core=core,
        delivery_policy=False,
        on_failure=RefusalCounter(),
    )

    async def premium(request: object) -> PlainTextResponse:
        return PlainTextResponse("paid")

    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    return app, config


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    c = Core(str(tmp_path / "gate.db"))
    yield c
    assert c.audit() == []
    c.close()


def test_the_gate_serves_its_metrics_to_the_sellers_token_only(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(METRICS_TOKEN_ENV, raising=False)
    app, config = seller_app(core)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    core.accept(*buyer.pay(core, SELLER, 25_000))
    with TestClient(app) as client:
        # No token configured: the path does not exist.
        assert client.get("/x402/metrics").status_code == 404

        monkeypatch.setenv(METRICS_TOKEN_ENV, "env-token")
        bare = client.get("/x402/metrics")
        assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
        wrong = client.get("/x402/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "accepted" not in wrong.text
        assert (
            client.post("/x402/metrics", headers={"Authorization": "Bearer env-token"}).status_code
            == 404
        )

        # A refused payment, counted by this process's RefusalCounter.
        assert client.get("/premium", headers={"payment-signature": "garbage"}).status_code == 402

        ok = client.get("/x402/metrics", headers={"Authorization": "Bearer env-token"})
        assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
        assert ok.headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(ok.text)
        assert got[seller_key("fourmica_seller_guarantees_accepted_total", SELLER)] == 1
        assert got[seller_key("fourmica_payment_amount_average_atomic", SELLER)] == 25_000
        assert got[("fourmica_invalid_payments_total", (("reason", "malformed_payment"),))] == 1

        # A token in the configuration wins over the environment's.
        config.metrics_token = "config-token"
        assert "config-token" not in repr(config)  # a secret: never in a log line
        auth = {"Authorization": "Bearer config-token"}
        assert client.get("/x402/metrics", headers=auth).status_code == 200
        old = client.get("/x402/metrics", headers={"Authorization": "Bearer env-token"})
        assert old.status_code == 401


def test_a_gate_whose_database_is_gone_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(METRICS_TOKEN_ENV, "t")
    core = Core(str(tmp_path / "gone.db"))
    app, _ = seller_app(core)
    with TestClient(app) as client:
        core.close()
        answer = client.get("/x402/metrics", headers={"Authorization": "Bearer t"})
    assert answer.status_code == 503 and answer.json()["error"] == "core_unavailable"


def test_the_signals_section_escapes_what_it_shows() -> None:
    """Nothing from the database reaches the page unescaped, not even a hostile asset name."""
    bad = "<script>alert(1)</script>"
    page = signals_section(
        Signals(
            sellers=[SellerSignals(NETWORK, bad, bad, 2, 3, 1)],
            assets=[AssetSignals(NETWORK, bad, 1, 2, 3)],
            cycles=[CycleSignals(7, NETWORK, bad, "final", 0.0, 2, 3, 2, 3, 3, 0, 0)],
        )
    )
    assert "<script" not in page and page.count("&lt;script&gt;") >= 4
    assert page.count("<svg") == 5 and 'data-cycle="7" data-value="3"' in page


# -- two seller processes and the service on one database ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def seller_process(db: str, pay_to: str, token: str) -> Iterator[str]:
    """A uvicorn process serving apps/signals_seller.py; yields its URL, killed afterwards."""
    port = _free_port()
    env = dict(os.environ, SIGNALS_CORE=db, PAY_TO=pay_to, **{METRICS_TOKEN_ENV: token})
    command = [sys.executable, "-m", "uvicorn", "signals_seller:app", "--app-dir", str(APPS)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(url + "/free"):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                log = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"seller did not start: {log[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _pay(url: str, buyer: TestBuyer, count: int) -> None:
    with httpx.Client(transport=PaymentTransport(buyer.key), timeout=10) as client:
        for _ in range(count):
            answer = client.get(url + "/premium")
            assert answer.status_code == 200, answer.text


@pytest.mark.slow
def test_two_seller_processes_and_the_service_report_the_same_signals(store_url: str) -> None:
    token = "metrics-token"
    auth = {"Authorization": f"Bearer {token}"}
    buyer = TestBuyer.new()
    s1, s2 = TestBuyer.new().address, TestBuyer.new().address
    core = Core(store_url)
    core.deposit(buyer.address, 100 * PRICE, network=NETWORK)
    with ExitStack() as stack:
        first = stack.enter_context(seller_process(store_url, s1, token))
        second = stack.enter_context(seller_process(store_url, s2, token))
        service = stack.enter_context(TestClient(create_app(core, tick_interval=None)))
        _pay(first, buyer, 3)
        _pay(second, buyer, 2)
        refused = httpx.get(
            first + "/premium", headers={"payment-signature": "garbage"}, timeout=10
        )
        assert refused.status_code == 402

        def scrape() -> list[Samples]:
            pages = [
                httpx.get(u + "/x402/metrics", headers=auth, timeout=10) for u in (first, second)
            ]
            assert [p.status_code for p in pages] == [200, 200]
            return [samples(p.text) for p in pages] + [samples(service.get("/metrics").text)]

        one, two, svc = scrape()
        assert from_database(one) == from_database(two) == from_database(svc)
        for seller, count in ((s1, 3), (s2, 2)):
            assert one[seller_key("fourmica_seller_guarantees_accepted_total", seller)] == count
            assert one[seller_key("fourmica_payment_amount_atomic_sum", seller)] == count * PRICE
            assert one[seller_key("fourmica_payers", seller)] == 1
        # Refusals are each process's own: the first refused one, the second none.
        assert one[("fourmica_invalid_payments_total", (("reason", "malformed_payment"),))] == 1
        assert not [k for k in two if k[0] == "fourmica_invalid_payments_total"]

        # The service closes the cycle; both sellers see it netted at once.
        closed = core.close_cycle(network=NETWORK)
        assert closed.guarantee_count == 5 and closed.gross == 5 * PRICE
        one, two, svc = scrape()
        assert from_database(one) == from_database(two) == from_database(svc)
        assert one[asset_key("fourmica_cycles_closed_total")] == 1
        assert one[asset_key("fourmica_cycle_guarantees_total")] == 5
        assert one[asset_key("fourmica_cycle_gross_atomic_total")] == 5 * PRICE
        for seller, count in ((s1, 3), (s2, 2)):
            assert one[seller_key("fourmica_guarantees_per_cycle", seller)] == count
            assert one[seller_key("fourmica_cycle_guarantees_per_payer_count", seller)] == 1
    assert core.audit() == []
    core.close()
