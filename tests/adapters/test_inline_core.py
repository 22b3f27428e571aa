"""ASGI + the embedded SQLite Core: short writes on the event loop, a worker thread otherwise."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import fourmica_x402.gate as gate_module
from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

SELLER = TestBuyer.new().address


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the gate sent to a worker thread."""
    seen: list[str] = []
    real = asyncio.to_thread

    async def counting(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(gate_module.asyncio, "to_thread", counting)
    return seen


def _seller(core: Core, runs: list[str]) -> TestClient:
    async def premium(request: Request) -> JSONResponse:
        runs.append(request.state.payment.guarantee_id)
        return JSONResponse({"ok": True})

    config = PaymentConfig(pay_to=SELLER, routes={"GET /premium": "$0.01"}, core=core)
    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    return TestClient(app)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    assert core.audit() == []  # every test leaves a consistent Core
    core.close()


@pytest.fixture
def buyer(core: Core) -> TestBuyer:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    return buyer


def _paid_while(client: TestClient, headers: dict[str, str], release: Any) -> Any:
    """Send a paid request while something holds a lock that ``release`` frees in 0.3 s."""
    timer = threading.Timer(0.3, release)
    timer.start()
    try:
        return client.get("/premium", headers=headers)
    finally:
        timer.join()


def _header(client: TestClient, core: Core, buyer: TestBuyer) -> dict[str, str]:
    req = decode_payment_required(client.get("/premium").headers["payment-required"]).accepts[0]
    tab = core.open_tab(buyer.address, req.pay_to, network=NETWORK, guarantee_version=2)
    name, value = payment_header(buyer, req, tab.to_json())
    return {name: value}


def _pay(client: TestClient, core: Core, buyer: TestBuyer) -> Any:
    return client.get("/premium", headers=_header(client, core, buyer))


def test_uncontended_payment_needs_no_worker_thread(
    core: Core, buyer: TestBuyer, hops: list[str]
) -> None:
    runs: list[str] = []
    with _seller(core, runs) as client:
        resp = _pay(client, core, buyer)
    assert resp.status_code == 200 and len(runs) == 1
    assert hops == []  # acceptance + record, score + completion: both on the loop
    [record] = gate_record(core)
    assert (record.status, record.outcome) == ("delivered", "delivered")
    assert core.guarantee(runs[0]).state == "payable"


def test_the_loop_waits_for_this_process_other_writer_without_blocking(
    core: Core, buyer: TestBuyer, hops: list[str]
) -> None:
    runs: list[str] = []
    lock = core.store._write_lock  # type: ignore[attr-defined]
    with _seller(core, runs) as client:
        headers = _header(client, core, buyer)
        lock.acquire()  # another writer of this process (a thread) is mid-transaction
        resp = _paid_while(client, headers, core.store._release_writer)  # type: ignore[attr-defined]
    assert resp.status_code == 200 and len(runs) == 1
    assert hops == []  # woken when it finished, then done on the loop: no thread
    assert core.guarantee(runs[0]).state == "payable"


def test_another_process_holding_the_database_sends_the_work_to_a_thread(
    core: Core, buyer: TestBuyer, hops: list[str], tmp_path: Path
) -> None:
    import sqlite3

    runs: list[str] = []
    with _seller(core, runs) as client:
        headers = _header(client, core, buyer)
        other = sqlite3.connect(str(tmp_path / "core.db"), check_same_thread=False)
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")  # another process's writer
        resp = _paid_while(client, headers, lambda: other.execute("COMMIT"))
        other.close()
    assert resp.status_code == 200 and len(runs) == 1
    assert "_settle_and_record" in hops  # waited in a worker thread, never on the loop
    assert core.guarantee(runs[0]).state == "payable"


def test_a_failure_on_the_loop_is_handled_by_the_thread_path(
    core: Core, buyer: TestBuyer, hops: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything but a clean answer on the loop is redone where failures are handled."""
    from fourmica_x402.records import Records

    runs: list[str] = []

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("records database is gone")

    monkeypatch.setattr(Records, "insert", staticmethod(broken))
    with _seller(core, runs) as client:
        resp = _pay(client, core, buyer)
    assert resp.status_code == 503 and resp.json()["error"] == "records_unavailable"
    assert runs == [] and hops == ["_settle_and_record"]
    assert core.position(buyer.address, network=NETWORK).locked == 0


def gate_record(core: Core) -> list[Any]:
    from fourmica_x402.records import Records

    return Records(core.store).query()


def test_a_process_exits_cleanly_after_paid_requests() -> None:
    """A process exiting right after paid requests used to abort ("terminate called") while
    a background thread was still signing in C++."""
    import subprocess
    import sys

    script = (
        "from fourmica_x402 import bench; bench.bench_paid_asgi(True); bench.bench_paid_wsgi(True)"
    )
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "terminate called" not in done.stderr


def test_certificates_are_made_only_when_asked(core: Core, buyer: TestBuyer) -> None:
    """BLS signing (~0.5 ms) is never on a paid request's path: no certifier thread competes
    with serving; a handler that asks for the certificate gets it, and the record keeps it."""
    import base64
    import json

    asked: list[Any] = []

    async def premium(request: Request) -> JSONResponse:
        if request.query_params.get("certificate"):
            asked.append(request.state.payment.certificate)
        return JSONResponse({"ok": True})

    config = PaymentConfig(pay_to=SELLER, routes={"GET /premium": "$0.01"}, core=core)
    app = Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    with TestClient(app) as client:
        assert _pay(client, core, buyer).status_code == 200
        assert not [t for t in threading.enumerate() if "certifier" in t.name]
        [record] = gate_record(core)
        assert record.certificate is None  # nobody asked
        resp = client.get("/premium?certificate=1", headers=_header(client, core, buyer))
    assert resp.status_code == 200 and asked and asked[0] is not None
    assert len(bytes.fromhex(asked[0]["signature"][2:])) == 96  # BLS12-381 G2
    result = json.loads(base64.b64decode(resp.headers["payment-response"]))
    assert result["extra"]["certificate"] == asked[0]  # made already: the buyer gets it too
    latest = max(gate_record(core), key=lambda r: r.record_id)
    assert latest.certificate == asked[0]
    assert core.certify(latest.guarantee_id).to_json() == asked[0]  # stored by the Core once
