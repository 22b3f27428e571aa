"""Follow-ups of the payment records: voids and delivery scores the facilitator could not
take at once, retried by the gate's reconciler (docs/operations.md, "A remote facilitator"),
and the mark a remote settle leaves while it waits for its answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .core.store import Store, StoreUnavailable, Tx
from .core.store.deferred import Task

__all__ = ["DONE", "DROP_MARK", "Followup", "Followups"]

#: A closed follow-up: (the outcome waiting for it, the one it makes; None: by the status).
DONE = {
    "voided": ("refund_pending", "refunded"),
    "scored": ("score_pending", None),
    # a score the Core refused: the guarantee was cancelled at its validation deadline first,
    # or voided (refunded) first; the buyer is not charged either way
    "score_expired": ("score_pending", "cancelled"),
    "score_voided": ("score_pending", "refunded"),
    "abandoned": ("refund_pending", "kept"),
}


#: A remote settle's mark removed: its answer is recorded (see ``claim_settle``).
DROP_MARK = (
    "DELETE FROM fx_followups WHERE guarantee_id = ? AND kind = 'in_doubt' "
    "AND status = 'open' AND attempts = 0"
)


#: The reconciler's hold on a mark that came due (see ``take_due_mark``): no longer a mark.
TAKE_MARK = (
    "UPDATE fx_followups SET attempts = 1 WHERE guarantee_id = ? AND kind = 'in_doubt' "
    "AND status = 'open' AND attempts = 0"
)


class MarkTaken(Exception):
    """A remote settle's mark came due and was acted on before its answer was recorded (the
    wall clock stepped forward, or the settle outlasted its wait): the reconciler voids the
    guarantee, so the payment is not served."""


def take_mark(tx: Tx, guarantee_id: str) -> None:
    """Remove a remote settle's mark as its answer is recorded in ``tx``; :class:`MarkTaken`
    when the reconciler has had it (any follow-up of the guarantee is left)."""
    if not tx.execute(DROP_MARK, (guarantee_id,)) and tx.one(
        "SELECT 1 FROM fx_followups WHERE guarantee_id = ?", (guarantee_id,)
    ):
        raise MarkTaken(f"the settle of {guarantee_id} came due before its answer was recorded")


@dataclass(frozen=True)
class Followup:
    """A void or delivery score to retry (see :meth:`Followups.add_followup`)."""

    guarantee_id: str
    pay_to: str
    attempts: int
    created_at: float
    kind: str  # in_doubt | refund | score | unknown
    score: int | None


class Followups:
    """The ``fx_followups`` table of :class:`~fourmica_x402.records.Records` (its database)."""

    store: Store

    def add_followup(
        self, guarantee_id: str, pay_to: str, kind: str, score: int | None = None
    ) -> None:
        """Remember to act on a guarantee later (the gate's reconciler does):

        - ``in_doubt``: void it (its settle may have been accepted without an answer);
        - ``refund``: void it (its handler failed and the refund did not go through);
        - ``score``: post ``score`` as its delivery validation (the post did not go through).

        One follow-up per guarantee: an open one stays as it is, but for an open ``in_doubt``
        (a settle's mark, :meth:`claim_settle`), which an ``in_doubt`` makes due now and a
        ``refund`` replaces (the request was cancelled while its record was written: the mark
        goes with that record, the refund stays), and an open ``unknown`` (a starting worker's
        label on a record another worker was still serving), which that worker's ``score`` or
        ``refund`` replaces: it knows how the response ended; a closed one (say an ``in_doubt`` of a
        replayed header, superseded by this payment's own run) is opened again for this new
        action.

        A database that cannot take it now (locked past its busy timeout, full) gets it from
        this process's deferred writes, which retry until it is written; a process that dies
        first loses it, as a crash does (docs/operations.md, "Stopping and crashes").
        """
        now = time.time()
        try:
            with self.store.transaction() as tx:
                _file(tx, guarantee_id, pay_to, kind, score, now)
        except StoreUnavailable:
            self.store.deferred.submit(
                Task(lambda tx: _file(tx, guarantee_id, pay_to, kind, score, now))
            )

    def claim_settle(self, guarantee_id: str, pay_to: str, due: float) -> bool:
        """Before a remote settle: mark the guarantee ``in_doubt``, due at ``due`` (after the
        settle's longest wait), so that a process that dies before the answer is recorded
        leaves a void for the next one. False, and nothing written, when the guarantee has a
        follow-up already (its earlier settle went unanswered, or one is under way)."""
        with self.store.transaction() as tx:
            return bool(
                tx.execute(
                    "INSERT INTO fx_followups (guarantee_id, pay_to, created_at, next_at, "
                    "status, kind) VALUES (?, ?, ?, ?, 'open', 'in_doubt') "
                    "ON CONFLICT (guarantee_id) DO NOTHING",
                    (guarantee_id, pay_to, time.time(), due),
                )
            )

    def settling(self, guarantee_id: str) -> bool:
        """Whether a remote settle of the guarantee waits for its answer now: its mark
        (:meth:`claim_settle`), not due yet (an unanswered settle's is due at once)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT 1 FROM fx_followups WHERE guarantee_id = ? AND kind = 'in_doubt' "
                "AND status = 'open' AND attempts = 0 AND next_at > ?",
                (guarantee_id, time.time()),
            )
        return row is not None

    def take_due_mark(self, guarantee_id: str) -> bool:
        """The reconciler takes a settle's mark that came due before it acts on it (counting
        the attempt): from then on its answer finds it taken (:func:`take_mark`). False when
        the answer was recorded first, or another process took it."""
        with self.store.transaction() as tx:
            return bool(tx.execute(TAKE_MARK, (guarantee_id,)))

    def drop_settle(self, guarantee_id: str, tx: Tx | None = None) -> None:
        """The settle's answer came (its record is written in ``tx``, or it was refused):
        its mark goes."""
        if tx is not None:
            tx.execute(DROP_MARK, (guarantee_id,))
            return
        with self.store.transaction() as own:
            own.execute(DROP_MARK, (guarantee_id,))

    def followup(self, guarantee_id: str) -> tuple[str, int, str | None] | None:
        """(status, attempts, detail) of a guarantee's follow-up, or None."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT status, attempts, detail FROM fx_followups WHERE guarantee_id = ?",
                (guarantee_id,),
            )
        return None if row is None else (row[0], int(row[1]), row[2])

    def due_followups(self, now: float, limit: int = 100) -> list[Followup]:
        """Open follow-ups due by ``now``, oldest due first."""
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT guarantee_id, pay_to, attempts, created_at, kind, score FROM fx_followups "
                "WHERE status = 'open' AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            )
        return [
            Followup(r[0], r[1], int(r[2]), float(r[3]), r[4], None if r[5] is None else int(r[5]))
            for r in rows
        ]

    def next_followup_due(self) -> float | None:
        """When the next open follow-up is due (None: nothing open)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one("SELECT MIN(next_at) FROM fx_followups WHERE status = 'open'")
        return None if row is None or row[0] is None else float(row[0])

    def update_followup(
        self,
        guarantee_id: str,
        *,
        status: str,
        next_at: float | None = None,
        detail: str = "",
        counted: bool = False,
        of: Followup | None = None,
    ) -> None:
        """Count an attempt; ``status`` 'open' reschedules at ``next_at``, others close it.

        A refund or score that went through, or a refund given up (``kept``, netted meanwhile),
        updates the payment's record in the same write. ``counted``: the attempt was counted as
        it began (:meth:`take_due_mark`). ``of``: the follow-up as it was read; one filed in
        its place meanwhile (:meth:`add_followup`: a refund for a mark) is left as it is."""
        same, args = "", [status, 0 if counted else 1, next_at, detail, guarantee_id]
        if of is not None:
            same, args = " AND kind = ? AND created_at = ?", [*args, of.kind, of.created_at]
        with self.store.transaction() as tx:
            if not tx.execute(
                "UPDATE fx_followups SET status = ?, attempts = attempts + ?, "
                "next_at = COALESCE(?, next_at), detail = ? WHERE guarantee_id = ?" + same,
                tuple(args),
            ):
                return
            if status in DONE:
                pending, final = DONE[status]
                tx.execute(
                    "UPDATE fx_records SET outcome = COALESCE(?, CASE WHEN status = 'delivered' "
                    "THEN 'delivered' ELSE 'cancelled' END) "
                    "WHERE guarantee_id = ? AND outcome = ?",
                    (final, guarantee_id, pending),
                )


def _file(tx: Tx, guarantee_id: str, pay_to: str, kind: str, score: int | None, now: float) -> None:
    tx.execute(
        "INSERT INTO fx_followups (guarantee_id, pay_to, created_at, next_at, status, "
        "kind, score) VALUES (?, ?, ?, ?, 'open', ?, ?) "
        "ON CONFLICT (guarantee_id) DO UPDATE SET pay_to = excluded.pay_to, "
        "created_at = excluded.created_at, next_at = excluded.next_at, status = 'open', "
        "attempts = 0, detail = NULL, kind = excluded.kind, score = excluded.score "
        "WHERE fx_followups.status <> 'open' OR (fx_followups.kind = 'in_doubt' "
        "AND excluded.kind IN ('in_doubt', 'refund')) OR (fx_followups.kind = "
        "'unknown' AND excluded.kind IN ('score', 'refund'))",
        (guarantee_id, pay_to, now, now, kind, score),
    )
