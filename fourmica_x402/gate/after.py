"""Settle-after mode: the payment is settled once the handler answered 2xx (docs/operations.md,
"Seller options and hooks"; for a remote facilitator, "A remote facilitator")."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from ..errors import FourmicaError, Unavailable
from ..facilitator import SettleResult, signed_from_payload
from ..followups import MarkTaken, take_mark
from ..guarantee import SignedGuarantee
from .settle import (
    _answered,
    _broken,
    _guarantee_id,
    abandon,
    certificate_source,
    claim_settle,
    in_doubt,
    undo,
)
from .types import Call, Flow, Paid, error_response

if TYPE_CHECKING:
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")
#: A settle answered after its mark came due (docs/operations.md, "A remote facilitator").
_LATE = "facilitator_unavailable"


def settle_after(gate: Gate, state: Paid) -> SettleResult:
    """Settle-after mode: settle once the handler succeeded; a failure is a failed result.

    A settle that is not the embedded Core's own write is marked first, as in settle-before
    mode (:func:`claim_settle`): a process that dies before its answer is recorded leaves a
    void for the next one; the completion that names the guarantee removes the mark."""
    begun = _begin(gate, state)
    if isinstance(begun, SettleResult):
        return begun
    try:
        outcome: SettleResult | Exception = gate.facilitator.settle(
            state.payload, state.requirements
        )
    except Exception as exc:
        outcome = exc
    return _finish(gate, state, *begun, outcome)


async def _asettle_after(gate: Gate, state: Paid) -> SettleResult:
    """:func:`settle_after` on an event loop: a remote facilitator's settle is awaited there
    (its ``timeout`` bounds the whole call); the writes around it, and the embedded Core's
    settle, run in worker threads. A cancellation (the client left: async Django cancels)
    lets the settle go on and hands the payment to :func:`left_during_settle`."""
    if gate._shared:
        work = asyncio.ensure_future(asyncio.to_thread(settle_after, gate, state))
    else:
        begun = await asyncio.to_thread(_begin, gate, state)
        if isinstance(begun, SettleResult):
            return begun
        work = asyncio.ensure_future(_aremote(gate, state, *begun))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        asyncio.get_running_loop().run_in_executor(None, left_during_settle, gate, state)
        raise


async def _aremote(
    gate: Gate, state: Paid, signed: SignedGuarantee, gid: str | None
) -> SettleResult:
    try:
        outcome: SettleResult | Exception = await gate.facilitator.asettle(
            state.payload, state.requirements
        )
    except Exception as exc:
        outcome = exc
    return await asyncio.to_thread(_finish, gate, state, signed, gid, outcome)


def _begin(gate: Gate, state: Paid) -> tuple[SignedGuarantee, str | None] | SettleResult:
    """The guarantee, and the mark of a settle that is not the embedded Core's own write (a
    failed result when it cannot be marked)."""
    chosen = state.requirements
    signed = signed_from_payload(state.payload, chosen)
    if gate._shared:
        return signed, None
    try:
        return signed, claim_settle(gate, signed, chosen)
    except FourmicaError as exc:
        log.error("settle after the handler failed: %s", exc.message)
        return SettleResult(success=False, network=chosen.network, error_reason=exc.reason)


def _finish(
    gate: Gate,
    state: Paid,
    signed: SignedGuarantee,
    gid: str | None,
    outcome: SettleResult | Exception,
) -> SettleResult:
    """What the settle's answer (or its exception) leaves: the mark answered or the record
    naming the guarantee, the payment settled, and a refund if its client left meanwhile."""
    chosen = state.requirements
    if isinstance(outcome, Exception):
        exc = outcome
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
        result = outcome
        if gid is not None and not result.success:
            _answered(gate, signed, chosen, gid, result)
        elif gid is not None and not _named(gate, state, gid):  # its mark came due: voided
            undo(gate, result, chosen.pay_to)  # here too: the reconciler may have given it up
            result = SettleResult(success=False, network=chosen.network, error_reason=_LATE)
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
    """:func:`settle_after` as a step of the flow."""
    return (yield Call(settle_after, (gate, state), afn=_asettle_after))


def hooked(gate: Gate, state: Paid) -> Flow:
    """Whether the seller's ``after_settle`` hook, run for a payment just settled here, passed
    (it raised: logged), as settle-before mode runs it for every payment (docs/operations.md,
    "Seller options and hooks")."""
    hook, result = gate.config.after_settle, state.result
    if hook is None or result is None:
        return True
    try:
        yield Call(hook, (state.request, result), blocking=False)
    except Exception:
        log.exception("after_settle hook raised; refunding %s", result.guarantee_id)
        return False
    return True


def bought(gate: Gate, state: Paid) -> Flow:
    """A metered slice settled at its pay URL: None, or the answer when its payment was refused
    (402) or the hook failed (503, the slice given back: it is never added)."""
    result, p = (yield from settled(gate, state)), state.payment
    if not result.success:
        yield Call(abandon, (gate, None, p.pay_to, p.record_id, 402))
        why = result.error_reason or "settle_failed"
        return error_response(402, why, "the slice's payment was refused")
    if not (yield from hooked(gate, state)):
        yield Call(abandon, (gate, result, p.pay_to, p.record_id, 503))
        return error_response(
            503, "seller_hook_failed", "the seller failed; the payment was voided"
        )
    return None


def _named(gate: Gate, state: Paid, gid: str) -> bool:
    """An accepted settle-after settle: its record names the guarantee, its mark goes. False
    when the mark came due before (the reconciler voids the guarantee: not to be served)."""
    record_id = state.payment.record_id
    try:
        if record_id is None:
            with gate.records.store.transaction() as tx:
                take_mark(tx, gid)
        else:
            gate.records.settled_after(record_id, gid)
    except MarkTaken:
        log.error("the settle of %s was answered after its mark came due; not served", gid)
        return False
    except Exception:  # the completion names it too; failing both, the mark voids it when due
        log.exception("could not record the settle of %s", gid)
    return True


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
