"""Fault injection around the paid handler: a store error after the Core accepted a payment.

The Core accepted the guarantee, then something the gate does before the handler (open a
staged job, an ``after_settle`` hook) or after it (end the job) fails once. The buyer is
never charged for a handler that did not run, and a served one is still paid for.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
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

from fourmica_x402 import PaymentConfig, Stage
from fourmica_x402.core import Core
from fourmica_x402.core.store import StoreUnavailable
from fourmica_x402.core.store.sqlite import SQLiteStore
from fourmica_x402.jobs import Jobs
from fourmica_x402.records import Records
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    core = Core(str(tmp_path / "core.db"))
    yield core
    core.close()


def fail_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """``owner.name`` raises StoreUnavailable on its first call only; returns the call count."""
    calls, real = [0], getattr(owner, name)

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise StoreUnavailable("database is locked (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return calls


def app_of(core: Core, **options: Any) -> Starlette:
    async def work(request: Request) -> JSONResponse:
        return JSONResponse({"work": "done"})

    config = PaymentConfig(pay_to=SELLER, network=NETWORK, core=core, **options)
    return Starlette(
        routes=[Route("/work", work, methods=["POST"])],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def pay(client: TestClient, core: Core) -> tuple[TestBuyer, Any]:
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    return buyer, client.post("/work", headers=paid_headers(client, buyer, client.post("/work")))


def until(done: Callable[[], bool]) -> None:
    for _ in range(300):  # bounded: 15 s for the reconciler's retry
        if done():
            return
        time.sleep(0.05)


def test_a_refund_that_fails_when_the_handler_will_not_run_is_retried(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The after_settle hook fails, so the handler will not run: its void met a locked
    database once and was only logged; the buyer stayed charged (a G-v1 payable, a G-v2
    locked until its deadline). It is filed and retried until it goes through."""

    def hook(request: Any, result: Any) -> None:
        raise RuntimeError("the seller's hook broke")

    voids = fail_once(monkeypatch, core, "void")
    with TestClient(app_of(core, routes={"POST /work": "$0.01"}, after_settle=hook)) as client:
        buyer, resp = pay(client, core)
        assert (resp.status_code, resp.json()["error"]) == (503, "seller_hook_failed")
        until(lambda: core.position(buyer.address, network=NETWORK).locked == 0)
    assert voids[0] == 2  # failed once, then retried
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    assert core.audit() == []


def test_a_job_that_cannot_open_after_the_payment_gives_it_back(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the staged job failed once after the Core accepted the stage's payment: the
    buyer got a 503 and no work, and its guarantee stayed payable (charged)."""
    fail_once(monkeypatch, Jobs, "open")
    routes = {"POST /work": {"price": "$0.01", "stage": Stage("report", 1, of=2)}}
    with TestClient(app_of(core, routes=routes)) as client:
        buyer, resp = pay(client, core)
        assert resp.status_code == 503
        until(lambda: core.position(buyer.address, network=NETWORK).locked == 0)
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    assert core.audit() == []


def test_a_served_stage_is_paid_for_even_when_its_job_cannot_be_moved_on(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 1 was served (200), then marking its job failed once: the delivery score was
    never posted, and at the validation deadline the work had been served free."""
    fail_once(monkeypatch, Jobs, "delivered")
    routes = {"POST /work": {"price": "$0.01", "stage": Stage("report", 1, of=2)}}
    with TestClient(app_of(core, routes=routes)) as client:
        buyer, resp = pay(client, core)
        assert resp.status_code == 200 and resp.json() == {"work": "done"}
        until(lambda: [g.state for g in core.guarantees(address=buyer.address)] == ["payable"])
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["payable"]
    assert core.position(buyer.address, network=NETWORK).locked == 10_000
    assert core.audit() == []


def test_a_lost_stage_is_voided_once_even_when_its_record_cannot_be_written(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage lost to a concurrent request is voided; when writing its record then failed,
    the payment was voided a second time (a spurious failed void and a follow-up filed)."""
    voids: list[str] = []
    real_void = Core.void

    def void(self: Core, gid: str, **kwargs: Any) -> Any:
        voids.append(gid)
        return real_void(self, gid, **kwargs)

    monkeypatch.setattr(Core, "void", void)
    monkeypatch.setattr(Jobs, "refusal", lambda self, *args: None)  # the job is ready for it
    monkeypatch.setattr(Jobs, "claim", lambda self, *args: "stage_in_progress")  # lost
    fail_once(monkeypatch, Records, "finish")
    routes = {"POST /work": {"price": "$0.01", "stage": Stage("report", 2, of=2)}}
    with TestClient(app_of(core, routes=routes)) as client:
        client.headers["job-id"] = "job_" + "0" * 32
        buyer, resp = pay(client, core)
        assert resp.status_code == 503
    assert len(voids) == 1
    assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
    with core.store.transaction(write=False) as tx:
        assert tx.all("SELECT kind FROM fx_followups") == []


def test_a_payment_given_back_is_recorded_with_the_status_the_buyer_got(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of a payment given back before its handler ran said 503 whatever the buyer
    was answered (here a 409: the stage was taken by a concurrent request)."""
    monkeypatch.setattr(Jobs, "refusal", lambda self, *args: None)  # the job is ready for it
    monkeypatch.setattr(Jobs, "claim", lambda self, *args: "stage_in_progress")  # lost
    routes = {"POST /work": {"price": "$0.01", "stage": Stage("report", 2, of=2)}}
    with TestClient(app_of(core, routes=routes)) as client:
        client.headers["job-id"] = "job_" + "0" * 32
        buyer, resp = pay(client, core)
        assert (resp.status_code, resp.json()["error"]) == (409, "stage_in_progress")
    [record] = Records(core.store).query(payer=buyer.address)
    assert (record.status, record.outcome, record.http_status) == ("failed", "refunded", 409)


def test_a_refund_the_locked_database_cannot_take_nor_file_is_queued_until_it_can(
    tmp_path: Path,
) -> None:
    """Another process held the write lock past the busy timeout while a paid handler
    answered 500: the refund failed, filing it for a retry failed the same way, and the
    buyer stayed charged for the 500 (the result header said the payment settled, the record
    said kept). The follow-up is now kept in memory and written once the lock is free."""
    path = tmp_path / "core.db"
    core = Core(SQLiteStore(str(path), busy_timeout_ms=200))
    holder: list[sqlite3.Connection] = []

    async def broken(request: Request) -> JSONResponse:
        side = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        side.execute("BEGIN IMMEDIATE")  # a backup, a cycle close, an operator's sqlite3
        holder.append(side)
        return JSONResponse({"error": "broken"}, status_code=500)

    config = PaymentConfig(pay_to=SELLER, network=NETWORK, core=core, routes={"POST /w": "$0.01"})
    app = Starlette(
        routes=[Route("/w", broken, methods=["POST"])],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    try:
        with TestClient(app) as client:
            buyer = TestBuyer.new()
            core.deposit(buyer.address, 1_000_000, network=NETWORK)
            resp = client.post("/w", headers=paid_headers(client, buyer, client.post("/w")))
            holder[0].execute("ROLLBACK")  # the lock is free again
            holder[0].close()
            assert resp.status_code == 500
            result = json.loads(base64.b64decode(resp.headers["payment-response"]))
            assert (result["success"], result.get("errorReason")) == (False, "refunded")
            until(lambda: core.position(buyer.address, network=NETWORK).locked == 0)
            assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
            until(lambda: Records(core.store).query(payer=buyer.address)[0].outcome == "refunded")
            [record] = Records(core.store).query(payer=buyer.address)
            assert (record.outcome, record.http_status) == ("refunded", 500)
        assert core.audit() == []
    finally:
        for side in holder:
            side.close()
        core.close()


def test_a_payment_given_back_while_the_database_is_locked_is_voided_once_it_is_free(
    tmp_path: Path,
) -> None:
    """The after_settle hook failed while another process held the write lock past the busy
    timeout: the handler did not run (503) but the void, and filing it for a retry, met the
    lock; the buyer stayed charged for the 503 until an operator stepped in."""
    path = tmp_path / "core.db"
    core = Core(SQLiteStore(str(path), busy_timeout_ms=200))
    holder: list[sqlite3.Connection] = []

    def hook(request: Any, result: Any) -> None:
        side = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        side.execute("BEGIN IMMEDIATE")
        holder.append(side)
        raise RuntimeError("the seller's hook broke")

    try:
        with TestClient(app_of(core, routes={"POST /work": "$0.01"}, after_settle=hook)) as client:
            buyer = TestBuyer.new()
            core.deposit(buyer.address, 1_000_000, network=NETWORK)
            resp = client.post("/work", headers=paid_headers(client, buyer, client.post("/work")))
            holder[0].execute("ROLLBACK")  # the lock is free again
            # its record could not be written either: the store's own code
            assert (resp.status_code, resp.json()["error"]) == (503, "core_unavailable")
            until(lambda: core.position(buyer.address, network=NETWORK).locked == 0)
        assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
        assert core.audit() == []
    finally:
        for side in holder:
            side.close()
        core.close()


def test_an_app_first_called_while_the_database_is_locked_serves_once_it_is_free(
    tmp_path: Path,
) -> None:
    """An ASGI app without a lifespan (a mounted sub-app, ``--lifespan off``) builds its gate
    at its first request. Another process held the write lock past the busy timeout then:
    the failure was kept as a bad configuration, and every request after the lock was gone
    was still answered 500 ``configuration_error`` until a restart."""
    path = tmp_path / "core.db"
    core = Core(SQLiteStore(str(path), busy_timeout_ms=2000))
    side = sqlite3.connect(path, isolation_level=None)
    try:
        client = TestClient(app_of(core, routes={"POST /work": "$0.01"}))  # no lifespan
        side.execute("BEGIN IMMEDIATE")
        resp = client.post("/work")
        assert (resp.status_code, resp.json()["error"]) == (503, "core_unavailable")
        # The gate is built again in a thread of its own, not on the event loop: a request
        # meanwhile is answered at once, while that build still waits out the busy timeout.
        assert client.post("/work").status_code == 503
        assert any(t.name == "fourmica-x402-start" for t in threading.enumerate())
        side.execute("ROLLBACK")
        until(lambda: client.post("/work").status_code == 402)
        buyer, resp = pay(client, core)
        assert resp.status_code == 200 and resp.json() == {"work": "done"}
        middleware = client.app.middleware_stack.app  # type: ignore[attr-defined]
        gate = middleware.gate
        assert client.post("/work").status_code == 402 and middleware.gate is gate  # built once
        until(lambda: [g.state for g in core.guarantees(address=buyer.address)] == ["payable"])
    finally:
        side.close()
        core.close()


def test_a_shutdown_while_the_database_is_locked_completes_and_says_what_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifespan shutdown commits the queued completions; another process held the write
    lock past the busy timeout then: the StoreUnavailable went up through the lifespan, the
    server reported the shutdown failed, with a traceback. It is logged, and the shutdown
    completes (the exit tries the queue once more, docs/operations.md)."""
    path = tmp_path / "core.db"
    core = Core(SQLiteStore(str(path), busy_timeout_ms=200))
    side = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        with TestClient(app_of(core, routes={"POST /work": "$0.01"}, completion_window=60)) as c:
            buyer, resp = pay(c, core)
            assert resp.status_code == 200
            side.execute("BEGIN IMMEDIATE")  # its completion is still queued
        side.execute("ROLLBACK")
        assert "committing the queued completions at shutdown failed" in caplog.text
        c.app.middleware_stack.app.gate.flush()  # type: ignore[attr-defined]
        assert [g.state for g in core.guarantees(address=buyer.address)] == ["payable"]
    finally:
        side.close()
        core.close()


def test_a_gate_built_again_is_built_once_while_its_checks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build in the background succeeded and its start-up checks were running when more
    requests came: each one started another build (a second gate on the same database, its
    checks run again), the first gate and its router were replaced under the requests."""
    path = tmp_path / "core.db"
    core = Core(SQLiteStore(str(path), busy_timeout_ms=100))
    side = sqlite3.connect(path, isolation_level=None)
    checks, release, real = [], threading.Event(), PaymentMiddleware._check

    def slow_check(self: PaymentMiddleware) -> None:
        checks.append(self.gate)
        release.wait(10)
        real(self)

    monkeypatch.setattr(PaymentMiddleware, "_check", slow_check)
    monkeypatch.setattr("fourmica_x402.gate.startup.Startup.RETRY", 0.05)
    try:
        client = TestClient(app_of(core, routes={"POST /work": "$0.01"}))  # no lifespan
        side.execute("BEGIN IMMEDIATE")
        assert client.post("/work").status_code == 503
        time.sleep(0.4)  # a build in the background failed: the next one is due
        side.execute("ROLLBACK")
        until(lambda: client.post("/work").status_code == 503 and len(checks) > 0)
        for _ in range(5):  # its checks run: requests meanwhile are 503, and build nothing
            time.sleep(0.1)
            assert client.post("/work").status_code == 503
        release.set()
        until(lambda: client.post("/work").status_code == 402)
        time.sleep(0.3)
        middleware = client.app.middleware_stack.app  # type: ignore[attr-defined]
        assert len(checks) == 1 and middleware.gate is checks[0]
        assert client.post("/work").status_code == 402
    finally:
        release.set()
        side.close()
        core.close()


@pytest.mark.parametrize("place", ["a directory", "a file's child"])
def test_a_database_path_that_cannot_be_a_file_is_a_configuration_error(
    tmp_path: Path, place: str
) -> None:
    """A SQLite path naming a directory (a volume mounted where the file should be) could
    never be opened: an app without a lifespan answered 503 ``core_unavailable`` and built its
    gate again every second, forever, as for a database that is only locked for now."""
    (tmp_path / "db").mkdir()
    (tmp_path / "file").write_text("")
    path = tmp_path / "db" if place == "a directory" else tmp_path / "file" / "core.db"
    config = PaymentConfig(
        pay_to=SELLER, network=NETWORK, core=f"sqlite:///{path}", routes={"GET /x": "$0.01"}
    )
    app = Starlette(
        routes=[Route("/x", lambda request: JSONResponse({}))],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    client = TestClient(app)  # no lifespan
    for _ in range(2):
        resp = client.get("/x")
        assert (resp.status_code, resp.json()["error"]) == (500, "configuration_error")
    assert not any(t.name == "fourmica-x402-start" for t in threading.enumerate())


def test_a_request_refused_as_the_gate_is_built_again_is_not_told_the_configuration_is_bad(
    tmp_path: Path,
) -> None:
    """A request read the start-up error just before the build in the background published
    the gate, and its refusal just after: it was answered 500 ``configuration_error`` with no
    message, for a configuration that is fine (and a gate that now serves)."""
    from fourmica_x402.gate.startup import Startup

    path = tmp_path / "core.db"
    side = sqlite3.connect(path, isolation_level=None)
    side.execute("CREATE TABLE x (k)")
    side.execute("BEGIN IMMEDIATE")
    startup = Startup(lambda: Core(SQLiteStore(str(path), busy_timeout_ms=50)))
    try:
        broken = startup.run(lambda: None, wait=False)  # the request reads the error…
        assert broken is not None
        side.execute("ROLLBACK")
        until(lambda: startup.run(lambda: None, wait=False) is None)  # …the gate is published
        refusal = startup.refusal  # …and the request answers
        assert (refusal.status, json.loads(refusal.body)["error"]) == (503, "core_unavailable")
    finally:
        side.close()
        if startup.built is not None:
            startup.built.close()


@pytest.mark.postgres
@pytest.mark.parametrize("mistake", ["password", "database"])
def test_a_postgres_url_the_server_refuses_for_good_is_a_configuration_error(
    _postgres_admin_url: str, mistake: str
) -> None:
    """A wrong password, or a database that does not exist: an app without a lifespan
    answered 503 ``core_unavailable`` and tried to log in again every second, forever, as
    for a server that is only down for now."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(_postgres_admin_url)
    if mistake == "password":
        params["password"] = "not-the-password"
    else:
        params["dbname"] = "fx_no_such_database"
    url = "postgresql://?" + "&".join(f"{k}={v}" for k, v in params.items())
    assert make_conninfo(url)  # a URL psycopg reads
    config = PaymentConfig(pay_to=SELLER, network=NETWORK, core=url, routes={"GET /x": "$0.01"})
    app = Starlette(
        routes=[Route("/x", lambda request: JSONResponse({}))],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )
    client = TestClient(app)  # no lifespan
    for _ in range(2):
        resp = client.get("/x")
        assert (resp.status_code, resp.json()["error"]) == (500, "configuration_error")
