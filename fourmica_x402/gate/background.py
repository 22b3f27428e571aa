"""The reconciler: follow-ups the request path could not finish, retried in the background.

A follow-up is filed when a remote facilitator may have accepted a settle without answering
(``in_doubt``: void it), or when a refund or a delivery score could not reach the facilitator
or the database (``refund``, ``score``). The records keep them, so a restarted process picks
up what the last one left. :meth:`Reconciler.reconcile` does the due ones (``Gate.reconcile``
is the same call, for a cron job, the CLI or tests).

:func:`recover` runs when a gate on the embedded Core starts: a process that died between a
paid response and the commit of its completion left the record "settled, delivery unknown"
(docs/architecture.md, "Completion off the request path"). A G-v1 payment is kept (the
handler may have run); a G-v2 payment was never scored, so the Core cancels it at its
validation deadline and the buyer pays nothing — an ``unknown`` follow-up, due then, makes
sure of it and labels the record.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.store import StoreClosed, StoreUnavailable, Tx
from ..errors import FourmicaError, PaymentError
from ..facilitator.local import LocalFacilitator
from .challenge import DELIVERY_TAG

if TYPE_CHECKING:
    from .flow import Gate
    from .types import Paid

log = logging.getLogger("fourmica_x402.gate")


class Reconciler:
    """Does the gate's follow-ups: in a daemon thread while any are open, or when called.

    The thread runs only while follow-ups are open; it is woken at once when a new one is
    filed (:meth:`kick`), and at start-up when a previous process left some. It reads the
    gate's records and facilitator when it runs, so it follows the gate's current ones.
    """

    #: Backoff between attempts (seconds), how long "unknown guarantee" is awaited before
    #: concluding the facilitator never accepted it, and when to give up (operator's turn).
    BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
    UNKNOWN_FOR = 300.0
    GIVE_UP = 86_400.0

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Start-up recovery that met a database it could not use: run again from here.
        self._recovery: list[Callable[[], object]] = []

    def recover_later(self, recovery: Callable[[], object]) -> None:
        """Run ``recovery`` from this thread, again every few seconds while it fails (it
        puts itself back), until the database takes it."""
        self._recovery.append(recovery)
        self.kick()

    def kick(self) -> None:
        self._wake.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fourmica-reconciler", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        records = self._gate.records
        while True:
            try:
                recoveries, self._recovery = self._recovery, []
                for recovery in recoveries:  # records apart: two of them
                    recovery()
                self.reconcile()
                due = records.next_followup_due()
            except StoreClosed:  # the app closed its database: nothing more to do here
                with self._lock:
                    self._thread = None
                return
            except Exception:  # the records database may be down too: try again later
                log.exception("reconciling payments in doubt failed")
                due = time.time() + 5
            if self._recovery:  # failed again: in a few seconds
                due = min(due or math.inf, time.time() + 5)
            with self._lock:
                if due is None and not self._wake.is_set():
                    self._thread = None
                    return
            self._wake.clear()
            self._wake.wait(min(max((due or 0) - time.time(), 0.0), 5.0))

    def reconcile(self, now: float | None = None) -> dict[str, int]:
        """Do the follow-ups that are due, as far as possible now: void the guarantees whose
        settle went unanswered or whose refund failed, post the delivery scores that failed.

        Returns how many follow-ups ended in each state this call.
        """
        records, facilitator = self._gate.records, self._gate.facilitator
        now = time.time() if now is None else now
        done: dict[str, int] = {}
        for item in records.due_followups(now):
            gid, pay_to, created = item.guarantee_id, item.pay_to, item.created_at
            status, detail = "open", ""
            # a settle's mark is taken first: its answer, coming meanwhile, is then not served
            counted = item.kind == "in_doubt" and item.attempts == 0
            if counted and not records.take_due_mark(gid):
                continue  # its answer was recorded first (or another process has it)
            if item.kind == "in_doubt" and records.query(guarantee_id=gid, limit=1):
                status = "superseded"  # a later settle of the same guarantee was served
            else:
                try:
                    if item.kind == "unknown":
                        status = self._expire(gid, now)
                    elif item.kind == "score":
                        assert item.score is not None
                        facilitator.post_validation(
                            gid, validator=pay_to, score=item.score, tag=DELIVERY_TAG
                        )
                        status = "scored"
                    else:
                        facilitator.void(gid, by=pay_to)
                        status = "voided"
                except PaymentError as exc:
                    status, detail = "abandoned", exc.reason
                except FourmicaError as exc:
                    detail = exc.reason
                    unknown = exc.status == 404 or exc.reason == "unknown_guarantee"
                    state = getattr(exc, "state", None)
                    if state in ("voided", "cancelled") and item.kind != "score":
                        status = "voided"  # an earlier try went through
                    elif state == "payable" and item.kind == "score":
                        status = "scored"  # so did this one (only this validator's score)
                    elif item.kind == "score" and (
                        state == "cancelled" or exc.reason == "validation_expired"
                    ):
                        status = "score_expired"  # cancelled at its deadline: not charged
                    elif item.kind == "score" and state == "voided":
                        status = "score_voided"  # refunded meanwhile: not charged
                    elif unknown and now - created > self.UNKNOWN_FOR:
                        status = "never_accepted"
                    elif not unknown and exc.status < 500:
                        status = "abandoned"  # e.g. netted, cancelled or voided already
                except Exception as exc:
                    detail = type(exc).__name__
            if status == "open" and now - created > self.GIVE_UP:
                status = "abandoned"
            if status == "abandoned":
                log.error("gave up the %s follow-up of %s: %s", item.kind, gid, detail)
            delay = self.BACKOFF[min(item.attempts, len(self.BACKOFF) - 1)]
            next_at = now + delay if status == "open" else None
            records.update_followup(
                gid, status=status, next_at=next_at, detail=detail, counted=counted, of=item
            )
            done[status] = done.get(status, 0) + 1
        return done

    def _expire(self, guarantee_id: str, now: float) -> str:
        """An ``unknown`` follow-up: past the deadline, the Core cancels the guarantee."""
        core = self._gate.core
        if core is None:
            return "abandoned"
        core.expire_validations()
        state = core.guarantee(guarantee_id).state
        if state == "pending_validation":
            return "open"  # the Core's clock is not there yet
        outcome = "cancelled" if state == "cancelled" else None
        if outcome is not None:
            self._gate.records.label(guarantee_id, outcome)
        return "expired"


class Holds:
    """Paid responses still going out whose G-v2 guarantee this gate scores when they end
    (the delivery policy, on the embedded Core). While one lasts, its validation deadline is
    pushed back every half ``validation_timeout``: a response that outlasts the timeout (a
    long download, a buyer reading slowly) is scored when it ends, not cancelled under it
    (docs/protocol.md, "Delivery"). Half a timeout is measured by the Core's clock, which sets
    and expires the deadlines: a step of the wall clock moves both alike. A hold ends with its
    response, or when the request's state is gone; a process that dies holds nothing, and the
    deadline runs out as before.
    """

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._open: weakref.WeakValueDictionary[str, Paid] = weakref.WeakValueDictionary()
        self._since: dict[str, float] = {}  # guarantee id → when (Core's clock) it was last set
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, state: Paid) -> None:
        gid = state.payment.guarantee_id
        if gid is None or self._gate.core is None:
            return
        self._open[gid], self._since[gid] = state, self._gate.core.clock()
        with self._lock:  # the thread runs while anything is held (see _run)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fourmica-holds", daemon=True
                )
                self._thread.start()

    def discard(self, state: Paid) -> None:
        gid = state.payment.guarantee_id
        if gid is not None and self._since.pop(gid, None) is not None:
            self._open.pop(gid, None)

    def extend(self, now: float | None = None) -> int:
        """One pass: the deadlines of responses held for half a timeout or more move to now +
        the timeout. Returns how many moved."""
        core = self._gate.core
        assert core is not None
        now = core.clock() if now is None else now
        due: dict[str, list[str]] = {}
        for gid, since in list(self._since.items()):
            state = self._open.get(gid)
            if state is None:  # its request is over
                self._since.pop(gid, None)
            elif now - since >= core.config.validation_timeout / 2:
                due.setdefault(state.payment.pay_to, []).append(gid)
        moved = 0
        for validator, ids in due.items():
            moved += core.extend_validations(ids, by=validator)
            for gid in ids:
                if gid in self._since:
                    self._since[gid] = now
        return moved

    def _run(self) -> None:
        core = self._gate.core
        assert core is not None
        while True:
            time.sleep(core.config.validation_timeout / 4)
            try:
                self.extend()
            except StoreClosed:
                self._since.clear()
            except Exception:  # the database is down: the next pass tries again
                log.exception("holding paid responses' validation deadlines failed")
            with self._lock:
                if not self._since:
                    self._thread = None
                    return


def recover(gate: Gate, before: float | None = None) -> int:
    """Label the records a dead process left "settled, delivery unknown"; file a follow-up for
    each G-v2 one still awaiting its score. Returns how many records it found.

    A settle-after record is written before its settle, without the guarantee's id: one its
    completion never reached is found by its tab and request ids (its guarantee then named).
    A database that cannot take it (a full disk) has the reconciler run it again, for the
    records made ``before`` the gate started, until it can.
    """
    core = gate.core
    assert core is not None
    now = time.time()
    started = now if before is None else before
    try:
        with core.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT r.record_id, r.guarantee_id, r.pay_to, g.state, g.validation_deadline "
                "FROM fx_records r JOIN fx_guarantees g ON g.guarantee_id = r.guarantee_id "
                "WHERE r.status = 'settled' AND r.outcome IS NULL AND r.created_at < ?",
                (started,),
            )
            rows += tx.all(
                "SELECT r.record_id, g.guarantee_id, r.pay_to, g.state, g.validation_deadline "
                "FROM fx_records r JOIN fx_guarantees g ON g.tab_id = r.tab_id "
                "AND g.req_id = r.request_id AND g.recipient_address = r.pay_to "
                "WHERE r.status = 'verified' AND r.settle_mode = 'after' "
                "AND r.outcome IS NULL AND r.created_at < ?",
                (started,),
            )
            unsettled = tx.all("SELECT record_id FROM fx_records " + _UNSETTLED, (started,))
        if rows or unsettled:
            with core.store.transaction() as tx:
                for record_id, gid, pay_to, state, deadline in rows:
                    tx.execute(  # a settle-after record: settled, its guarantee named
                        "UPDATE fx_records SET status = 'settled', guarantee_id = ? "
                        "WHERE record_id = ? AND status = 'verified'",
                        (gid, record_id),
                    )
                    _recover_one(tx, now, record_id, gid, pay_to, state, deadline)
                # a settle-after handler that never got to its settle: nothing was charged,
                # and its header's replay is no longer "in progress" (docs/operations.md);
                # a sibling still serving it writes its real outcome over the label
                tx.execute(
                    "UPDATE fx_records SET outcome = 'not_charged' " + _UNSETTLED, (started,)
                )
    except StoreUnavailable as exc:  # a read-only or missing database: requests fail closed
        log.error("could not look for payments left unfinished: %s", exc)
        _again(gate, exc, lambda: recover(gate, started))
        return 0
    if rows:
        log.warning(
            "%d paid request(s) found with their delivery unknown (left by a process that "
            "stopped, or still being served by another worker on this database); G-v1 "
            "payments are labelled kept, G-v2 ones cancelled at their validation deadline "
            "unless their response completes first",
            len(rows),
        )
    return len(rows)


def _again(gate: Gate, error: Exception, recovery: Callable[[], object]) -> None:
    """A start-up recovery the database could not take now: the reconciler runs it again."""
    if not isinstance(error, StoreClosed):
        gate._reconciler.recover_later(recovery)


def recover_unsettled(gate: Gate, before: float | None = None) -> int:
    """A gate whose records are not in the embedded Core's database (a remote facilitator):
    label ``not_charged`` the settle-after records a dead process left before a settle named
    their guarantee. Killed in the handler, it charged nothing; killed while the settle was
    out, its mark voids the guarantee. Its header's replay is then no longer "in progress"
    (docs/operations.md, "A remote facilitator"); a sibling still serving one writes its real
    outcome over the label. Returns how many it labelled. A database that cannot take it (a
    full disk) has the reconciler run it again, as :func:`recover`."""
    started = time.time() if before is None else before
    try:
        with gate.records.store.transaction() as tx:
            labelled = tx.execute(
                "UPDATE fx_records SET outcome = 'not_charged' WHERE status = 'verified' "
                "AND settle_mode = 'after' AND outcome IS NULL AND guarantee_id IS NULL "
                "AND created_at < ?",
                (started,),
            )
    except StoreUnavailable as exc:  # a read-only or missing database: requests fail closed
        log.error("could not look for payments left unsettled: %s", exc)
        _again(gate, exc, lambda: recover_unsettled(gate, started))
        return 0
    return labelled


def recover_apart(gate: Gate, before: float | None = None) -> int:
    """A gate whose records are not in the embedded Core's database: label the records a dead
    process left "settled, delivery unknown" as :func:`recover` does (docs/architecture.md,
    "Completion off the request path"). Their guarantee's state says how, from the embedded
    Core; on a remote facilitator, the certificate its settle answered with: a G-v2 payment
    under the seller's delivery policy is never scored and is cancelled at its validation
    deadline, any other is kept (the handler may have run). Returns how many it found."""
    facilitator = gate.facilitator
    core = facilitator.core if isinstance(facilitator, LocalFacilitator) else None
    now = time.time()
    started = now if before is None else before
    try:
        with gate.records.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT record_id, guarantee_id, pay_to, settle_result FROM fx_records "
                "WHERE status = 'settled' AND outcome IS NULL AND guarantee_id IS NOT NULL "
                "AND created_at < ?",
                (started,),
            )
        if not rows:
            return 0
        if core is not None:  # the guarantee's state, as the embedded Core has it
            with core.store.transaction(write=False) as tx:
                found = [
                    (rid, gid, pay_to, *state)
                    for rid, gid, pay_to, _ in rows
                    for state in tx.all(
                        "SELECT state, validation_deadline FROM fx_guarantees "
                        "WHERE guarantee_id = ?",
                        (gid,),
                    )
                ]
        else:  # what the remote Core does with it: no score comes, so it cancels it at its
            # validation deadline ("cancelled"); any other stays charged ("payable": kept)
            found = [
                (rid, gid, pay_to, "cancelled" if _self_scored(result, pay_to) else "payable", None)
                for rid, gid, pay_to, result in rows
            ]
        with gate.records.store.transaction() as tx:
            for row in found:
                _recover_one(tx, now, *row)
    except StoreUnavailable as exc:  # a read-only or missing database: requests fail closed
        log.error("could not look for payments left unfinished: %s", exc)
        _again(gate, exc, lambda: recover_apart(gate, started))
        return 0
    log.warning("%d paid request(s) found with their delivery unknown", len(found))
    return len(found)


def _self_scored(settle_result: Any, pay_to: str) -> bool:
    """Whether a settle's certificate (docs/protocol.md, "Certificates") is of a G-v2
    guarantee under the seller's delivery policy (its validator ``pay_to``, its tag the
    delivery tag): one the seller's gate scores as its response ends. No certificate: no."""
    try:
        claims = bytes.fromhex(json.loads(settle_result)["extra"]["certificate"]["claims"][2:])
        tuple_ = claims[128:]  # after the version, offset and length words, and the tuple's
        # own offset: the G-v2 claims, a word each, their tag last (dynamic)
        if int.from_bytes(claims[:32], "big") != 2:
            return False
        validator = "0x" + tuple_[13 * 32 + 12 : 14 * 32].hex()
        at = int.from_bytes(tuple_[18 * 32 : 19 * 32], "big")
        size = int.from_bytes(tuple_[at : at + 32], "big")
        tag = tuple_[at + 32 : at + 32 + size].decode()
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError):
        return False
    return validator == pay_to.lower() and tag == DELIVERY_TAG


def _recover_one(
    tx: Tx, now: float, record_id: int, gid: str, pay_to: str, state: str, deadline: Any
) -> None:
    outcome = _UNKNOWN_OUTCOMES.get(state)
    if state == "payable":  # G-v1: the handler may have run; a G-v2 one scored already (its
        outcome = "kept"  # record's completion, a write of the records' own, never came)
    if outcome is not None:
        tx.execute(
            "UPDATE fx_records SET outcome = ? WHERE record_id = ? AND outcome IS NULL",
            (outcome, record_id),
        )
    elif state == "pending_validation":
        tx.execute(
            "INSERT INTO fx_followups (guarantee_id, pay_to, created_at, next_at, status, "
            "kind) VALUES (?, ?, ?, ?, 'open', 'unknown') ON CONFLICT (guarantee_id) DO NOTHING",
            (gid, pay_to, now, float(deadline)),
        )


#: Settle-after records with no guarantee for their tab and request ids (never settled).
_UNSETTLED = (
    "WHERE status = 'verified' AND settle_mode = 'after' "
    "AND outcome IS NULL AND created_at < ? AND NOT EXISTS (SELECT 1 FROM fx_guarantees g "
    "WHERE g.tab_id = fx_records.tab_id AND g.req_id = fx_records.request_id "
    "AND g.recipient_address = fx_records.pay_to)"
)

#: A record's outcome from its guarantee's state, when the delivery is unknown.
_UNKNOWN_OUTCOMES = {"cancelled": "cancelled", "voided": "refunded"}
