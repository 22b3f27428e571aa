"""After the handler: the result header, then the delivery marker, a score or a refund.

:func:`response_start` runs when the handler's response starts: it adds the result header and
``Cache-Control`` (docs/protocol.md, "Paid responses") and, in settle-after mode, settles —
a failed settle replaces the response with a 402. :func:`finish` runs when the body went out
(or did not): only a 2xx is delivered (docs/protocol.md, "Delivery"); the payment is then
scored, kept or voided, and its record completed — with the embedded Core, in one transaction
(docs/architecture.md, "The Core's transactions"). A refund or score that cannot be done now
is filed for the reconciler (:mod:`.background`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import TYPE_CHECKING, Any

from ..core.store import WouldBlock
from ..errors import FourmicaError, Unavailable
from ..evidence.request import request_hash_of
from ..facilitator import SettleResult
from ..records import Records
from ..wire import PAYMENT_RESPONSE_HEADER, X_PAYMENT_RESPONSE_HEADER, SettleResponse, encode_header
from . import after, stages
from .challenge import DELIVERY_TAG, challenge
from .drive import local_write
from .types import (
    EXPOSE_HEADERS,
    PAID_CACHE_CONTROL,
    Call,
    Flow,
    Paid,
    Payment,
    Undelivered,
    error_response,
    no_store,
)

if TYPE_CHECKING:
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")

#: What ``finish`` does to the guarantee: ``("void", 0)`` or ``("score", score)``; None: nothing.
Action = tuple[str, int] | None


def response_start(gate: Gate, state: Paid, status: int, cache_control: str | None = None) -> Flow:
    """Headers to add when the handler's response starts (or a replacement response).

    ``cache_control`` is the handler's own ``Cache-Control`` value, if any: a paid
    response is never stored by a shared cache, so the result may hold a
    ``cache-control`` header that *replaces* the handler's (adapters drop theirs then).
    In settle-after mode this is where the payment is settled: a failure replaces
    the handler's response with a 402.
    """
    headers = [("access-control-expose-headers", EXPOSE_HEADERS)]
    if not no_store(cache_control):
        headers.append(("cache-control", PAID_CACHE_CONTROL))
    if state.replay is not None:
        return headers
    result = state.result
    if result is None and 200 <= status < 300:  # settle after a successful handler
        settled = yield from after.settled(gate, state)
        if isinstance(settled, SettleResult) and not settled.success:
            state.settle_failed = settled
            yield from stages.started(gate, state, status)  # a staged job fails
            return challenge(
                gate,
                state.request,
                state.route,
                [state.requirements],
                settled.error_reason or "settle_failed",  # type: ignore[arg-type]
                version=state.payment.x402_version,
                settle=settled,
            )
        result = state.result
        if not (yield from after.hooked(gate, state)):  # settled but not to be served:
            state.refunded = yield Call(_refund, (gate, state.payment), afn=_arefund)  # given
            yield from stages.started(gate, state, 503)  # back before answering; a job fails
            return error_response(
                503, "seller_hook_failed", "the seller failed; the payment was voided"
            )
    name = PAYMENT_RESPONSE_HEADER if state.payment.x402_version == 2 else X_PAYMENT_RESPONSE_HEADER
    if result is not None and not 200 <= status < 300 and _refunds(gate, state):
        # Refunded now, before the header says so: a refund refused (a cycle netted the
        # guarantee while the handler ran) leaves the settle result in the header instead.
        state.refunded = yield Call(_refund, (gate, state.payment), afn=_arefund)
    if state.refunded in ("refunded", "refund_pending", "cancelled") and result is not None:
        refunded = SettleResponse(
            success=False,
            error_reason="refunded",
            payer=result.payer,
            transaction=result.guarantee_id or "",
            network=result.network,
        )
        headers.append((name.lower(), encode_header(refunded)))
    elif result is not None:
        certificate = state.payment._made  # only if made already: never on the hot path
        if certificate:
            response = result.to_settle_response()
            extra = dict(response.extra or {})
            extra["certificate"] = certificate
            value = encode_header(response.model_copy(update={"extra": extra}))
        else:  # the JSON the record stored
            value = base64.b64encode(result.response_json()).decode("ascii")
        headers.append((name.lower(), value))
    if state.payment.job is not None:  # staged work: the job moves on, or fails
        headers.extend((yield from stages.started(gate, state, status)))
    return headers


def finish(
    gate: Gate,
    state: Paid,
    status: int | None,
    body_hash: str | None,
    error: BaseException | None = None,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    request_body: str | None = None,
) -> Flow:
    """After the response went out: delivery marker, validation score or refund."""
    if state.replay is not None:
        return None
    gate._holds.discard(state)  # scored or voided now: no longer held open
    config, payment = gate.config, state.payment
    # Only a 2xx is delivered: a redirect, a 4xx, a 5xx, an exception or a response that
    # did not finish gave the buyer nothing it paid for (docs/protocol.md, "Delivery").
    delivered = error is None and status is not None and 200 <= status < 300
    stream = payment.stream
    if stream is not None:  # metered: slice 1 is delivered once one of its events went out
        delivered = status is not None and 200 <= status < 300 and stream.first_delivered
    outcome = "delivered" if delivered else "kept"
    action: Action = None
    if state.settle_failed is not None or state.result is None:
        outcome = "not_charged"  # settle-after: a failed handler is never charged
    elif state.refunded is not None:  # refunded (or not) as the response started
        outcome = state.refunded
    elif (_refunds(gate, state) or isinstance(error, Undelivered)) and not delivered:
        # A stage, a slice, a tool call or a 2xx judged undelivered is always refunded
        action, outcome = ("void", 0), "refunded"
    elif state.delivery_policy and payment.guarantee_version == 2:
        action = ("score", 100 if delivered else 0)
        outcome = "delivered" if delivered else "cancelled"
    try:  # the job's or stream's own state: its failure must not stop the payment's below
        if payment.job is not None:
            yield from stages.ended(gate, state, delivered)
        if stream is not None:  # ended (if its body did not end it): no more slices are sold
            yield Call(stream.ended, (outcome, status))
    except Exception:
        log.exception("could not end the job or stream of %s", payment.guarantee_id)
    certificate = payment._made  # if the handler asked for it; else the Core makes it later
    keep = None
    # A metered stream is not kept: its body holds every slice, paid for one at a time.
    if config.idempotent_replay and body is not None and outcome == "delivered" and not stream:
        # a stage names its job again; a cookie is the first caller's (docs/operations.md)
        mine = [(k, v) for k, v in headers or [] if k.lower() != "set-cookie"]
        keep = (stages.kept(payment.job, mine), body)
    record = dict(
        status="delivered" if delivered else "failed",
        http_status=status,
        response_hash=body_hash,
        # the request hash again, now covering the body the handler read (if it read it all)
        request_hash=None
        if request_body is None
        else request_hash_of(
            state.request.method, state.request.path, state.request.query, request_body
        ),
        certificate=certificate,
        response=keep,
        # Settle-before: the record got the settle result with the acceptance; settle-after
        # settles only now.
        settle_result=state.result.to_settle_response().to_dict()
        if state.result and config.settle == "after"
        else None,
    )
    if (
        config.completion_window is not None
        and config.after_delivery is None  # which must be told the outcome written
        and payment.record_id is not None
        and (action is None or gate._shared)
    ):
        _complete_later(gate, payment, action, outcome, record)
        return None
    # The local Core: on the loop when it need not wait, else one worker-thread hop for all
    # of it; remote facilitators go async.
    afn = _afinish_local if gate.core is not None else _afinish_io
    outcome = yield Call(_finish_io, (gate, payment, action, outcome, record), afn=afn)
    if config.after_delivery is not None:
        yield Call(config.after_delivery, (payment, outcome), blocking=False)
    return None


def _refunds(gate: Gate, state: Paid) -> bool:
    """Whether a response that was not delivered is refunded: with ``refund_on_error``, and
    always for a stage, a metered slice and a paid MCP tool call, whose route's price judges
    its answers (docs/protocol.md, "Delivery")."""
    payment, route = state.payment, state.route
    judged = route is not None and hasattr(route.config.price, "judge_response")
    return bool(gate.config.refund_on_error or payment.job or payment.stream or judged)


def _complete_later(
    gate: Gate, payment: Payment, action: Action, outcome: str, record: dict[str, Any]
) -> None:
    """Queue the completion: committed with this process's next write or within the window
    (docs/architecture.md, "Completion off the request path")."""
    record_id = payment.record_id
    assert record_id is not None
    record["delivered_at"] = time.time()
    if action is None:
        gate.records.finish_later(record_id, outcome=outcome, **record)
        return

    def failed(error: Exception) -> None:  # refused (netted already, say): as on the sync path
        final = _action_failed(gate, payment, action, error, outcome)
        gate.records.finish(record_id, outcome=final, **record)

    assert gate.core is not None and payment.guarantee_id is not None
    gate.core.resolve_later(
        payment.guarantee_id,
        by=payment.pay_to,
        score=None if action[0] == "void" else action[1],
        tag=DELIVERY_TAG,
        also=lambda tx: Records.complete(tx, record_id, outcome=outcome, **record),
        failed=failed,
        payer=payment.payer or "",
    )


def _refund(gate: Gate, payment: Payment) -> str:
    """Void a failed response's guarantee now; the outcome to record."""
    assert payment.guarantee_id is not None
    try:
        gate.facilitator.void(payment.guarantee_id, by=payment.pay_to)
    except Exception as exc:
        return _action_failed(gate, payment, ("void", 0), exc, "refunded")
    return "refunded"


async def _arefund(gate: Gate, payment: Payment) -> str:
    if gate.core is not None:  # the embedded Core: a short write, off the loop
        return await asyncio.to_thread(_refund, gate, payment)
    assert payment.guarantee_id is not None
    try:
        await gate.facilitator.avoid(payment.guarantee_id, by=payment.pay_to)
    except Exception as exc:
        return await asyncio.to_thread(_action_failed, gate, payment, ("void", 0), exc, "refunded")
    return "refunded"


def _finish_io(
    gate: Gate,
    payment: Payment,
    action: Action,
    outcome: str,
    record: dict[str, Any],
    nowait: bool = False,
) -> str:
    """Score or void (``action``), then complete the record; returns the outcome recorded."""
    record_id = payment.record_id
    if nowait:  # the event loop's attempt: one short write to the shared database, or none
        if record_id is None or payment.guarantee_id is None:
            raise WouldBlock("not a write the event loop may do")
        if action is None:
            gate.records.finish(record_id, outcome=outcome, nowait=True, **record)
        else:
            _resolve_and_complete(gate, payment, action, outcome, record, nowait=True)
        return outcome
    if gate._shared and action is not None and record_id is not None:
        try:
            _resolve_and_complete(gate, payment, action, outcome, record)
            return outcome
        except Exception as exc:
            outcome = _action_failed(gate, payment, action, exc, outcome)
            action = None  # record the outcome alone below
    try:
        if action is not None and action[0] == "void":
            assert payment.guarantee_id
            gate.facilitator.void(payment.guarantee_id, by=payment.pay_to)
        elif action is not None:
            assert payment.guarantee_id
            gate.facilitator.post_validation(
                payment.guarantee_id, validator=payment.pay_to, score=action[1], tag=DELIVERY_TAG
            )
    except Exception as exc:
        assert action is not None
        outcome = _action_failed(gate, payment, action, exc, outcome)
    if payment.record_id is not None:
        gate.records.finish(payment.record_id, outcome=outcome, **record)
    return outcome


async def _afinish_local(
    gate: Gate, payment: Payment, action: Action, outcome: str, record: dict[str, Any]
) -> str:
    store = gate.core.store if gate.core is not None and gate._shared else None
    return await local_write(store, _finish_io, gate, payment, action, outcome, record)


async def _afinish_io(
    gate: Gate, payment: Payment, action: Action, outcome: str, record: dict[str, Any]
) -> str:
    try:
        if action is not None and action[0] == "void":
            assert payment.guarantee_id
            await gate.facilitator.avoid(payment.guarantee_id, by=payment.pay_to)
        elif action is not None:
            assert payment.guarantee_id
            await gate.facilitator.apost_validation(
                payment.guarantee_id, validator=payment.pay_to, score=action[1], tag=DELIVERY_TAG
            )
    except Exception as exc:
        assert action is not None
        outcome = await asyncio.to_thread(_action_failed, gate, payment, action, exc, outcome)
    record_id = payment.record_id
    if record_id is not None and gate.config.completion_window is not None:
        gate.records.finish_later(record_id, outcome=outcome, **record)  # no thread hop
    elif record_id is not None:
        await asyncio.to_thread(lambda: gate.records.finish(record_id, outcome=outcome, **record))
    return outcome


def _resolve_and_complete(
    gate: Gate,
    payment: Payment,
    action: tuple[str, int],
    outcome: str,
    record: dict[str, Any],
    nowait: bool = False,
) -> None:
    """The refund or score and the record's completion, in one transaction."""
    assert gate.core is not None and payment.guarantee_id and payment.record_id is not None
    record_id = payment.record_id
    gate.core.resolve(
        payment.guarantee_id,
        by=payment.pay_to,
        score=None if action[0] == "void" else action[1],
        tag=DELIVERY_TAG,
        also=lambda tx: Records.complete(tx, record_id, outcome=outcome, **record),
        nowait=nowait,
    )


def _action_failed(
    gate: Gate, payment: Payment, action: tuple[str, int], error: Exception, outcome: str
) -> str:
    """A refund or score that did not go through: the outcome to record.

    Refused for good: a guarantee the Core has cancelled already (its validation deadline
    passed: a response that outlasted it, docs/protocol.md) is ``cancelled``, one voided
    already ``refunded`` — the buyer is not charged either way; otherwise (netted already,
    say) a refund is ``kept`` and a score leaves the outcome as it was. One that only could
    not reach the facilitator or the database is filed for the reconciler to retry:
    ``refund_pending`` then ``refunded``, or ``score_pending`` then the outcome the score makes.
    """
    log.error("%s of %s failed: %s", action[0], payment.guarantee_id, error)
    definitive = isinstance(error, FourmicaError) and not isinstance(error, Unavailable)
    if definitive or payment.guarantee_id is None:
        state = getattr(error, "state", None)
        if getattr(error, "reason", None) == "validation_expired" or state == "cancelled":
            return "cancelled"
        if state == "voided":
            return "refunded"
        return "kept" if outcome == "refunded" else outcome
    kind, pending = (
        ("refund", "refund_pending") if action[0] == "void" else ("score", "score_pending")
    )
    try:
        gate.records.add_followup(
            payment.guarantee_id,
            payment.pay_to,
            kind,
            score=None if kind == "refund" else action[1],
        )
    except Exception:
        log.exception("could not file the %s of %s for a retry", kind, payment.guarantee_id)
        return "kept" if outcome == "refunded" else outcome
    gate._reconciler.kick()
    return pending
