"""Settle-after mode answers a settle the facilitator refused as settle-before mode does: with
the facilitator's reason, never as an outage (docs/protocol.md, "Reason codes")."""

from __future__ import annotations

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
from fourmica_x402.errors import PaymentError
from fourmica_x402.gate import Gate
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers
from fourmica_x402.wire import decode_payment_required

SELLER = TestBuyer.new().address


def _seller(core: Core, tmp_path: Path, mode: str, runs: list[int]) -> tuple[Gate, Starlette]:
    """A Starlette seller on ``core`` in settle ``mode``, its records in a database of their
    own (so the settle is a call, not part of the record's write); ``runs`` counts its runs."""
    gate = Gate(
        PaymentConfig(
            pay_to=SELLER,
            network=NETWORK,
            routes={"GET /premium": "$0.01"},
            core=core,
            records=str(tmp_path / "records.db"),
            settle=mode,  # type: ignore[arg-type]
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
