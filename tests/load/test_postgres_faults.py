"""The embedded Core on PostgreSQL when its connection breaks under a paid request.

A loopback TCP proxy stands between the seller's Core and the server, so that a test can cut
the connection at the worst moment: after the server read a COMMIT, before its answer came.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

pytestmark = pytest.mark.postgres

SELLER = TestBuyer.new().address
PRICE = 10_000  # "$0.01"


class CommitCutter:
    """A TCP proxy to PostgreSQL. Armed with ``marker``, it cuts the connection whose
    transaction ran a statement holding ``marker`` at its COMMIT: once the server has it (and
    a moment to apply it), before the client reads the answer; or before the server has it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.marker: bytes | None = None
        #: False: the COMMIT is dropped too (the transaction aborts with its connection).
        self.forward_commit = True
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.upstream, timeout=10)
            muted = threading.Event()  # set: what the server sends is dropped
            for args in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(*args, muted), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, to_server: bool, muted: threading.Event
    ) -> None:
        seen = False
        with contextlib.suppress(OSError):
            while (chunk := src.recv(65536)) and not muted.is_set():
                marker = self.marker
                seen = seen or (to_server and marker is not None and marker in chunk)
                if seen and b"COMMIT" in chunk:
                    muted.set()
                    if self.forward_commit:
                        dst.sendall(chunk)
                    self.marker, self.cuts = None, self.cuts + 1
                    time.sleep(0.3)  # the server commits; its answer never arrives
                    break
                dst.sendall(chunk)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def cutter(postgres_url: str) -> Iterator[tuple[CommitCutter, str]]:
    """The proxy and a URL of the test database through it."""
    parts = urlsplit(postgres_url)
    proxy = CommitCutter((parts.hostname or "127.0.0.1", parts.port or 5432))
    userinfo = parts.netloc.rpartition("@")[0]
    yield proxy, urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{proxy.port}"))
    proxy.close()


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


def _pay_through(proxy: CommitCutter, url: str, buyer: TestBuyer, runs: list[str]) -> Any:
    """A paid request to a seller whose Core is at ``url``; the proxy cuts its acceptance."""
    core = Core(url)
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    try:
        with _seller(core, runs) as client:
            challenge = client.get("/premium").headers["payment-required"]
            req = decode_payment_required(challenge).accepts[0]
            tab = core.open_tab(buyer.address, req.pay_to, network=NETWORK, guarantee_version=2)
            name, value = payment_header(buyer, req, tab.to_json())
            proxy.marker = b"INSERT INTO fx_guarantees"
            answer = client.get("/premium", headers={name: value})
            assert proxy.cuts == 1
            return answer
    finally:
        core.close()


def test_an_acceptance_whose_commit_answer_was_lost_is_served(
    postgres_url: str, cutter: tuple[CommitCutter, str]
) -> None:
    """The server committed the acceptance and the connection broke before its answer: the
    store reported a failure, the buyer got a 503 while the Core had locked the price and
    recorded the payment as settled (kept at the next start, for a handler that never ran).
    The store now asks the server what became of the transaction."""
    proxy, url = cutter
    buyer, runs = TestBuyer.new(), []
    answer = _pay_through(proxy, url, buyer, runs)
    assert answer.status_code == 200, answer.text
    check = Core(postgres_url)
    try:
        [charged] = check.guarantees(address=buyer.address)
        assert runs == [charged.guarantee_id]  # served once, charged once
        assert check.position(buyer.address, network=NETWORK).locked == PRICE
        assert check.audit() == []
    finally:
        check.close()


def test_an_acceptance_cut_before_its_commit_is_refused_and_not_charged(
    postgres_url: str, cutter: tuple[CommitCutter, str]
) -> None:
    """The other side of the question: a COMMIT the server never got is asked about too, and
    found rolled back: the buyer is answered 503 and charged nothing."""
    proxy, url = cutter
    proxy.forward_commit = False
    buyer, runs = TestBuyer.new(), []
    answer = _pay_through(proxy, url, buyer, runs)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "core_unavailable"
    check = Core(postgres_url)
    try:
        assert runs == [] and check.guarantees(address=buyer.address) == []
        assert check.position(buyer.address, network=NETWORK).locked == 0
        assert check.audit() == []
    finally:
        check.close()


def test_a_write_whose_commit_answer_was_lost_is_not_run_twice(
    postgres_url: str, cutter: tuple[CommitCutter, str]
) -> None:
    """A deposit committed while its answer was lost was reported failed: an operator (or a
    queued completion, run again) applying it once more doubled it."""
    proxy, url = cutter
    core = Core(url)
    buyer = TestBuyer.new().address
    try:
        proxy.marker = b"fx_positions"
        core.deposit(buyer, 1_000, network=NETWORK)  # no error: it committed
        assert proxy.cuts == 1
        assert core.position(buyer, network=NETWORK).collateral == 1_000
    finally:
        core.close()


def test_a_process_stalled_holding_a_buyers_lock_does_not_hold_its_payments(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another seller process stopped (SIGSTOP, a paused VM, a host cut off) in the middle of a
    transaction holding a buyer's position: every payment of that buyer, on every process,
    waited for it with no end (until TCP gave up on the session, hours). The server now ends
    a Core session idle in a transaction, and the payment goes through."""
    from fourmica_x402.core.store import StoreUnavailable, postgres

    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION", "1s")
    core, other, runs = Core(postgres_url), Core(postgres_url), []
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    held, resume, outcome = threading.Event(), threading.Event(), []

    def stalled() -> None:
        try:
            with other.store.transaction() as tx:
                tx.one("SELECT 1 FROM fx_positions WHERE address = ? FOR UPDATE", (buyer.address,))
                held.set()
                resume.wait(30)  # the process is stopped here
            outcome.append("committed")
        except StoreUnavailable:
            outcome.append("ended by the server")

    stopped = threading.Thread(target=stalled, daemon=True)
    stopped.start()
    assert held.wait(10)
    answers: list[Any] = []
    try:
        with _seller(core, runs) as client:
            challenge = client.get("/premium").headers["payment-required"]
            req = decode_payment_required(challenge).accepts[0]
            tab = core.open_tab(buyer.address, req.pay_to, network=NETWORK, guarantee_version=2)
            name, value = payment_header(buyer, req, tab.to_json())
            paying = threading.Thread(
                target=lambda: answers.append(client.get("/premium", headers={name: value}))
            )
            paying.start()
            paying.join(10)
            answered_while_stopped = bool(answers)
            resume.set()  # before the fix: the payment waited for this
            paying.join(15)
        stopped.join(15)
        assert answered_while_stopped
        assert answers[0].status_code == 200, answers[0].text
        assert len(runs) == 1 and outcome == ["ended by the server"]
        assert core.position(buyer.address, network=NETWORK).locked == PRICE
        assert core.audit() == []
    finally:
        resume.set()
        core.close(), other.close()
