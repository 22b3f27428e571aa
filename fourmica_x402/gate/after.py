"""Settle-after mode: the payment is settled once the handler answered 2xx (docs/operations.md,
"Seller options and hooks"; for a remote facilitator, "A remote facilitator")."""

from __future__ import annotations

import asyncio
import logging
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
        state.result = result
        state.payment.guarantee_id = result.guarantee_id
        state.payment.settled = True
        certificate_source(gate, state.payment, result)
        if state.delivery_policy and state.payment.guarantee_version == 2 and not state.left:
            gate._holds.add(state)  # scored when the response ends
    return result


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
    thread, which goes on: whatever that settle is answered, the response is not delivered,
    so a refund is filed, due now (an accepted guarantee is voided; one never accepted is
    found so and closed). A refund, not a settle in doubt: the record may name the guarantee
    by then, which would take it for served."""
    state.left = True
    gate._holds.discard(state)
    chosen = state.requirements
    gid = _guarantee_id(signed_from_payload(state.payload, chosen), chosen)
    try:
        gate.records.add_followup(gid, chosen.pay_to, "refund")
    except Exception:  # nowhere to remember it: say so loudly, the lock needs an operator
        log.exception("could not file the refund of %s, whose client left", gid)
        return
    gate._reconciler.kick()
