"""Fault injection: the seller fails closed and recovers.

- the facilitator process is SIGKILLed mid-run and restarted on the same database and port;
- a facilitator slower than the seller's timeout;
- a Core database that is read-only or full.

Everything runs on loopback; every loop is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.core.ledger import SANDBOX_REGISTRY
from fourmica_x402.errors import CoreError
from fourmica_x402.facilitator import HttpFacilitator, LocalFacilitator
from fourmica_x402.guarantee import ValidationPolicy
from fourmica_x402.records import Records
from fourmica_x402.server import payment_args as _payment_args
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import PaymentPayload, PaymentRequirements, decode_payment_required

pytestmark = pytest.mark.slow

SELLER = TestBuyer.from_key(
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
).address  # test key
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PRICE = 10_000  # "$0.01"


# -- helpers ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def bump(self) -> None:
        with self._lock:
            self.n += 1


def seller_app(config: PaymentConfig, runs: Counter) -> Starlette:
    async def premium(request: Request) -> JSONResponse:
        runs.bump()
        return JSONResponse({"payer": request.state.payment.payer})

    return Starlette(
        routes=[Route("/premium", premium)],
        middleware=[Middleware(PaymentMiddleware, config=config)],
    )


def remote_config(
    facilitator: str | HttpFacilitator,
    records: Path,
    *,
    timeout: float = 10.0,
    retries: int = 0,
    **options: Any,
) -> PaymentConfig:
    """``GET /premium`` sold on a remote facilitator (a URL, or one built already)."""
    if isinstance(facilitator, str):
        facilitator = HttpFacilitator(facilitator, timeout=timeout, retries=retries)
    return PaymentConfig(
        pay_to=SELLER,
        routes={"GET /premium": "$0.01"},
        facilitator=facilitator,
        records=str(records),
        tab_endpoint="http://testserver/x402/tab",
        **options,
    )


def offer(seller: TestClient) -> PaymentRequirements:
    challenge = seller.get("/premium")
    assert challenge.status_code == 402
    return decode_payment_required(challenge.headers["payment-required"]).accepts[0]


def fail_closed(response: httpx.Response, *reasons: str) -> dict[str, Any]:
    """A 503 with a clear JSON error (never a traceback 500)."""
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] in reasons, body
    assert body["message"] and "Traceback" not in response.text
    assert "payment-response" not in response.headers
    return body


def claims_of(value: str) -> tuple[int, int]:
    """(tab id, req id) a payment header commits to."""
    payload = json.loads(base64.b64decode(value))["payload"]
    claims = payload["claims"]
    return int(str(claims["tab_id"]), 0), int(str(claims["req_id"]), 0)


# -- 1. the facilitator process is killed mid-run and comes back --------------------------------


class Service:
    """``fourmica-x402 serve`` as a child process (so it can be SIGKILLed)."""

    def __init__(self, db: str, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        began = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "fourmica_x402", "serve", "--sandbox"),
                    *("--db", self.db, "--port", str(self.port)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.05)
        raise AssertionError("serve did not come up: " + self.log.read_text()[-2000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(f"sqlite:///{tmp_path / 'core.db'}", _free_port(), tmp_path / "serve.log")
    try:
        yield svc
    finally:
        svc.stop()


def test_facilitator_killed_mid_run_fails_closed_and_recovers(
    service: Service, tmp_path: Path
) -> None:
    service.start()
    buyer = TestBuyer.new()
    deposit = httpx.post(
        service.url + "/sandbox/deposit", json={"address": buyer.address, "amount": "$5"}
    )
    assert deposit.status_code == 200, deposit.text
    runs = Counter()
    records = tmp_path / "records.db"
    app = seller_app(remote_config(service.url, records, timeout=2), runs)
    total, kill_after = 40, 8
    with TestClient(app) as seller:
        req = offer(seller)
        headers: list[tuple[str, str]] = []
        for _ in range(total):  # pre-signed against tabs the service hands out
            tab = httpx.post(
                service.url + "/tabs",
                json={
                    "userAddress": buyer.address,
                    "recipientAddress": SELLER,
                    "network": NETWORK,
                    "erc20Token": USDC,
                    "guaranteeVersion": 1,
                },
            ).json()
            headers.append(payment_header(buyer, req, tab))

        # A killer thread lands the SIGKILL while the loop is running (likely mid-request).
        killed = threading.Event()
        kill_at: list[float] = []

        def killer() -> None:
            deadline = time.monotonic() + 30
            while runs.n < kill_after and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(random.uniform(0, 0.03))  # somewhere inside the next request(s)
            kill_at.append(time.monotonic())
            service.kill()
            killed.set()

        threading.Thread(target=killer, daemon=True).start()
        # status, header, handler runs, began, ended
        results: list[tuple[int, str, int, float, float]] = []
        restarted_at: int | None = None
        down_in_a_row = 0
        for name, value in headers:
            before_runs = runs.n
            began = time.monotonic()
            response = seller.get("/premium", headers={name: value})
            results.append(
                (response.status_code, value, runs.n - before_runs, began, time.monotonic())
            )
            if response.status_code == 200:
                assert response.json() == {"payer": buyer.address}
                assert runs.n == before_runs + 1
                down_in_a_row = 0
            else:
                fail_closed(response, "facilitator_unavailable")
                assert runs.n == before_runs  # the handler never ran unpaid
                down_in_a_row += 1
            if restarted_at is None and killed.is_set() and down_in_a_row >= 5:
                restart_secs = service.start()  # same database, same port
                restarted_at = len(results)
        assert restarted_at is not None, [r[0] for r in results]

    statuses = [r[0] for r in results]
    shown = "".join("." if s == 200 else "X" for s in statuses)
    (killed_at,) = kill_at
    before_kill = [r for r in results[:restarted_at] if r[4] < killed_at]
    after_kill = [r for r in results[:restarted_at] if r[3] > killed_at]
    in_flight = [r for r in results[:restarted_at] if r[3] <= killed_at <= r[4]]
    after_restart = results[restarted_at:]
    assert len(in_flight) <= 1 and before_kill, shown
    assert all(r[0] == 200 for r in before_kill), shown
    assert after_kill and all(r[0] == 503 for r in after_kill), shown
    slowest_503 = max(r[4] - r[3] for r in after_kill)
    assert slowest_503 < 1.0, slowest_503  # connection refused: at once, no hang
    assert len(after_restart) >= 10 and all(r[0] == 200 for r in after_restart), shown
    assert runs.n == statuses.count(200)

    # Every 200 has a delivered record; no 503 has one.
    store = Records(str(records))
    delivered = {r.header_hash: r for r in store.query(status="delivered", limit=1000)}
    for status, value, *_ in results:
        digest = hashlib.sha256(value.encode()).hexdigest()
        assert (digest in delivered) == (status == 200), (status, digest)
    assert len(store.query(limit=1000)) == statuses.count(200)

    # The Core: consistent, and no guarantee accepted for a 503 — except a kill that landed
    # between the Core's accept and its answer (see test_settle_timeout_after_accept_...).
    core = Core(service.db)
    try:
        assert core.audit() == []
        accepted = {(g.tab_id, g.req_id): g for g in core.guarantees(address=buyer.address)}
        paid = [claims_of(v) for s, v, *_ in results if s == 200]
        refused = [claims_of(v) for s, v, *_ in results if s == 503]
        assert all(key in accepted for key in paid)
        orphans = [accepted[key] for key in refused if key in accepted]
        # Only the request in flight at the kill may have been accepted without an answer.
        assert len(orphans) <= len(in_flight), (orphans, shown)
        if orphans:
            assert claims_of(in_flight[0][1]) == (orphans[0].tab_id, orphans[0].req_id)
        # The seller files the orphan's settle as in doubt and voids it once the facilitator is
        # back: it is still locked until the reconciler's void lands, then voided.
        assert all(g.state in ("payable", "pending_validation", "voided") for g in orphans), orphans
        held = [g for g in orphans if g.state != "voided"]
        locked = core.position(buyer.address, network=NETWORK).locked
        assert locked == PRICE * (len(paid) + len(held))
        print(
            f"\nkill after >={kill_after} paid: {shown} in-flight={[r[0] for r in in_flight]}"
            f" restart={restart_secs:.2f}s slowest503={slowest_503:.3f}s"
            f" orphans={[(hex(g.tab_id), g.req_id, g.state) for g in orphans]}"
        )
    finally:
        core.close()


# -- 2. a facilitator slower than the seller's timeout ------------------------------------------


class _Slow(http.server.BaseHTTPRequestHandler):
    """Answers /supported at once; sleeps before answering /settle (or ``on_settle``)."""

    delay: ClassVar[float] = 5.0
    release: ClassVar[threading.Event] = threading.Event()
    on_settle: ClassVar[Callable[[dict[str, Any]], Any] | None] = None
    on_void: ClassVar[Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]] | None] = None
    settles: ClassVar[list[float]] = []

    def _send(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        with contextlib.suppress(OSError):  # the seller may have hung up on us
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/supported":
            kind = {"scheme": "4mica-credit", "network": NETWORK, "x402Version": 2}
            self._send(200, {"kinds": [kind], "extensions": [], "signers": {}})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path.startswith("/guarantees/") and self.path.endswith(("/void", "/validation")):
            hook = type(self).on_void  # one hook for both: it sees the path's last part
            if hook is None:
                self._send(404, {"error": "not found"})
            else:
                gid, action = self.path.split("/")[2:4]
                self._send(*hook(gid, {**body, "_action": action}))  # type: ignore[misc]
            return
        if self.path != "/settle":
            self._send(404, {"error": "not found"})
            return
        type(self).settles.append(time.monotonic())
        answer: Any = {"success": False, "error": "too_slow", "transaction": ""}
        if type(self).on_settle is not None:
            answer = type(self).on_settle(body)  # type: ignore[misc]
        type(self).release.wait(type(self).delay)
        if isinstance(answer, tuple):  # (status, raw bytes): an answer that is not JSON
            self._send_raw(*answer)
        else:
            self._send(200, answer)

    def _send_raw(self, status: int, raw: bytes) -> None:
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("content-length", str(len(raw)))
            self.send_header("location", "/elsewhere")
            self.end_headers()
            self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def slow_facilitator(
    delay: float,
    on_settle: Callable[[dict[str, Any]], Any] | None = None,
    on_void: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]] | None = None,
) -> Iterator[tuple[str, type[_Slow]]]:
    handler = type(
        "Slow",
        (_Slow,),
        {
            "delay": delay,
            "release": threading.Event(),
            "on_settle": on_settle,
            "on_void": on_void,
            "settles": [],
        },
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_slow_facilitator_times_out_and_fails_closed(tmp_path: Path) -> None:
    runs = Counter()
    with slow_facilitator(5.0) as (url, handler):
        app = seller_app(remote_config(url, tmp_path / "records.db", timeout=0.5), runs)
        with TestClient(app) as seller:
            req = offer(seller)
            buyer = TestBuyer.new()
            for i in range(3):
                name, value = payment_header(buyer, req, {"tabId": "0x1", "nextReqId": hex(i)})
                began = time.monotonic()
                response = seller.get("/premium", headers={name: value})
                elapsed = time.monotonic() - began
                fail_closed(response, "facilitator_unavailable")
                assert elapsed < 1.5, elapsed
                print(f"\nslow facilitator: 503 after {elapsed:.3f}s")
                assert response.headers.get("retry-after") == "5"
            assert len(handler.settles) == 3  # settle is sent once (never retried)
    assert runs.n == 0
    assert Records(str(tmp_path / "records.db")).query() == []


def _funded_core(tmp_path: Path) -> tuple[Core, TestBuyer]:
    core = Core(str(tmp_path / "core.db"))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    return core, buyer


def _settling_with(core: Core) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A fake facilitator's /settle answer, computed by a real embedded Core."""
    local = LocalFacilitator(core)

    def accept(body: dict[str, Any]) -> dict[str, Any]:
        payload, requirements = _payment_args(body)
        result = local.settle(payload, requirements)
        return {
            "success": result.success,
            "error": result.error_reason,
            "network": result.network,
            "transaction": result.guarantee_id or "",
            "payer": result.payer,
        }

    return accept


def _accepted_but_refused(seller: TestClient, core: Core, buyer: TestBuyer) -> tuple[str, str, Any]:
    """Pay once: the facilitator accepts, the seller answers 503 (no answer it can use)."""
    req = offer(seller)
    tab = core.open_tab(buyer.address, SELLER, network=NETWORK, asset=USDC)
    name, value = payment_header(buyer, req, tab.to_json())
    fail_closed(seller.get("/premium", headers={name: value}), "facilitator_unavailable")
    [accepted] = core.guarantees(address=buyer.address)  # it did land
    return name, value, accepted


def _voided_in_time(records: Records, gid: str) -> None:
    for _ in range(600):  # bounded (30 s): the reconciler works in the background
        if (records.followup(gid) or ("",))[0] == "voided":
            break
        time.sleep(0.05)
    assert records.followup(gid)[:1] == ("voided",)  # type: ignore[index]


def test_settle_timeout_after_accept_is_voided_by_the_seller(tmp_path: Path) -> None:
    """The facilitator accepts the guarantee, then answers after the seller gave up.

    The seller answers 503 (nothing served), files the guarantee as in doubt, and its
    reconciler voids it on the facilitator: the buyer's collateral is released, and the
    same payment sent again is refused rather than settled a second time.
    """
    core, buyer = _funded_core(tmp_path)
    accept = _settling_with(core)

    def void(gid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            return 200, {"state": core.void(gid, by=body["by"]).state}
        except CoreError as exc:
            return exc.status, {"error": exc.message, "reason": exc.reason}

    runs = Counter()
    try:
        with slow_facilitator(2.0, accept, void) as (url, _):
            app = seller_app(remote_config(url, tmp_path / "records.db", timeout=0.5), runs)
            with TestClient(app) as seller:
                name, value, accepted = _accepted_but_refused(seller, core, buyer)
                _voided_in_time(Records(str(tmp_path / "records.db")), accepted.guarantee_id)
                again = seller.get("/premium", headers={name: value})
                assert again.status_code == 402
                assert decode_payment_required(again.headers["payment-required"]).error == (
                    "replayed_request_id"
                )
        assert runs.n == 0
        assert core.audit() == []
        assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
        assert core.position(buyer.address, network=NETWORK).locked == 0
    finally:
        core.close()


def test_a_refund_the_facilitator_could_not_take_is_retried(tmp_path: Path) -> None:
    """The handler fails, the refund (void) meets a facilitator error: it is filed and
    retried until it goes through, and the record ends ``refunded``."""
    core, buyer = _funded_core(tmp_path)
    accept = _settling_with(core)
    void_calls: list[str] = []

    def void(gid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        void_calls.append(gid)
        if len(void_calls) == 1:
            return 503, {"error": "busy"}
        return 200, {"state": core.void(gid, by=body["by"]).state}

    async def broken(request: Request) -> JSONResponse:
        return JSONResponse({"error": "the model crashed"}, status_code=500)

    try:
        with slow_facilitator(0.0, accept, void) as (url, _):
            config = remote_config(url, tmp_path / "records.db", timeout=5)
            app = Starlette(
                routes=[Route("/premium", broken)],
                middleware=[Middleware(PaymentMiddleware, config=config)],
            )
            with TestClient(app) as seller:
                req = offer(seller)
                tab = core.open_tab(buyer.address, SELLER, network=NETWORK, asset=USDC)
                name, value = payment_header(buyer, req, tab.to_json())
                assert seller.get("/premium", headers={name: value}).status_code == 500
                records = Records(str(tmp_path / "records.db"))
                for _ in range(600):  # bounded (30 s, as for the score below): the reconciler
                    if records.query()[0].outcome == "refunded":  # retries in the background
                        break
                    time.sleep(0.05)
                [record] = records.query()
                followup = records.followup(record.guarantee_id)
                assert record.outcome == "refunded", (record.outcome, void_calls, followup)
                assert len(void_calls) == 2, void_calls
                assert records.followup(record.guarantee_id)[:1] == ("voided",)  # type: ignore[index]
        assert core.position(buyer.address, network=NETWORK).locked == 0
        assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
        assert core.audit() == []
    finally:
        core.close()


@pytest.mark.parametrize(
    ("kind", "status", "final"),
    [("refund", "failed", "refunded"), ("score", "delivered", "delivered")],
)
@pytest.mark.parametrize("completion_first", [True, False], ids=["completion-first", "retry-first"])
def test_a_follow_up_and_the_record_completion_give_one_outcome_in_either_order(
    tmp_path: Path, kind: str, status: str, final: str, completion_first: bool
) -> None:
    """The reconciler may finish a filed refund or score before the record's queued
    completion is written (it did on a loaded machine): the outcome must not go back to
    pending then, nor stay pending when the completion comes first."""
    records = Records(str(tmp_path / "records.db"))
    gid = "0x" + "ab" * 32
    record_id = _settled(records, gid)
    records.add_followup(gid, SELLER, kind, score=None if kind == "refund" else 100)
    pending = f"{kind}_pending"

    def complete() -> None:
        records.finish(
            record_id, status=status, http_status=200, response_hash=None, outcome=pending
        )

    def retry() -> None:
        records.update_followup(gid, status="voided" if kind == "refund" else "scored")

    for step in (complete, retry) if completion_first else (retry, complete):
        step()
    [record] = records.query()
    assert record.outcome == final
    records.store.close()


def test_an_action_filed_after_its_guarantees_follow_up_closed_is_kept(tmp_path: Path) -> None:
    """A guarantee's follow-up may be closed already (an in-doubt void of a replayed header,
    superseded once the payment's own run was served): a refund that then failed was not
    filed, while its record said refund_pending. An open follow-up stays as it is."""
    records = Records(str(tmp_path / "records.db"))
    gid = "0x" + "cd" * 32
    records.add_followup(gid, SELLER, "in_doubt")
    records.update_followup(gid, status="superseded")
    records.add_followup(gid, SELLER, "refund")
    assert records.followup(gid) == ("open", 0, None)
    records.add_followup(gid, SELLER, "score", score=100)  # one open at a time: kept
    [due] = records.due_followups(time.time() + 1)
    assert (due.guarantee_id, due.kind, due.attempts, due.score) == (gid, "refund", 0, None)
    records.store.close()


@pytest.mark.parametrize("kind", ["score", "refund"])
def test_a_delivery_known_replaces_the_unknown_follow_up_of_a_starting_worker(
    tmp_path: Path, kind: str
) -> None:
    """A worker starting on the database labels another's in-flight G-v2 record "delivery
    unknown" (an ``unknown`` follow-up: cancelled at its deadline). The worker serving it
    knows how it ended: a score or refund it could not post is filed in its place, not
    dropped (the unknown one would cancel a delivered payment: the seller never paid)."""
    records = Records(str(tmp_path / "records.db"))
    gid = "0x" + "ef" * 32
    with records.store.transaction() as tx:
        tx.execute(
            "INSERT INTO fx_followups (guarantee_id, pay_to, created_at, next_at, status, kind) "
            "VALUES (?, ?, ?, ?, 'open', 'unknown')",
            (gid, SELLER, time.time(), time.time() + 3600),
        )
    records.add_followup(gid, SELLER, kind, score=100 if kind == "score" else None)
    [due] = records.due_followups(time.time() + 1)
    assert (due.guarantee_id, due.kind) == (gid, kind)
    assert due.score == (100 if kind == "score" else None)
    records.store.close()


#: The seller validates its own deliveries (G-v2): score 100 when it served.
_DELIVERY = ValidationPolicy(
    registry=SANDBOX_REGISTRY,
    validator=SELLER,
    validator_agent_id=0,
    min_score=100,
    job_hash=b"\x01" * 32,
    chain_id=84532,
    tag="delivery",
)


@pytest.mark.parametrize("lost", [False, True], ids=["refused", "answer-lost"])
def test_a_delivery_score_the_facilitator_could_not_take_is_retried(
    tmp_path: Path, lost: bool
) -> None:
    """Delivered, but the score post met a facilitator error: it is filed and retried, so the
    seller is paid (the guarantee would otherwise be cancelled at the validation timeout).
    When the first post was applied and only its answer lost, the retry's refusal names the
    guarantee payable: that is the score done (it was given up, logged as an error, and the
    record kept saying score_pending)."""
    core, buyer = _funded_core(tmp_path)
    accept = _settling_with(core)
    calls: list[str] = []

    def follow(gid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append(body["_action"])
        if len(calls) == 1 and not lost:
            return 503, {"error": "busy"}
        score = body["score"]
        try:
            state = core.post_validation(
                gid, validator=body["validator"], score=score, tag=body["tag"]
            )
        except CoreError as exc:
            return exc.status, exc.to_dict()
        return (503, {"error": "busy"}) if len(calls) == 1 else (200, {"state": state.state})

    runs = Counter()
    try:
        with slow_facilitator(0.0, accept, follow) as (url, _):
            config = remote_config(url, tmp_path / "records.db", timeout=5)
            config.validation_policy = _DELIVERY
            with TestClient(seller_app(config, runs)) as seller:
                req = offer(seller)
                assert "validatorAddress" in req.extra
                tab = core.open_tab(
                    buyer.address, SELLER, network=NETWORK, asset=USDC, guarantee_version=2
                )
                name, value = payment_header(buyer, req, tab.to_json())
                assert seller.get("/premium", headers={name: value}).status_code == 200
                records = Records(str(tmp_path / "records.db"))
                for _ in range(600):  # bounded (30 s: a loaded CI machine took over 10 s once)
                    if records.query()[0].outcome == "delivered":
                        break
                    time.sleep(0.05)
                [record] = records.query()
                followup = records.followup(record.guarantee_id)
                assert record.outcome == "delivered", (record.outcome, calls, followup)
                assert calls == ["validation", "validation"]
                assert records.followup(record.guarantee_id)[:1] == ("scored",)  # type: ignore[index]
        assert runs.n == 1
        assert [g.state for g in core.guarantees(address=buyer.address)] == ["payable"]
        assert core.audit() == []
    finally:
        core.close()


def _settled(records: Records, gid: str) -> int:
    """A settle-before record of ``gid``, settled, its completion still to come."""
    return records.begin(
        route="GET /premium",
        method="GET",
        path="/premium",
        header_version=2,
        header_hash=gid[2:].ljust(64, "0"),
        pay_to=SELLER,
        amount=10_000,
        asset=USDC,
        network=NETWORK,
        settle_mode="before",
        settle_result={},
        status="settled",
        guarantee_id=gid,
    )


@pytest.mark.parametrize("completion_first", [True, False], ids=["completion-first", "retry-first"])
def test_a_refund_given_up_leaves_the_record_kept(tmp_path: Path, completion_first: bool) -> None:
    """A refund retried until the guarantee was netted is given up: the buyer paid, and the
    record says ``kept`` (as on the direct path), never ``refund_pending`` for good."""
    records = Records(str(tmp_path / "records.db"))
    gid = "0x" + "cd" * 32
    record_id = _settled(records, gid)
    records.add_followup(gid, SELLER, "refund")

    def complete() -> None:
        records.finish(
            record_id,
            status="failed",
            http_status=500,
            response_hash=None,
            outcome="refund_pending",
        )

    def give_up() -> None:
        records.update_followup(gid, status="abandoned", detail="invalid_state")

    for step in (complete, give_up) if completion_first else (give_up, complete):
        step()
    [record] = records.query()
    assert record.outcome == "kept"
    records.store.close()


class _Unanswered:
    """A remote facilitator (outside the machine) whose void answers are scripted."""

    def __init__(self, answers: list[BaseException | None]) -> None:
        self.answers, self.voids = answers, []

    def void(self, guarantee_id: str, *, by: str) -> None:
        self.voids.append(guarantee_id)
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer


def test_reconcile_retries_until_a_definite_answer(tmp_path: Path) -> None:
    from fourmica_x402.errors import Unavailable
    from fourmica_x402.gate import Gate

    records = Records(str(tmp_path / "records.db"))
    facilitator = _Unanswered(
        [
            CoreError("no such guarantee", reason="unknown_guarantee", status=404),
            Unavailable("down"),
            None,  # voided
            CoreError("no such guarantee", reason="unknown_guarantee", status=404),
            CoreError("already netted", reason="invalid_state", status=409),
        ]
    )
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=facilitator,  # type: ignore[arg-type]
            records=records,
        )
    )
    gate._reconciler.kick = lambda: None  # type: ignore[method-assign]  # driven by hand here
    records.add_followup("0xaa", SELLER, "in_doubt")
    t0 = time.time()
    assert gate.reconcile(t0) == {"open": 1}  # not accepted (yet): try again later
    assert gate.reconcile(t0) == {}  # not due yet
    assert gate.reconcile(t0 + 1) == {"open": 1}  # facilitator down: later again
    assert gate.reconcile(t0 + 10) == {"voided": 1}
    assert records.followup("0xaa") == ("voided", 3, "")
    records.add_followup("0xbb", SELLER, "in_doubt")
    assert gate.reconcile(t0 + 400) == {"never_accepted": 1}  # unknown long after the settle
    records.add_followup("0xcc", SELLER, "in_doubt")
    assert gate.reconcile(time.time()) == {"abandoned": 1}
    assert records.followup("0xcc") == ("abandoned", 1, "invalid_state")
    assert facilitator.voids == ["0xaa", "0xaa", "0xaa", "0xbb", "0xcc"]


def test_the_reconciler_stops_quietly_once_its_database_is_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped app's reconciler logged a traceback every 5 s about the closed database."""
    from fourmica_x402.gate import Gate

    records = Records(str(tmp_path / "records.db"))
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            facilitator=_Unanswered([]),  # type: ignore[arg-type]
            records=records,
        )
    )
    records.add_followup("0xaa", SELLER, "in_doubt")  # work left for it
    records.store.close()
    gate._reconciler.kick()
    thread = gate._reconciler._thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive()
    assert "reconciling payments in doubt failed" not in caplog.text


def _voiding(core: Core) -> Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]:
    def follow(gid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            if body["_action"] == "void":
                return 200, {"state": core.void(gid, by=body["by"]).state}
            score, tag = body["score"], body["tag"]
            state = core.post_validation(gid, validator=body["validator"], score=score, tag=tag)
            return 200, {"state": state.state}
        except CoreError as exc:
            return exc.status, {"error": exc.message, "reason": exc.reason}

    return follow


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>accepted</html>"),
        (200, b'{"success": tr'),
        (200, b"[true]"),
        (200, b"{}"),
        (200, b'{"success": "yes"}'),
        (307, b'{"success": true}'),
        (200, b'{"success": true, "pad": "' + b"x" * (2 << 20) + b'"}'),
        # parsers differ on which of a key named twice wins: neither is believed
        (200, b'{"success": false, "success": true}'),
    ],
    ids=["html", "cut", "array", "empty", "not-bool", "redirect", "too-long", "key-twice"],
)
def test_a_settle_answer_the_seller_cannot_use_is_voided_later(
    tmp_path: Path, answer: tuple[int, bytes]
) -> None:
    """The facilitator accepted the guarantee but its answer cannot be read: the seller serves
    nothing (503), files the guarantee in doubt, and its reconciler voids it."""
    core, buyer = _funded_core(tmp_path)
    accept = _settling_with(core)

    def settle(body: dict[str, Any]) -> tuple[int, bytes]:
        assert accept(body)["success"]
        return answer

    runs = Counter()
    try:
        with slow_facilitator(0.0, settle, _voiding(core)) as (url, _):
            app = seller_app(remote_config(url, tmp_path / "records.db", timeout=5), runs)
            with TestClient(app) as seller:
                _, _, accepted = _accepted_but_refused(seller, core, buyer)
                _voided_in_time(Records(str(tmp_path / "records.db")), accepted.guarantee_id)
        assert runs.n == 0
        assert [g.state for g in core.guarantees(address=buyer.address)] == ["voided"]
        assert core.position(buyer.address, network=NETWORK).locked == 0
        assert core.audit() == []
    finally:
        core.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_settle_answer_without_transaction_or_with_another_payer_is_read_from_the_claims(
    tmp_path: Path, version: int
) -> None:
    """The official facilitator answers ``{"success": true, "certificate": …}``: the guarantee
    is the signed one, so a failed response is refunded and a delivered G-v2 one scored; an
    answer naming another payer or network is not believed (records, receipts)."""
    core, buyer = _funded_core(tmp_path)
    accept = _settling_with(core)

    def settle(body: dict[str, Any]) -> dict[str, Any]:
        answer = accept(body)
        assert answer["success"]
        return {"success": True, "networkId": "eip155:1", "payer": "0x" + "de" * 20}

    async def premium(request: Request) -> JSONResponse:
        failing = request.query_params.get("fail") == "1"
        return JSONResponse(
            {"payer": request.state.payment.payer}, status_code=500 if failing else 200
        )

    try:
        with slow_facilitator(0.0, settle, _voiding(core)) as (url, _):
            config = remote_config(url, tmp_path / "records.db", timeout=5)
            if version == 2:
                config.validation_policy = _DELIVERY
            app = Starlette(
                routes=[Route("/premium", premium)],
                middleware=[Middleware(PaymentMiddleware, config=config)],
            )
            with TestClient(app) as seller:
                req = offer(seller)
                tab = core.open_tab(
                    buyer.address, SELLER, network=NETWORK, asset=USDC, guarantee_version=version
                )
                name, value = payment_header(buyer, req, tab.to_json())
                served = seller.get("/premium", headers={name: value})
                assert served.status_code == 200 and served.json() == {"payer": buyer.address}
                receipt = json.loads(base64.b64decode(served.headers["payment-response"]))
                assert (receipt["payer"], receipt["network"]) == (buyer.address, NETWORK)
                tab = core.open_tab(
                    buyer.address, SELLER, network=NETWORK, asset=USDC, guarantee_version=version
                )
                name, value = payment_header(buyer, req, tab.to_json())
                failed = seller.get("/premium?fail=1", headers={name: value})
                assert failed.status_code == 500 and failed.json() == {"payer": buyer.address}
                records = Records(str(tmp_path / "records.db"))
                want = {"delivered", "refunded"}
                for _ in range(600):  # bounded: follow-ups may run in the background
                    if {r.outcome for r in records.query()} == want:
                        break
                    time.sleep(0.05)
                got = sorted(
                    (r.outcome, r.payer, r.guarantee_id is not None) for r in records.query()
                )
                assert got == sorted((o, buyer.address, True) for o in want)
        by_state = sorted(g.state for g in core.guarantees(address=buyer.address))
        assert by_state == ["payable", "voided"]
        assert core.position(buyer.address, network=NETWORK).locked == 10_000
        assert core.audit() == []
    finally:
        core.close()


def test_a_verify_answer_that_is_not_a_verdict_fails_closed(tmp_path: Path) -> None:
    """Settle-after mode asks /verify first: an answer that is not a verdict is a 503 with
    a reason, the handler does not run."""

    def verify(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/verify"
        return httpx.Response(200, json={})

    mock = httpx.MockTransport(verify)
    facilitator = HttpFacilitator("http://f.test", transport=mock, async_transport=mock)
    runs = Counter()
    config = remote_config(facilitator, tmp_path / "records.db", settle="after")
    with TestClient(seller_app(config, runs)) as seller:
        req = offer(seller)
        name, value = payment_header(TestBuyer.new(), req, {"tabId": "0x1", "nextReqId": "0x0"})
        fail_closed(seller.get("/premium", headers={name: value}), "facilitator_unavailable")
    assert runs.n == 0


def test_a_facilitator_url_s_credentials_reach_no_buyer_and_no_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rpcUrl defaulted to the facilitator's URL, user info included, so a URL carrying
    credentials was sent in every challenge (and logged, and put in a 503)."""
    url = f"http://seller:hunter2@127.0.0.1:{_free_port()}/base"
    facilitator = HttpFacilitator(url, timeout=1)
    assert facilitator.rpc_url == url.replace("seller:hunter2@", "")
    assert "hunter2" not in repr(facilitator)
    with pytest.raises(ValueError, match="no query or fragment"):  # calls would lose the path
        HttpFacilitator(url + "?api_key=secret")
    runs = Counter()
    with TestClient(seller_app(remote_config(facilitator, tmp_path / "r.db"), runs)) as seller:
        challenge = seller.get("/premium")
        name, value = payment_header(
            TestBuyer.new(), offer(seller), {"tabId": "0x1", "nextReqId": "0x0"}
        )
        unreachable = seller.get("/premium", headers={name: value})
    assert unreachable.status_code == 503 and runs.n == 0
    for text in (challenge.text, str(challenge.headers), unreachable.text, caplog.text):
        assert "hunter2" not in text


class _Drip(http.server.BaseHTTPRequestHandler):
    """A facilitator that answers a valid settle, one byte every 0.3 s (20 bytes: 6 s)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"success": true}' + b" " * 3
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        for byte in body:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:  # the client gave up: done
                return
            time.sleep(0.3)


def test_a_facilitator_dripping_its_answer_is_cut_off_at_the_timeout() -> None:
    """``timeout`` bounds a call in all, not each read: a facilitator sending one byte now
    and then could otherwise hold a paid request for as long as it likes. The settle is then
    in doubt (it may have been applied), and refused."""
    import asyncio

    from fourmica_x402.errors import Unavailable

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        facilitator = HttpFacilitator(url, timeout=0.5, retries=0)
        buyer, req = (
            TestBuyer.new(),
            PaymentRequirements(
                scheme="4mica-credit", network=NETWORK, asset=USDC, amount="10000", pay_to=SELLER
            ),
        )
        _, header = payment_header(buyer, req, {"tabId": "0x1", "nextReqId": "0x0"})
        payload = PaymentPayload.model_validate(json.loads(base64.b64decode(header)))
        for call in (
            lambda: facilitator.settle(payload, req),
            lambda: asyncio.run(facilitator.asettle(payload, req)),
        ):
            with pytest.raises(Unavailable) as late:
                call()
            assert late.value.maybe_applied
        facilitator.close()
    finally:
        server.shutdown()
        server.server_close()


def _paid_through(tmp_path: Path, settled: httpx.Response) -> tuple[httpx.Response, Counter]:
    """One paid GET /premium through a facilitator whose /settle answers ``settled``."""
    mock = httpx.MockTransport(lambda request: settled)
    facilitator = HttpFacilitator("http://f.test", transport=mock, async_transport=mock)
    runs = Counter()
    with TestClient(seller_app(remote_config(facilitator, tmp_path / "r.db"), runs)) as seller:
        name, value = payment_header(
            TestBuyer.new(), offer(seller), {"tabId": "0x1", "nextReqId": "0x0"}
        )
        return seller.get("/premium", headers={name: value}), runs


_CLAIMS = "0x" + "00" * 416
_SIGNATURE = "0x" + "ab" * 96


@pytest.mark.parametrize(
    ("certificate", "passed_on"),
    [
        ({"claims": _CLAIMS, "signature": _SIGNATURE}, True),
        ({"claims": _CLAIMS, "signature": _SIGNATURE, "extra": "x" * 50}, True),
        ({"claims": "0x" + "00" * 400_000, "signature": _SIGNATURE}, False),
        ({"claims": 5, "signature": None, "x": {"y": 1}}, False),
        ({"claims": _CLAIMS, "signature": "0x" + "ab" * 95}, False),
        ({"claims": "0xzz", "signature": _SIGNATURE}, False),
        ("0x" + "00" * 100, False),
    ],
    ids=["official", "extra-member", "huge", "not-strings", "short-signature", "not-hex", "text"],
)
def test_a_settle_answers_certificate_reaches_the_buyer_only_in_the_cores_format(
    tmp_path: Path, certificate: Any, passed_on: bool
) -> None:
    """The certificate travels to the buyer in a response header: an 800 KB one made the
    buyer's client fail on an answer it was charged for."""

    answer = {"success": True, "certificate": certificate}
    served, runs = _paid_through(tmp_path, httpx.Response(200, json=answer))
    assert served.status_code == 200 and runs.n == 1
    assert len(served.headers["payment-response"]) < 4096
    receipt = json.loads(base64.b64decode(served.headers["payment-response"]))
    expected = {"claims": _CLAIMS, "signature": _SIGNATURE} if passed_on else None
    assert (receipt.get("extra") or {}).get("certificate") == expected


@pytest.mark.parametrize(
    ("status", "answer", "reason"),
    [
        (200, {"success": False, "error": "tab_not_found"}, "tab_not_found"),
        (200, {"success": False, "error": {"nested": ["x"]}}, "settle_failed"),
        (200, {"success": False, "error": "bad\r\nSet-Cookie: pwned=1"}, "settle_failed"),
        (200, {"success": False, "errorReason": "y" * 500_000}, "settle_failed"),
        (200, {"success": False, "error": "Invalid recipient address"}, "settle_failed"),
        (409, {"error": "z" * 300_000, "reason": ["a"]}, "facilitator_error"),
        (400, {"error": "invalid_request", "message": "m" * 300_000}, "invalid_request"),
    ],
    ids=["code", "dict", "crlf", "huge", "prose", "4xx-huge", "4xx-coded"],
)
def test_a_facilitators_refusal_reaches_the_buyer_as_a_stable_code(
    tmp_path: Path, status: int, answer: dict[str, Any], reason: str
) -> None:
    """A refusal's reason is the 402's ``error``: a stable snake_case code the buyer can
    branch on (anything else used to go through as it came, a 500 KB string included)."""

    refused, runs = _paid_through(tmp_path, httpx.Response(status, json=answer))
    assert refused.status_code == 402 and runs.n == 0
    assert refused.json()["error"] == reason
    assert len(refused.headers["payment-required"]) < 8192


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"isValid": False, "invalidReason": "insufficient_collateral"}, "insufficient_collateral"),
        ({"isValid": False, "invalidReason": "bad\r\nSet-Cookie: pwned=1"}, "settle_failed"),
        ({"isValid": False, "invalidReason": "y" * 500_000}, "settle_failed"),
        ({"isValid": False, "invalidReason": "Invalid recipient address"}, "settle_failed"),
        ({"isValid": False}, "settle_failed"),
    ],
    ids=["code", "crlf", "huge", "prose", "none"],
)
def test_a_facilitators_verify_refusal_reaches_the_buyer_as_a_stable_code(
    tmp_path: Path, answer: dict[str, Any], reason: str
) -> None:
    """Settle-after mode asks /verify first: its refusal's reason is the 402's ``error`` as a
    settle's is, a stable code (the facilitator's prose went through as it came, a 500 KB
    string as a 700 KB header included)."""

    mock = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    facilitator = HttpFacilitator("http://f.test", transport=mock, async_transport=mock)
    runs = Counter()
    config = remote_config(facilitator, tmp_path / "records.db", settle="after")
    with TestClient(seller_app(config, runs)) as seller:
        name, value = payment_header(
            TestBuyer.new(), offer(seller), {"tabId": "0x1", "nextReqId": "0x0"}
        )
        refused = seller.get("/premium", headers={name: value})
    assert refused.status_code == 402 and runs.n == 0
    assert refused.json()["error"] == reason
    assert decode_payment_required(refused.headers["payment-required"]).error == reason
    assert len(refused.headers["payment-response"]) < 8192


# -- 3. the embedded Core's database is read-only or full ---------------------------------------


def embedded_seller(core: Core, runs: Counter) -> Starlette:
    config = PaymentConfig(pay_to=SELLER, routes={"GET /premium": "$0.01"}, core=core)
    return seller_app(config, runs)


def _in_child_as_nobody(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run fn in a forked child as uid/gid 65534; return what it returns (JSON)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps(fn()).encode())
            code = 0
        except BaseException as exc:
            os.write(write, json.dumps({"exception": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    result: dict[str, Any] = json.loads(report)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_read_only_database_fails_closed(environment_missing: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory() as name:  # the system temp dir: reachable by nobody
        directory = Path(os.path.realpath(name))
        directory.chmod(0o755)
        for parent in directory.parents:
            if not parent.stat().st_mode & 0o001:
                environment_missing(f"{parent} is not reachable by other users")
        path = directory / "core.db"
        core = Core(str(path))
        buyer = TestBuyer.new()
        core.deposit(buyer.address, 100_000, network=NETWORK)
        runs = Counter()
        app = embedded_seller(core, runs)
        with TestClient(app) as seller:  # as root: priced, a tab opened, a header signed
            req = offer(seller)
            tab = seller.post(
                "/x402/tab",
                json={
                    "x402Version": 2,
                    "userAddress": buyer.address,
                    "paymentRequirements": req.to_dict(),
                },
            ).json()
            name, value = payment_header(buyer, req, tab)
        for extra in directory.iterdir():
            extra.chmod(0o444)
        directory.chmod(0o555)
        try:

            def pay() -> dict[str, Any]:  # the child opens its own, read-only, connections
                with TestClient(app, raise_server_exceptions=False) as child:
                    began = time.monotonic()
                    response = child.get("/premium", headers={name: value})
                    return {
                        "status": response.status_code,
                        "type": response.headers.get("content-type", ""),
                        "body": response.text,
                        "runs": runs.n,
                        "secs": time.monotonic() - began,
                    }

            got = _in_child_as_nobody(pay)
        finally:
            directory.chmod(0o755)
            for extra in directory.iterdir():
                extra.chmod(0o644)
        assert got["status"] == 503, got
        assert got["type"].startswith("application/json") and "Traceback" not in got["body"]
        body = json.loads(got["body"])
        assert body["error"] == "core_unavailable", body
        assert "readonly" in body["message"] or "read-only" in body["message"], body
        assert got["runs"] == 0 and runs.n == 0
        assert got["secs"] < 5, got
        print(f"\nread-only: 503 {body} after {got['secs']:.3f}s")
        # Nothing was accepted or recorded; the database is intact.
        assert core.guarantees(address=buyer.address) == []
        assert core.position(buyer.address, network=NETWORK).locked == 0
        assert core.audit() == []
        core.close()


@pytest.fixture
def tiny_disk(environment_missing: Callable[[str], None]) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        environment_missing("mounting a tmpfs needs root")
    directory = Path(tempfile.mkdtemp(prefix="fx-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        directory.rmdir()
        environment_missing(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
        with contextlib.suppress(OSError):
            directory.rmdir()


def _fill(directory: Path) -> int:
    """Write a filler file until the disk is full; returns its size."""
    size = 0
    chunk = b"\0" * 4096
    with contextlib.suppress(OSError), (directory / "filler").open("wb", buffering=0) as out:
        for _ in range(1 << 20):  # bounded: far more than the disk holds
            size += out.write(chunk)
    return size


def test_full_disk_fails_closed(tiny_disk: Path) -> None:
    core = Core(str(tiny_disk / "core.db"))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    runs = Counter()
    app = embedded_seller(core, runs)
    try:
        with TestClient(app, raise_server_exceptions=False) as seller:
            req = offer(seller)
            tabs = []
            for _ in range(3):
                tab = seller.post(
                    "/x402/tab",
                    json={
                        "x402Version": 2,
                        "userAddress": buyer.address,
                        "paymentRequirements": req.to_dict(),
                    },
                ).json()
                tabs.append(payment_header(buyer, req, tab))
            name, value = tabs[0]
            assert seller.get("/premium", headers={name: value}).status_code == 200
            assert runs.n == 1
            # Empty the WAL into the database so the next commit needs new blocks, then fill up.
            with contextlib.closing(sqlite3.connect(tiny_disk / "core.db")) as side:
                assert side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            assert _fill(tiny_disk) > 0
            for name, value in tabs[1:]:
                began = time.monotonic()
                response = seller.get("/premium", headers={name: value})
                body = fail_closed(response, "core_unavailable")
                assert "full" in body["message"], body
                print(f"\ndisk full: 503 {body}")
                assert time.monotonic() - began < 5
            assert runs.n == 1
            (tiny_disk / "filler").unlink()  # space again: payments work again
            name, value = payment_header(
                buyer,
                req,
                seller.post(
                    "/x402/tab",
                    json={
                        "x402Version": 2,
                        "userAddress": buyer.address,
                        "paymentRequirements": req.to_dict(),
                    },
                ).json(),
            )
            assert seller.get("/premium", headers={name: value}).status_code == 200
            assert runs.n == 2
        assert core.audit() == []
        assert core.position(buyer.address, network=NETWORK).locked == 2 * PRICE
    finally:
        core.close()


def test_start_up_recovery_on_a_full_disk_runs_again_once_there_is_room(tiny_disk: Path) -> None:
    """A worker died with a G-v2 payment's completion queued; the next one started on a full
    disk: its recovery could not write, was logged and skipped for good. Once there was room
    again nothing filed the follow-up that cancels that payment at its validation deadline:
    the buyer's collateral stayed locked, and the record without an outcome."""
    core = Core(str(tiny_disk / "core.db"))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    runs = Counter()
    config = PaymentConfig(
        pay_to=SELLER, routes={"GET /premium": "$0.01"}, core=core, completion_window=60
    )
    try:
        with TestClient(seller_app(config, runs)) as seller:
            req = offer(seller)
            body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": {}}
            body["paymentRequirements"] = req.to_dict()
            name, value = payment_header(buyer, req, seller.post("/x402/tab", json=body).json())
            assert seller.get("/premium", headers={name: value}).status_code == 200
            core.store.deferred.forget()  # the worker dies with its completion queued
        [g] = core.guarantees(address=buyer.address)
        assert g.state == "pending_validation"
        with contextlib.closing(sqlite3.connect(tiny_disk / "core.db")) as side:
            assert side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert _fill(tiny_disk) > 0
        app = embedded_seller(core, runs)
        with TestClient(app) as seller:  # the next worker starts on the full disk
            gate = seller.app.middleware_stack.app.gate  # type: ignore[attr-defined]
            assert gate.records.followup(g.guarantee_id) is None
            (tiny_disk / "filler").unlink()  # room again
            for _ in range(200):  # bounded: 10 s
                if gate.records.followup(g.guarantee_id) is not None:
                    break
                time.sleep(0.05)
            assert gate.records.followup(g.guarantee_id) == ("open", 0, None)
    finally:
        core.close()


def test_start_up_recovery_of_records_apart_on_a_full_disk_runs_again_once_there_is_room(
    tmp_path: Path, tiny_disk: Path
) -> None:
    """Records kept apart from the embedded Core's database: a worker was killed while a paid
    request's response went out, and the next one started with the records' disk full. Its
    recovery was logged and skipped for good (only the shared-database recovery was run
    again): the record stayed without an outcome, its delivery never labelled unknown."""
    path = tiny_disk / "records.db"
    core = Core(str(tmp_path / "core.db"))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    runs = Counter()

    def config() -> PaymentConfig:
        return PaymentConfig(
            pay_to=SELLER,
            routes={"GET /premium": "$0.01"},
            core=core,
            records=Records(str(path)),
            completion_window=60,
        )

    try:
        first = config()
        with TestClient(seller_app(first, runs)) as seller:
            req = offer(seller)
            body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": {}}
            body["paymentRequirements"] = req.to_dict()
            name, value = payment_header(buyer, req, seller.post("/x402/tab", json=body).json())
            assert seller.get("/premium", headers={name: value}).status_code == 200
        second = config()
        with contextlib.closing(sqlite3.connect(path)) as side:  # as a kill mid-response left it
            side.execute("UPDATE fx_records SET status = 'settled', outcome = NULL")
            side.commit()
            assert side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert _fill(tiny_disk) > 0
        with TestClient(seller_app(second, runs)) as seller:  # the next worker starts
            gate = seller.app.middleware_stack.app.gate  # type: ignore[attr-defined]
            [record] = gate.records.query(payer=buyer.address)
            assert (record.status, record.outcome) == ("settled", None)
            (tiny_disk / "filler").unlink()  # room again
            for _ in range(200):  # bounded: 10 s
                if gate.records.query(payer=buyer.address)[0].outcome is not None:
                    break
                time.sleep(0.05)
            [record] = gate.records.query(payer=buyer.address)
            assert record.outcome is not None
    finally:
        core.close()
