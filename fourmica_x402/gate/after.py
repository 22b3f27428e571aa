"""Settle-after mode: the payment is settled once the handler answered 2xx (docs/operations.md,
"Seller options and hooks"; for a remote facilitator, "A remote facilitator")."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from ..errors import FourmicaError, Unavailable
from ..facilitator import SettleResult, signed_from_payload
from .settle import (
    _answered,
    _broken,
    _guarantee_id,
    certificate_source,
    claim_settle,
    in_doubt,
)
from .types import Call, Flow, Paid

if TYPE_CHECKING:
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")


def settle_after(gate: Gate, state: Paid) -> SettleResult:
    """Settle-after mode: settle once the handler succeeded; a failure is a failed result.

    A settle that is not the embedded Core's own write is marked first, as in settle-before
    mode (:func:`claim_settle`): a process that dies before its answer is recorded leaves a
    void for the next one; the completion that names the guarantee removes the mark."""
    chosen = state.requirements
    signed = signed_from_payload(state.payload, chosen)
    gid = None
    if not gate._shared:
        try:
            gid = claim_settle(gate, signed, chosen)
        except FourmicaError as exc:
            log.error("settle after the handler failed: %s", exc.message)
            return SettleResult(success=False, network=chosen.network, error_reason=exc.reason)
    try:
        result = gate.facilitator.settle(state.payload, chosen)
    except Exception as exc:
        log.error("settle after the handler failed: %s", exc)
        if gid is not None:
            _answered(gate, signed, chosen, gid, exc)
        elif (isinstance(exc, Unavailable) and exc.maybe_applied) or not isinstance(
            exc, FourmicaError
        ):
            in_doubt(gate, exc if isinstance(exc, Unavailable) else _broken(exc), signed, chosen)
        reason = "facilitator_unavailable"
        if isinstance(exc, FourmicaError) and not isinstance(exc, Unavailable):
            reason = exc.reason  # a refusal says why, as in settle-before mode
        result = SettleResult(success=False, network=chosen.network, error_reason=reason)
    else:
        if gid is not None and not result.success:
            _answered(gate, signed, chosen, gid, result)
        elif gid is not None:
            _named(gate, state, gid)
    if result.success:
        with _HANDOFF:
            state.result, left = result, state.left
        state.payment.guarantee_id = result.guarantee_id
        state.payment.settled = True
        certificate_source(gate, state.payment, result)
        if left:  # its client left while it settled: this request's acceptance goes back
            _refund_left(gate, state)
        elif state.delivery_policy and state.payment.guarantee_version == 2:
            gate._holds.add(state)  # scored when the response ends
    return result


#: Orders a request's leaving against its settle's answer, two threads: exactly one of them
#: refunds a settle this request had accepted (:func:`left_during_settle`).
_HANDOFF = threading.Lock()


def settled(gate: Gate, state: Paid) -> Flow:
    """:func:`settle_after` as a step of the flow (in a worker thread). A cancellation meanwhile
    (the client left: async Django cancels) hands the payment to :func:`left_during_settle`,
    since the thread's settle goes on."""
    try:
        return (yield Call(settle_after, (gate, state)))
    except asyncio.CancelledError:
        asyncio.get_running_loop().run_in_executor(None, left_during_settle, gate, state)
        raise


def _named(gate: Gate, state: Paid, gid: str) -> None:
    """An accepted settle-after settle: its record names the guarantee, its mark goes."""
    record_id = state.payment.record_id
    try:
        if record_id is None:
            gate.records.drop_settle(gid)
        else:
            gate.records.settled_after(record_id, gid)
    except Exception:  # the completion names it too; failing both, the mark voids it when due
        log.exception("could not record the settle of %s", gid)


def left_during_settle(gate: Gate, state: Paid) -> None:
    """The client left (async Django cancels) while its settle-after settle ran in a worker
    thread, which goes on. If that settle accepted the payment (now, or when it is answered),
    a refund is filed, due now: the response is not delivered. Only this request's own
    acceptance: a settle refused because another request was served the same payment leaves
    that payment alone; an unanswered one is in doubt as any other."""
    with _HANDOFF:
        state.left = True
        accepted = state.result is not None and state.result.success
    gate._holds.discard(state)
    if accepted:
        _refund_left(gate, state)


def _refund_left(gate: Gate, state: Paid) -> None:
    """File the refund of a settle-after payment whose client left (a refund, not a settle in
    doubt: its record names the guarantee, which would take it for served)."""
    chosen = state.requirements
    gid = _guarantee_id(signed_from_payload(state.payload, chosen), chosen)
    try:
        gate.records.add_followup(gid, chosen.pay_to, "refund")
    except Exception:  # nowhere to remember it: say so loudly, the lock needs an operator
        log.exception("could not file the refund of %s, whose client left", gid)
        return
    gate._reconciler.kick()
