"""Settling a payment and recording it, as one unit; settles whose answer was lost.

With the embedded Core and the records in its database, the acceptance and the payment's
record commit in one transaction (docs/architecture.md, "The Core's transactions"). Otherwise
the facilitator settles and the record follows; a record that cannot be written voids the
acceptance, since money is never kept for work that will not be done. A remote settle that went
unanswered may have been accepted: it is filed for the reconciler to void
(:mod:`.background`), and the same guarantee is refused until then.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from ..core.store import Tx
from ..errors import FourmicaError, PaymentError, Reason, Unavailable
from ..facilitator import LocalFacilitator, SettleResult
from ..followups import MarkTaken
from ..guarantee import SignedGuarantee, guarantee_id
from ..networks import get_network
from ..records import Records
from ..wire import PaymentPayload, PaymentPayloadV1, PaymentRequirements
from .drive import local_write
from .types import Call, Payment

if TYPE_CHECKING:
    from .flow import Gate

T = TypeVar("T")

log = logging.getLogger("fourmica_x402.gate")


def settle_and_record(
    gate: Gate,
    payload: PaymentPayload | PaymentPayloadV1,
    chosen: PaymentRequirements,
    base: dict[str, Any],
    signed: SignedGuarantee,
) -> Call:
    """The I/O that settles a payment and writes its record (settle-before mode).

    Its result: ``(SettleResult, record_id)`` when accepted, a failed :class:`SettleResult`
    when refused; it raises :class:`Unavailable` when nothing can be said. ``base``: the
    record's fields; ``signed``: the guarantee decoded from ``payload`` (not decoded twice).
    """
    return Call(_settle_and_record, (gate, payload, chosen, base, signed), afn=_asettle_and_record)


def _settle_and_record(
    gate: Gate,
    payload: PaymentPayload | PaymentPayloadV1,
    chosen: PaymentRequirements,
    base: dict[str, Any],
    signed: SignedGuarantee,
    nowait: bool = False,
) -> SettleResult | tuple[SettleResult, int]:
    """Settle, then write the record; one worker-thread hop for the async driver.

    ``nowait``: the event loop's attempt (:func:`.drive.local_write`); anything but a clean
    answer raises as it is, nothing committed, and is redone in a worker thread.
    """
    facilitator = gate.facilitator
    if gate._shared:  # the embedded Core: acceptance and record commit together
        assert isinstance(facilitator, LocalFacilitator)
        try:
            result, record_id = facilitator.settle_signed(
                signed, chosen, lambda tx, result: record(gate, result, base, tx), nowait=nowait
            )
        except Exception as exc:
            if nowait or isinstance(exc, FourmicaError):
                raise
            # the record failed: the acceptance was rolled back with it
            log.exception("could not record a payment; nothing was accepted")
            raise Unavailable(
                f"could not record the payment: {type(exc).__name__}",
                reason=Reason.RECORDS_UNAVAILABLE,
            ) from exc
        return result if record_id is None else (result, record_id)
    gid = claim_settle(gate, signed, chosen)
    try:
        result = facilitator.settle(payload, chosen)
    except Exception as exc:
        _raise(exc, _answered(gate, signed, chosen, gid, exc))
    if not result.success:
        return _answered(gate, signed, chosen, gid, result)
    try:
        return result, record(gate, result, base, mark=gid)
    except MarkTaken:  # answered after its mark came due: it is being voided, not served
        undo(gate, result, base["pay_to"])
        raise _late() from None
    except Exception as exc:  # accepted but unrecorded: never keep money for work not done
        undo(gate, result, base["pay_to"])
        raise Unavailable(
            f"could not record the payment: {type(exc).__name__}",
            reason=Reason.RECORDS_UNAVAILABLE,
        ) from exc


async def _asettle_and_record(
    gate: Gate,
    payload: PaymentPayload | PaymentPayloadV1,
    chosen: PaymentRequirements,
    base: dict[str, Any],
    signed: SignedGuarantee,
) -> SettleResult | tuple[SettleResult, int]:
    if gate.core is not None:  # local: settle and record together
        store = gate.core.store if gate._shared else None
        late = partial(_refund_late, gate, base["pay_to"])
        args = (gate, payload, chosen, base, signed)
        return await local_write(store, _settle_and_record, *args, late=late)
    gid = await asyncio.to_thread(claim_settle, gate, signed, chosen)
    settling = asyncio.ensure_future(gate.facilitator.asettle(payload, chosen))
    try:
        result = await asyncio.shield(settling)
    except Exception as exc:
        _raise(exc, await asyncio.to_thread(_answered, gate, signed, chosen, gid, exc))
    except asyncio.CancelledError:
        # The client left (async Django cancels). The settle goes on and its own answer says
        # whether this call was accepted: voiding on a guess could take back the same
        # guarantee accepted by another request of the buyer's that was served.
        settling.add_done_callback(partial(_answered_after_cancel, gate, signed, chosen, gid))
        raise
    if not result.success:  # an accepted one goes straight on to its record
        return await asyncio.to_thread(_answered, gate, signed, chosen, gid, result)
    try:
        return result, await asyncio.to_thread(record, gate, result, base, None, gid)
    except asyncio.CancelledError:  # recorded or not, its handler will not run: refund it
        _refund_late(gate, base["pay_to"], result)
        raise
    except MarkTaken:
        await asyncio.to_thread(undo, gate, result, base["pay_to"])
        raise _late() from None
    except Exception as exc:
        await asyncio.to_thread(undo, gate, result, base["pay_to"])
        raise Unavailable(
            f"could not record the payment: {type(exc).__name__}",
            reason=Reason.RECORDS_UNAVAILABLE,
        ) from exc


def _late() -> Unavailable:
    """A settle accepted after its mark came due (the wall clock stepped forward, or the
    settle outlasted its wait): the reconciler voids it, and the handler does not run."""
    return Unavailable(
        "the facilitator answered after the settle was given up; the payment was voided",
        reason=Reason.UNAVAILABLE,
    )


def record(
    gate: Gate,
    result: SettleResult,
    base: dict[str, Any],
    tx: Tx | None = None,
    mark: str | None = None,
) -> int:
    """Write a settled payment's record (in the acceptance's transaction ``tx`` when given;
    a remote settle's ``mark`` goes in the same write, see :func:`claim_settle`)."""
    write = partial(gate.records.begin, mark=mark) if tx is None else partial(Records.insert, tx)
    return write(
        **base,
        settle_result=result.response_json().decode(),
        status="settled",
        request_id=None if result.req_id is None else hex(result.req_id),
        tab_id=None if result.tab_id is None else hex(result.tab_id),
        guarantee_id=result.guarantee_id,
        payer=result.payer,
    )


def certificate_source(gate: Gate, payment: Payment, result: SettleResult | None) -> None:
    """Where the payment's certificate comes from: the facilitator's answer when it sent
    one (a remote ``/settle``), else the embedded Core, on demand (docs/architecture.md,
    "Certificates")."""
    if result is None or not result.guarantee_id:
        return
    if result.certificate:
        payment._made = result.certificate
    elif gate.core is not None and isinstance(gate.facilitator, LocalFacilitator):
        payment._certify = partial(gate.facilitator.certify, result.guarantee_id)


def abandon(
    gate: Gate,
    result: SettleResult | None,
    pay_to: str,
    record_id: int | None,
    status: int = 503,
) -> None:
    """Void a settled payment whose handler will not run, and say so in its record with the
    ``status`` the buyer got (``result`` None: only verified, settle-after: nothing to void).
    A void that fails now is filed for the reconciler, which retries it (the record says
    ``refund_pending``)."""
    voided = True if result is None else undo(gate, result, pay_to)
    if record_id is not None:
        gate.records.finish(
            record_id,
            status="failed",
            http_status=status,
            response_hash=None,
            outcome=("refunded" if voided else "refund_pending")
            if result is not None
            else "not_charged",
        )


def _refund_late(gate: Gate, pay_to: str, outcome: Any) -> None:
    """An acceptance committed for a request that was cancelled meanwhile (the client left, a
    timeout): its handler will not run, so it is refunded."""
    result = outcome[0] if isinstance(outcome, tuple) else outcome
    if isinstance(result, SettleResult) and result.success and result.guarantee_id:
        try:
            gate.records.label(result.guarantee_id, "refund_pending")  # "refunded" once voided
        except Exception:  # the database cannot take it now (a full disk): refunded all the same
            log.exception("could not label the late payment %s", result.guarantee_id)
        gate.records.add_followup(result.guarantee_id, pay_to, "refund")
        gate._reconciler.kick()


def or_abandon(
    gate: Gate,
    result: SettleResult | None,
    pay_to: str,
    record_id: int | None,
    fn: Callable[..., T],
    *args: Any,
) -> T:
    """``fn(*args)``, a step between a payment and its handler: when it raises, the payment
    is given back (:func:`abandon`) before the error goes on."""
    try:
        return fn(*args)
    except Exception:
        try:
            abandon(gate, result, pay_to, record_id)
        except Exception:  # the store is down: the void was filed, or logged
            log.exception("could not record the refund of %s", result and result.guarantee_id)
        raise


def undo(gate: Gate, result: SettleResult, pay_to: str) -> bool:
    """Void ``result``'s guarantee; False when that failed and the void was filed for the
    reconciler instead (or could not be filed either: logged, the lock needs an operator)."""
    gid = result.guarantee_id
    if not gid:
        return True
    try:
        gate.facilitator.void(gid, by=pay_to)
        return True
    except Exception as exc:
        if getattr(exc, "state", None) in ("voided", "cancelled"):  # already: nothing charged
            return True
        log.exception("could not void %s; filing it for a retry", gid)
    try:
        gate.records.add_followup(gid, pay_to, "refund")
        gate._reconciler.kick()
    except Exception:
        log.exception("could not file the void of %s either", gid)
    return False


# -- settles in doubt ---------------------------------------------------------------------------


#: Seconds a remote settle's mark waits before it is voided as in doubt, at least (see
#: :func:`claim_settle`): several times the facilitator's whole-call timeout, when it has one.
SETTLE_MARK_WAIT = 60.0


def claim_settle(gate: Gate, signed: SignedGuarantee, chosen: PaymentRequirements) -> str:
    """Before a remote settle: mark its guarantee in doubt, due once the settle can no longer
    be waiting for its answer, and return its id. The answer's record removes the mark in the
    same write (a refusal removes it too); a process that dies between leaves it, and the
    reconciler, at the next start, voids the guarantee: the buyer is not charged for a
    handler that never ran (docs/operations.md, "A remote facilitator").

    A guarantee that has a follow-up already is refused: its earlier settle went unanswered
    and it is being voided, or its settle is under way in another request."""
    gid = _guarantee_id(signed, chosen)
    timeout = getattr(gate.facilitator, "timeout", None)  # HttpFacilitator's; others may not
    wait = SETTLE_MARK_WAIT
    if isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0:
        wait = max(wait, 3 * timeout)
    try:
        claimed = gate.records.claim_settle(gid, chosen.pay_to, time.time() + wait)
    except Exception as exc:  # nothing is settled without its mark: fail closed
        raise Unavailable(
            f"could not mark the payment before its settle: {type(exc).__name__}",
            reason=Reason.RECORDS_UNAVAILABLE,
        ) from exc
    if not claimed:
        raise PaymentError(
            "this payment's earlier settle went unanswered and is being voided, or is being "
            "settled now; sign a new one",
            reason=Reason.REPLAYED_REQUEST_ID,
        )
    return gid


def settling(gate: Gate, signed: SignedGuarantee, chosen: PaymentRequirements) -> bool:
    """Whether a remote settle of this guarantee waits for its answer now (its mark, not due
    yet): the payment sent again meanwhile is in progress (docs/operations.md)."""
    return gate.records.settling(_guarantee_id(signed, chosen))


def _drop_mark(gate: Gate, gid: str) -> None:
    """The settle was answered and not accepted: its mark goes (if it stays, the reconciler
    finds the guarantee not accepted, or accepted by a request of this seller that served it
    and has its record, and closes it)."""
    try:
        gate.records.drop_settle(gid)
    except Exception:
        log.exception("could not clear the settle mark of %s", gid)


def _answered_after_cancel(
    gate: Gate,
    signed: SignedGuarantee,
    chosen: PaymentRequirements,
    gid: str,
    settling: asyncio.Future[SettleResult],
) -> None:
    """The answer to a settle whose request was cancelled meanwhile, taken as any other
    (:func:`_answered`) but for two: accepted, it is voided now (its handler will not run);
    none (the settle was cancelled too: the event loop is closing), it stays in doubt."""
    try:
        result = settling.result()
    except asyncio.CancelledError:
        _answered(gate, signed, chosen, gid, _cancelled())
    except Exception as exc:
        _answered(gate, signed, chosen, gid, exc)
    else:
        answer = _cancelled() if result.success else result  # accepted by this call: void it
        _answered(gate, signed, chosen, gid, answer)


@overload
def _answered(
    gate: Gate, signed: SignedGuarantee, chosen: PaymentRequirements, gid: str, answer: SettleResult
) -> SettleResult: ...


@overload
def _answered(
    gate: Gate, signed: SignedGuarantee, chosen: PaymentRequirements, gid: str, answer: Exception
) -> Exception: ...


def _answered(
    gate: Gate,
    signed: SignedGuarantee,
    chosen: PaymentRequirements,
    gid: str,
    answer: SettleResult | Exception,
) -> SettleResult | Exception:
    """What a remote settle's answer does to its mark ``gid`` (:func:`claim_settle`), for
    every path that gets one: accepted, nothing here (the payment's record removes the mark);
    refused (a failed result, a :class:`FourmicaError`), the mark goes; unanswered
    (:class:`Unavailable`), or a facilitator that broke on its answer (any other error: it
    may have accepted), the settle is in doubt (:func:`in_doubt`).

    Returns the result, or the error the request raises (:func:`_raise`)."""
    if not isinstance(answer, Exception):  # a result (a facilitator's own, duck-typed)
        if not answer.success:
            _drop_mark(gate, gid)
        return answer
    if isinstance(answer, Unavailable):
        return in_doubt(gate, answer, signed, chosen)
    if isinstance(answer, FourmicaError):
        _drop_mark(gate, gid)
        return answer
    return in_doubt(gate, _broken(answer), signed, chosen)


def _raise(answer: Exception, error: Exception) -> NoReturn:
    """Raise ``error``, what :func:`_answered` made of a settle's ``answer`` (in the ``except``
    that caught it): a refusal as it came, an unanswered settle alone, a broken answer's
    in-doubt error over it."""
    if not isinstance(error, Unavailable):
        raise error
    raise error from (None if error is answer else answer)


def in_doubt(
    gate: Gate, error: Unavailable, signed: SignedGuarantee, chosen: PaymentRequirements
) -> Unavailable:
    """A settle that may have been accepted without an answer: file a void for it (due now,
    over its settle's mark). One that never reached the facilitator only loses its mark."""
    gid = _guarantee_id(signed, chosen)
    if not error.maybe_applied:
        _drop_mark(gate, gid)
        return error
    try:
        gate.records.add_followup(gid, chosen.pay_to, "in_doubt")
    except Exception:  # nowhere to remember it: say so loudly, the lock needs an operator
        log.exception("could not file a void for %s after an unanswered settle", gid)
        return error
    log.warning("settle of %s went unanswered (%s); it will be voided", gid, error.message)
    gate._reconciler.kick()
    return error


def _broken(exc: Exception) -> Unavailable:
    error = Unavailable(f"facilitator error: {type(exc).__name__}")
    error.maybe_applied = True
    return error


def _cancelled() -> Unavailable:
    error = Unavailable("the request was cancelled while the facilitator settled it")
    error.maybe_applied = True
    return error


def _guarantee_id(signed: SignedGuarantee, chosen: PaymentRequirements) -> str:
    claims = signed.claims
    chain_id = get_network(chosen.network).chain_id
    return "0x" + guarantee_id(chain_id, claims.tab_id, claims.req_id).hex()
