"""Staged work in the gate: admit a stage before payment, tie the paid request to its job,
move the job on or fail it as the response starts (docs/protocol.md, "Staged work").

- :func:`admit` runs before the challenge and again once the payer is known, before settling:
  a later stage without its job, out of order, of another payer or of a failed job is refused
  with a 4xx and nothing is asked for or locked (a payment sent again, with idempotent
  replay, goes on to its recorded response);
- :func:`claim` runs once the stage is paid: stage 1 opens the job, a later stage marks
  itself running (a concurrent request that lost the race gets its payment voided, 409);
- :func:`started` runs when the response starts: a 2xx moves the job on, anything else
  fails it (the stage is refunded by :func:`.deliver.finish`); :func:`ended` fails it when a
  2xx response then broke off;
- :func:`extra` tells the buyer, in the requirements, which stage it pays for and what the
  stages after it cost, so a buyer can refuse a job its budget cannot finish.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ..jobs import JOB_HEADER, STAGE_HEADER, JobStage, Stage
from ..wire import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER
from .types import Call, Flow, Paid, Payment, RequestView, Response, error_response

if TYPE_CHECKING:
    from ..routes import Route
    from .flow import Gate

#: Each refusal's status and what it tells the buyer.
REFUSALS: dict[str, tuple[int, str]] = {
    "job_required": (400, "a later stage needs the Job-Id header of the job stage 1 opened"),
    "unknown_job": (404, "no such job for this stage"),
    "job_not_yours": (403, "the job belongs to another payer"),
    "job_failed": (409, "the job failed at an earlier stage; its later stages are not sold"),
    "stage_done": (409, "this stage of the job was already served"),
    "stage_out_of_order": (409, "the job's earlier stages are not done"),
    "stage_in_progress": (409, "this stage of the job is being served"),
}


def refusal(reason: str, stage: Stage) -> Response:
    status, message = REFUSALS[reason]
    return error_response(status, reason, f"{message} ({stage.job} stage {stage.number})")


def admit(gate: Gate, stage: Stage, request: RequestView, payer: str | None = None) -> Flow:
    """None when stage ``stage`` may be paid for; else the :class:`Response` refusing it."""
    if stage.number == 1:
        return None
    job_id = request.header(JOB_HEADER)
    if not job_id:
        return refusal("job_required", stage)
    why = yield Call(gate.jobs.refusal, (job_id.strip(), stage, payer, _sellers(gate, stage)))
    if why is not None and payer is None and (yield from _replaying(gate, request)):
        return None  # a payment sent again: its recorded response answers it (pay.paid)
    return None if why is None else refusal(why, stage)


def _replaying(gate: Gate, request: RequestView) -> Flow:
    """Whether the request's payment header was recorded before, with idempotent replay on:
    the stage it paid for was served already, and its response is replayed, not refused."""
    values = request.header_values(PAYMENT_SIGNATURE_HEADER)
    values += request.header_values(X_PAYMENT_HEADER)
    if not gate.config.idempotent_replay or len(values) != 1:
        return False
    digest = hashlib.sha256(values[0].encode("ascii", "replace")).hexdigest()
    return (yield Call(gate.records.by_header, (digest,))) is not None


def claim(gate: Gate, stage: Stage, request: RequestView, payment: Payment) -> Flow:
    """Tie the paid request to its job (``payment.job``); a :class:`Response` when it lost
    the stage to a concurrent request (the caller voids the payment)."""
    if stage.number == 1:
        opened = (stage, payment.payer, payment.guarantee_id, payment.amount, payment.pay_to)
        job = yield Call(gate.jobs.open, opened)
    else:
        job_id = (request.header(JOB_HEADER) or "").strip()
        args = (job_id, stage, payment.payer, payment.guarantee_id, payment.amount)
        job = yield Call(gate.jobs.claim, (*args, _sellers(gate, stage)))
        if isinstance(job, str):
            return refusal(job, stage)
    payment.job = job
    return None


def started(gate: Gate, state: Paid, status: int) -> Flow:
    """The stage's response starts: the headers naming its job; the job fails at once when
    it is no 2xx (or its settle failed), and otherwise stays running until it ends."""
    job: JobStage | None = state.payment.job
    if job is None or state.replay is not None:
        return []
    if not 200 <= status < 300 or state.settle_failed is not None:
        yield Call(gate.jobs.failed, (job, state.payment.guarantee_id))
    return headers(job)


def headers(job: JobStage) -> list[tuple[str, str]]:
    """The response headers naming a stage's job (kept with its response for a replay)."""
    return [(JOB_HEADER, job.id), (STAGE_HEADER, f"{job.stage}/{job.of}")]


def kept(job: JobStage | None, handlers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers to keep for an idempotent replay: the handler's, and the job's as the gate
    answered them (replacing any the handler set)."""
    if job is None:
        return handlers
    own = [h for h in handlers if h[0].lower() not in (JOB_HEADER, STAGE_HEADER)]
    return own + headers(job)


def ended(gate: Gate, state: Paid, delivered: bool) -> Flow:
    """The stage's response ended: delivered whole, the job moves on (the last stage closes
    it); else the job fails. Not before: a next stage sold while this one still streamed
    would stand even if this one broke off (docs/protocol.md, "Staged work")."""
    job: JobStage | None = state.payment.job
    if job is not None and state.replay is None:
        moved = gate.jobs.delivered if delivered else gate.jobs.failed  # settle-after: now
        yield Call(moved, (job, state.payment.guarantee_id))  # its guarantee is known


def extra(gate: Gate, route: Route, network: str, asset: str) -> dict[str, Any]:
    """``extra.stage``: the job, this stage's number and count, and (when every later stage
    has a fixed price in this network and asset) ``ahead``, what the later stages cost."""
    stage = route.config.stage
    assert stage is not None
    out: dict[str, Any] = {"job": stage.job, "stage": stage.number, "of": stage.of}
    prices: dict[int, int] = {}
    for other in _routes(gate):
        theirs = other.config.stage
        if theirs is None or theirs.job != stage.job or theirs.number <= stage.number:
            continue
        for i, offer in enumerate(other.offers):
            amount = offer.amount
            if (
                amount is not None
                and offer.network == network
                and amount.asset.lower() == asset.lower()
                and other.config.units is None
            ):
                fixed = amount.amount if other.terms is None else _charged(other, i, amount.amount)
                prices.setdefault(theirs.number, fixed)
                break
    if len(prices) == stage.of - stage.number:
        out["ahead"] = str(sum(prices.values()))
    return out


def _charged(route: Route, offer: int, amount: int) -> int:
    """A fixed stage price raised to its minimum, or its cap: those of offer number ``offer``
    (each offer's in its own asset)."""
    assert route.terms is not None
    terms = route.terms[offer]
    if terms.cap is not None:
        return terms.cap
    return max(amount, terms.minimum or 0)


def _sellers(gate: Gate, stage: Stage) -> frozenset[str] | None:
    """The payTo addresses this seller's stage 1 of ``stage``'s job is paid to (None when one
    is worked out per request): a job opened by another seller sharing the database, with a
    job of the same name, is not this seller's to go on with (docs/protocol.md)."""
    found: set[str] = set()
    for route in _routes(gate):
        theirs = route.config.stage
        if theirs is not None and theirs.job == stage.job and theirs.number == 1:
            for offer in route.offers:
                if not isinstance(offer.pay_to, str):
                    return None
                found.add(offer.pay_to.lower())
    return frozenset(found) if found else None


def _routes(gate: Gate) -> list[Route]:
    """The table's routes and the per-handler markers' the gate priced."""
    found = list(gate.routes.routes)
    for endpoint in gate.endpoints or ():
        gate.routes.prepare(endpoint)  # at the prices in force (a reprice rebuilds markers late)
        priced = endpoint._priced.get("*")
        if priced is not None and priced[1] is not None:
            found.append(priced[1])
    return found
