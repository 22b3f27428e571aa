"""Alerts wired into a seller app and the service (docs/operations.md, "Alerts"): refused
payments over HTTP fire the invalid-payment rules once per crossing (the seller's own
``on_failure`` still runs, and its refusal counter is still served), the gate's checker and
the service's loop fire the database rules, and each firing is an ``alert.fired`` event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from fourmica_x402.alerts import AlertRules
from fourmica_x402.client import PaymentTransport
from fourmica_x402.core import Core
from fourmica_x402.errors import InsufficientCollateral
from fourmica_x402.facilitator import LocalFacilitator
from fourmica_x402.gate import Gate
from fourmica_x402.service import create_app
from fourmica_x402.signals import RefusalCounter
from fourmica_x402.testing import NETWORK, TestBuyer

SELLER = TestBuyer.new().address


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    c = Core(str(tmp_path / "alerts.db"))
    yield c
    assert c.audit() == []
    c.close()


@contextmanager
def seller(config: PaymentConfig) -> Iterator[tuple[TestClient, Gate]]:
    """A Starlette seller on ``config`` and its gate, whose alert checker stops afterwards."""

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    gate = Gate(config)
    app = Starlette(
        routes=[Route("/premium", premium), Route("/items/{n:int}", premium)],
        middleware=[Middleware(PaymentMiddleware, gate=gate)],
    )
    try:
        with TestClient(app) as client:
            yield client, gate
    finally:
        if gate.alerts is not None:
            gate.alerts.stop()


def alerts_of(core: Core) -> list[dict[str, Any]]:
    core.store.deferred.drain()  # the hook writes off the request's path
    return [e.data for e in core.events(type="alert.fired")]


def wait_for(found: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not found():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_refused_payments_over_http_fire_once_per_crossing(core: Core) -> None:
    seen: list[str] = []
    counter = RefusalCounter(then=lambda request, error: seen.append(error.reason))
    config = PaymentConfig(
        pay_to=SELLER,
        routes={"GET /premium": "$0.01", "GET /items/:n": "$0.01"},
        core=core,
        delivery_policy=False,
        metrics_token="t",
        on_failure=counter,
        alerts=AlertRules(
            invalid_payments_per_ip=3, invalid_payments_per_route=2, invalid_payments_per_payer=2
        ),
    )
    with seller(config) as (client, gate):
        garbage = {"payment-signature": "garbage"}
        for path in ("/items/1", "/items/2", "/premium", "/premium"):
            assert client.get(path, headers=garbage).status_code == 402
        # A buyer with no collateral: properly signed, refused for its collateral (per payer).
        buyer = TestBuyer.new()
        transport = PaymentTransport(buyer.key, transport=client._transport)
        with httpx.Client(transport=transport, base_url="http://testserver") as paying:
            for _ in range(2):
                with pytest.raises(InsufficientCollateral):
                    paying.get("/premium")
        metrics = client.get("/x402/metrics", headers={"Authorization": "Bearer t"}).text
        assert gate.config.on_failure is not counter  # the gate chains the alerts before it
    # Written off the requests' paths: a batch that rides on a refused settle is retried
    # after it, so the events may be stored in another order than they fired.
    got = sorted((a["rule"], a["subject"], a["value"]) for a in alerts_of(core))
    assert got == [
        ("invalid_payments_per_ip", "testclient", 3),
        ("invalid_payments_per_payer", buyer.address, 2),
        ("invalid_payments_per_route", "GET /items/:n", 2),  # one route template, two paths
        ("invalid_payments_per_route", "GET /premium", 2),
    ]
    assert seen == ["malformed_payment"] * 4 + ["insufficient_collateral"] * 2
    assert counter.counts() == {"malformed_payment": 4, "insufficient_collateral": 2}
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("fourmica_invalid_payments_total", (("reason", "malformed_payment"),))] == 4
    assert config.on_failure is counter  # the seller's configuration is left as it was


def test_the_gate_checks_the_database_rules_in_the_background(core: Core) -> None:
    config = PaymentConfig(
        pay_to=SELLER,
        routes={"GET /premium": "$0.01"},
        core=core,
        alerts=AlertRules(withdrawal_requested=0, collateral_floor=500, interval=0.05),
    )
    with seller(config) as (client, gate):
        assert gate.alerts is not None and gate.alerts.hook is None  # no invalid-payment rule
        assert gate.config is config
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 1_000, network=NETWORK)
        core.request_withdrawal(buyer.address, 600, network=NETWORK)
        wait_for(lambda: len(alerts_of(core)) == 2)
        time.sleep(0.2)  # a few more checks: nothing fires again
        assert sorted(a["rule"] for a in alerts_of(core)) == [
            "collateral_floor",
            "withdrawal_requested",
        ]
        assert client.get("/premium").status_code == 402


def test_a_gate_on_a_remote_facilitator_logs_its_database_rules_are_the_services(
    core: Core, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fourmica_x402.alerts"):
        gate = Gate(
            PaymentConfig(
                pay_to=SELLER,
                facilitator=LocalFacilitator(core),  # any Facilitator: not the embedded Core
                records=str(tmp_path / "records.db"),
                alerts=AlertRules(default=0, invalid_payments_per_ip=5),
            )
        )
    assert gate.alerts is not None and gate.alerts.checker is None
    assert gate.alerts.hook is not None and gate.alerts.hook.core is None  # logs only
    assert "default read the Core's database" in caplog.text


def test_the_service_checks_the_database_rules(core: Core) -> None:
    app = create_app(
        core, tick_interval=None, webhooks=False, alerts=AlertRules(default=0, interval=0.05)
    )
    assert app.state.service.alert_checker is not None
    with TestClient(app):
        debtor, seller = TestBuyer.new(), TestBuyer.new().address
        core.deposit(debtor.address, 1_000, network=NETWORK)
        core.accept(*debtor.pay(core, seller, 400))
        cycle = core.close_cycle(network=NETWORK)
        core.clock = lambda: time.time() + 400_000  # past resolution, deadline and finality
        core.tick()
        core.tick()
        wait_for(lambda: len(alerts_of(core)) == 1)
    [alert] = alerts_of(core)
    assert (alert["rule"], alert["subject"]) == ("default", f"{cycle.cycle_id}/{debtor.address}")
    assert create_app(core, tick_interval=None, webhooks=False).state.service.alert_checker is None


def test_serve_takes_alert_rules_and_refuses_bad_ones(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fourmica_x402.cli import main

    runner = CliRunner(env={"FOURMICA_X402_ALERTS": None, "COLUMNS": "300"})
    db = f"sqlite:///{tmp_path / 'core.db'}"
    for bad in (
        "nope=1",
        "default=-1",
        "settlement_deadline=soon",
        "collateral_floor=99999999999999999999999999",  # more than the database compares
    ):
        result = runner.invoke(main, ["serve", "--db", db, "--alerts", bad])
        assert result.exit_code == 2 and "'--alerts'" in result.output, result.output
        assert "Traceback" not in result.output
    text = " ".join(runner.invoke(main, ["serve", "--help"]).output.split())
    assert "--alerts RULE=VALUE,…" in text and "FOURMICA_X402_ALERTS" in text
