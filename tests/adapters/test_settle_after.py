"""Settle-after mode answers a settle the facilitator refused as settle-before mode does: with
the facilitator's reason, never as an outage (docs/protocol.md, "Reason codes")."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402 import PaymentConfig
from fourmica_x402.core import Core
from fourmica_x402.errors import CoreError, PaymentError, Unavailable
from fourmica_x402.gate import Gate
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers
from fourmica_x402.wire import decode_payment_required

SELLER = TestBuyer.new().address


def _seller(
    core: Core,
    tmp_path: Path,
    mode: str,
    runs: list[int],
    *,
    apart: bool = True,
    delivery_policy: bool = True,
) -> tuple[Gate, Starlette]:
    """A Starlette seller on ``core`` in settle ``mode``, its records in a database of their
    own (``apart``: the settle is a call, not part of the record's write) or in the Core's;
    ``runs`` counts its runs."""
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            network=NETWORK,
            routes={"GET /premium": "$0.01"},
            core=core,
            records=str(tmp_path / "records.db") if apart else None,
            settle=mode,  # type: ignore[arg-type]
            delivery_policy=delivery_policy,
        )
    )

    async def premium(request: Any) -> JSONResponse:
        runs.append(1)
        return JSONResponse({"served": True})

    app = Starlette(
        routes=[Route("/premium", premium)], middleware=[Middleware(PaymentMiddleware, gate=gate)]
    )
    return gate, app


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_refused_settle_says_why_in_either_mode(tmp_path: Path, mode: str) -> None:
    """Settle-after answered a facilitator's refusal (``invalid_signature``) as 402
    ``facilitator_unavailable``, an outage code a buyer retries."""
    core = Core(str(tmp_path / "core.db"))
    runs: list[int] = []
    gate, app = _seller(core, tmp_path, mode, runs)

    def refuse(payload: Any, chosen: Any) -> Any:
        raise PaymentError("the facilitator refused it", reason="invalid_signature")

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/premium"))
        gate.facilitator.settle = refuse  # type: ignore[method-assign]
        answer = client.get("/premium", headers=headers)
    assert answer.status_code == 402
    assert decode_payment_required(answer.headers["payment-required"]).error == "invalid_signature"
    assert runs == ([1] if mode == "after" else [])  # settle-after ran the handler first
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert gate.records.due_followups(10**12) == []  # a refusal leaves no mark behind
    core.close()


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_score_that_could_not_be_posted_is_retried_in_either_mode(
    tmp_path: Path, mode: str
) -> None:
    """Settle-after kept the settle's in-doubt mark until the completion, so a delivery score
    that failed then could not file its retry (one follow-up per guarantee), and the completion
    deleted the mark: nothing was left to score it, and the Core cancelled the delivered
    payment at its validation deadline."""
    from fourmica_x402.errors import Unavailable
    from fourmica_x402.testing import ShiftedClock

    clock = ShiftedClock()
    core = Core(str(tmp_path / "core.db"), clock=clock)
    gate, app = _seller(core, tmp_path, mode, [])
    real, blips = gate.facilitator.post_validation, []

    def blip(*args: Any, **kwargs: Any) -> Any:  # the facilitator unreachable for one call
        if not blips:
            blips.append(1)
            raise Unavailable("unreachable for a moment")
        return real(*args, **kwargs)

    gate.facilitator.post_validation = blip  # type: ignore[method-assign]
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        answer = client.get("/premium", headers=paid_headers(client, buyer, client.get("/premium")))
    assert answer.status_code == 200
    gate.flush()
    [accepted] = core.guarantees(address=buyer.address)
    assert gate.records.followup(accepted.guarantee_id) is not None  # the score's retry
    gate.reconcile(time.time() + 3600)
    clock.advance(10 * 24 * 3600)  # past the validation deadline
    core.expire_validations()
    assert core.guarantee(accepted.guarantee_id).state == "payable"
    assert blips == [1]
    core.close()


def test_a_client_leaving_during_a_refused_settle_leaves_the_served_payment_alone(
    tmp_path: Path,
) -> None:
    """The client of a settle-after request left while its settle was out, and the refund was
    filed whatever that settle answered: refused because the buyer's other request (the same
    payment, encoded otherwise, at a settle-before app of the seller) had been served, it voided
    that served payment. Only this request's own acceptance is refunded."""
    import asyncio
    import base64
    import json
    import threading

    from fourmica_x402.testing import http_scope, payment_header

    core = Core(str(tmp_path / "core.db"))
    gate_a, app_a = _seller(core, tmp_path, "before", [], apart=False)
    gate_b, app_b = _seller(core, tmp_path, "after", [], apart=False)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app_b) as client:
        offer = decode_payment_required(client.get("/premium").headers["payment-required"])
        req = offer.accepts[0]
        body = {
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": req.to_dict(),
        }
        name, value = payment_header(buyer, req, client.post("/x402/tab", json=body).json())
    other = base64.b64encode(json.dumps(json.loads(base64.b64decode(value)), indent=1).encode())
    real, started, served = gate_b.facilitator.settle, threading.Event(), []

    def settle(payload: Any, chosen: Any) -> Any:  # meanwhile the other request is served
        started.set()
        with TestClient(app_a) as a:
            served.append(a.get("/premium", headers={name: other.decode()}).status_code)
        time.sleep(0.3)
        return real(payload, chosen)  # refused: a replay

    gate_b.facilitator.settle = settle  # type: ignore[method-assign]

    async def leave() -> None:
        scope = http_scope("GET", "/premium", [(name.lower().encode(), value.encode())])

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        task = asyncio.create_task(app_b(scope, receive, send))
        for _ in range(300):  # bounded
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.0)  # the settle's thread is answered meanwhile

    asyncio.run(leave())
    gate_b.reconcile(time.time() + 5)
    gate_a.flush()
    [accepted] = core.guarantees(address=buyer.address)
    assert served == [200]
    # The left request's record is completed too (its response never started: the gate was
    # not told, and an exit waited for it for ever after).
    outcomes = sorted((r.settle_mode, r.status, r.outcome) for r in gate_b.records.query())
    assert outcomes == [("after", "failed", "not_charged"), ("before", "delivered", "delivered")]
    assert core.guarantee(accepted.guarantee_id).state == "payable"
    assert core.position(buyer.address, network=NETWORK).locked == 10_000
    core.close()


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_settle_whose_mark_came_due_under_it_is_not_served(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A settle's in-doubt mark is due by the wall clock a minute on; the wall clock stepping
    forward (or a reconciler whose clock runs ahead) while the settle was out had the mark's
    void take back the payment as it was being accepted, and the request, its record
    written anyway, was served free. Its record now finds the mark taken: not served."""
    core = Core(str(tmp_path / "core.db"))
    runs: list[int] = []
    gate, app = _seller(core, tmp_path, mode, runs)
    real = gate.facilitator.settle

    def slow(payload: Any, chosen: Any) -> Any:
        result = real(payload, chosen)  # accepted; meanwhile the mark came due and was voided
        assert gate.reconcile(time.time() + 120) == {"voided": 1}
        return result

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/premium"))
        gate.facilitator.settle = slow  # type: ignore[method-assign]
        answer = client.get("/premium", headers=headers)
    gate.flush()
    # voided once: the request's own void, finding it voided, files no retry of it
    assert "could not void" not in caplog.text and gate.records.due_followups(10**12) == []
    [guarantee] = core.guarantees(address=buyer.address)
    assert guarantee.state == "voided"  # the buyer is not charged...
    assert answer.status_code == (402 if mode == "after" else 503)  # ...nor served
    assert b"facilitator_unavailable" in answer.content and b"served" not in answer.content
    assert runs == ([1] if mode == "after" else [])  # settle-after ran the handler first
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_mark_being_voided_as_its_settle_is_answered_is_not_served(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The reconciler read a settle's mark as due and its void went out; the settle's answer,
    coming meanwhile, still found the mark where it was, removed it and was served, and then
    the void went through: the buyer was served for a voided payment. The reconciler now
    takes the mark before it acts on it, so one of the two has it: here the void."""
    core = Core(str(tmp_path / "core.db"))
    runs: list[int] = []
    gate, app = _seller(core, tmp_path, mode, runs)
    real_settle, real_void = gate.facilitator.settle, gate.facilitator.void
    voiding, go = threading.Event(), threading.Event()
    reconciled: dict[str, int] = {}
    thread = threading.Thread(target=lambda: reconciled.update(gate.reconcile(time.time() + 120)))

    def held(guarantee_id: str, by: str) -> Any:  # the reconciler's void is out for a while
        if not voiding.is_set():
            voiding.set()
            go.wait(10)
        return real_void(guarantee_id, by=by)

    def slow(payload: Any, chosen: Any) -> Any:
        result = real_settle(payload, chosen)  # accepted as the mark came due
        thread.start()
        assert voiding.wait(10)  # the reconciler's void of it is out
        return result

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/premium"))
        gate.facilitator.settle = slow  # type: ignore[method-assign]
        gate.facilitator.void = held  # type: ignore[method-assign]
        answer = client.get("/premium", headers=headers)
        go.set()
        thread.join(10)
    gate.flush()
    assert reconciled == {"voided": 1}
    # voided once: the request's void finding it voided is no failure filed for a retry
    assert "could not void" not in caplog.text and gate.records.due_followups(10**12) == []
    [guarantee] = core.guarantees(address=buyer.address)
    assert guarantee.state == "voided"  # the buyer is not charged...
    assert answer.status_code == (402 if mode == "after" else 503)  # ...nor served
    assert b"served" not in answer.content
    assert runs == ([1] if mode == "after" else [])
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_settle_accepted_after_its_mark_was_given_up_is_voided(tmp_path: Path, mode: str) -> None:
    """The wall clock stepped forward ten minutes while a settle was out: the reconciler's
    void of its mark found no guarantee yet and, the mark being older than its wait for an
    unknown one, gave it up. The settle was then accepted and, its mark taken, not served;
    settle-after left the acceptance standing: the buyer paid for a 402."""
    core = Core(str(tmp_path / "core.db"))
    runs: list[int] = []
    gate, app = _seller(core, tmp_path, mode, runs)
    real = gate.facilitator.settle

    def slow(payload: Any, chosen: Any) -> Any:
        assert gate.reconcile(time.time() + 600) == {"never_accepted": 1}
        return real(payload, chosen)  # accepted after its mark was given up

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/premium"))
        gate.facilitator.settle = slow  # type: ignore[method-assign]
        answer = client.get("/premium", headers=headers)
    gate.flush()
    [guarantee] = core.guarantees(address=buyer.address)
    assert answer.status_code == (402 if mode == "after" else 503)
    assert guarantee.state == "voided"  # was pending, the buyer's collateral locked for it
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()


def test_a_refund_filed_while_the_reconciler_voids_the_mark_is_not_closed_by_it(
    tmp_path: Path,
) -> None:
    """The reconciler took a settle's mark and its void went out, crossing the settle (the
    facilitator did not know the guarantee yet); the settle's answer came, found the mark taken
    and voided the guarantee itself, which failed: a refund was filed in place of the mark.
    The reconciler's answer for the mark (never accepted, the mark being old) then closed that
    refund: the guarantee stayed payable and the buyer was charged for nothing served."""
    core = Core(str(tmp_path / "core.db"))
    runs: list[int] = []
    # G-v1: payable once accepted, nothing cancels it later
    gate, app = _seller(core, tmp_path, "before", runs, delivery_policy=False)
    gate._reconciler.kick = lambda: None  # type: ignore[method-assign]  # run by hand below
    real_settle, real_void = gate.facilitator.settle, gate.facilitator.void
    voiding, go = threading.Event(), threading.Event()
    calls: list[str] = []
    reconciled: dict[str, int] = {}
    late = time.time() + 400  # the mark is older than the reconciler's wait for an unknown one
    thread = threading.Thread(target=lambda: reconciled.update(gate.reconcile(late)))

    def void(guarantee_id: str, by: str) -> Any:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:  # the reconciler's, out before the settle reached the facilitator
            voiding.set()
            go.wait(10)
            raise CoreError("unknown guarantee", reason="unknown_guarantee", status=404)
        if len(calls) == 2:  # the answer's own void: the facilitator is briefly down
            raise Unavailable("facilitator answered 503")
        return real_void(guarantee_id, by=by)

    def slow(payload: Any, chosen: Any) -> Any:
        result = real_settle(payload, chosen)
        thread.start()
        assert voiding.wait(10)
        return result

    buyer = TestBuyer.new()
    core.deposit(buyer.address, 100_000, network=NETWORK)
    with TestClient(app) as client:
        headers = paid_headers(client, buyer, client.get("/premium"))
        gate.facilitator.settle = slow  # type: ignore[method-assign]
        gate.facilitator.void = void  # type: ignore[method-assign]
        answer = client.get("/premium", headers=headers)
        go.set()
        thread.join(10)
        assert answer.status_code == 503 and runs == []
        gate.reconcile(time.time() + 1)  # the refund filed by the answer is still there
    gate.flush()
    [guarantee] = core.guarantees(address=buyer.address)
    assert guarantee.state == "voided"
    assert core.position(buyer.address, network=NETWORK).locked == 0
    core.close()
