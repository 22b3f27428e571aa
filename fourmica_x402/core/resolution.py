"""Resolution of an accepted guarantee: a void by its recipient, a validation score, or
the validation timeout.

The gate voids an undelivered payment and, under the delivery policy, posts its score
(docs/protocol.md, "Delivery: only a 2xx is delivered"). A void is possible until the
guarantee is netted; a score of at least the claims' ``min_validation_score`` makes a
G-v2 guarantee payable (it joins the open cycle), a lower score or no score in time
cancels it. A voided or cancelled guarantee's lock is released. Every function runs
inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from .._text import has_control
from ..errors import CoreError
from . import cycles
from .collateral import release
from .common import LockClauses, guarantee_id_form, guarantee_row
from .config import CoreConfig
from .feed import Events, emit
from .store import Row, Tx

__all__ = [
    "check_score",
    "check_tag",
    "expire_validations",
    "extend",
    "resolve",
    "validate",
    "void",
]

#: The Core's clock (seconds since the epoch).
Clock = Callable[[], float]


def check_score(score: int) -> None:
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        raise CoreError("score must be an integer 0..100", reason="invalid_score", status=400)


def check_tag(tag: str) -> None:
    """A score's tag is stored as given: text without control characters (PostgreSQL refuses
    a U+0000 that SQLite would keep)."""
    if not isinstance(tag, str) or has_control(tag):
        raise CoreError(
            "tag must be a string without control characters", reason="invalid_request", status=400
        )


def _locked_guarantee(tx: Tx, guarantee_id: str, columns: str, locks: LockClauses) -> Row:
    """One guarantee row, locked for this transaction (SQLite: the write lock is held). The
    time a change is judged at is read after this: a writer that waited for the row (another
    process's, a batch of completions) must not judge a deadline by when it asked."""
    sql = f"SELECT {columns} FROM fx_guarantees WHERE guarantee_id = ?" + locks.row_lock
    return guarantee_row(tx, sql, guarantee_id)


def void(
    tx: Tx,
    events: Events,
    guarantee_id: str,
    by: str,
    clock: Clock,
    locks: LockClauses,
) -> None:
    """The recipient ``by`` voids a guarantee that is not netted yet."""
    row = _locked_guarantee(
        tx,
        guarantee_id,
        "recipient_address, network, asset, user_address, amount, state, cycle_id",
        locks,
    )
    now = clock()  # once its row is ours (see _locked_guarantee)
    if row[0] != by:
        raise CoreError(
            "only the recipient may void a guarantee", reason="not_recipient", status=403
        )
    cycle_id = row[6]
    if cycle_id is not None:
        status = tx.one(
            "SELECT status FROM fx_cycles WHERE cycle_id = ?" + locks.share_lock,
            (cycle_id,),
        )
        if status is None or status[0] != "open":
            raise CoreError(
                "guarantee is netted, it can no longer be voided", reason="invalid_state"
            )
    if not tx.execute(
        "UPDATE fx_guarantees SET state = 'voided', resolved_at = ?, cycle_id = NULL "
        "WHERE guarantee_id = ? AND state IN ('payable', 'pending_validation')",
        (now, guarantee_id),
    ):
        raise CoreError(
            f"guarantee is {row[5]}, it can no longer be voided",
            reason="invalid_state",
            state=row[5],
        )
    # The position before the cycle's pair, in the order an acceptance takes them (its lock,
    # then the pair it joins): the other order deadlocked against it on PostgreSQL.
    release(tx, row[1], row[2], row[3], int(row[4]))
    if cycle_id is not None:
        tx.execute(
            "UPDATE fx_cycle_pairs SET amount = amount - ?, guarantee_count = guarantee_count - 1 "
            "WHERE cycle_id = ? AND payer = ? AND payee = ?",
            (int(row[4]), cycle_id, row[3], row[0]),
        )
    emit(
        events,
        "guarantee.voided",
        now,
        row[1],
        row[2],
        row[3],
        guarantee_id=guarantee_id,
        amount=int(row[4]),
    )


def validate(
    tx: Tx,
    events: Events,
    guarantee_id: str,
    validator: str,
    score: int,
    tag: str,
    clock: Clock,
    config: CoreConfig,
    locks: LockClauses,
) -> None:
    """The validator named in the claims posts ``score`` for a pending G-v2 guarantee."""
    check_score(score)
    check_tag(tag)
    row = _locked_guarantee(
        tx,
        guarantee_id,
        "validator, min_score, required_tag, network, asset, user_address, amount, state, "
        "recipient_address, validation_deadline",
        locks,
    )
    now = clock()  # once its row is ours: a deadline passed while waiting for it has passed
    if row[0] is None or row[0] != validator:
        raise CoreError(
            "only the validator named in the claims may post",
            reason="not_validator",
            status=403,
        )
    if row[2] and tag != row[2]:
        raise CoreError(f"validation tag must be {row[2]!r}", reason="tag_mismatch", status=400)
    if row[7] == "pending_validation" and row[9] is not None and float(row[9]) <= now:
        # Cancelled at its deadline (docs/protocol.md), whether or not a tick ran since.
        raise CoreError(
            "the validation deadline passed: the guarantee is cancelled, not scored",
            reason="validation_expired",
            status=409,
        )
    new_state = "payable" if score >= int(row[1]) else "cancelled"
    cycle_id = None
    if new_state == "payable":
        cycle_id = cycles.join(
            tx,
            row[3],
            row[4],
            row[5],
            row[8],
            int(row[6]),
            now,
            config,
            locks,
        )
    if not tx.execute(
        "UPDATE fx_guarantees SET state = ?, score = ?, score_tag = ?, resolved_at = ?, "
        "cycle_id = ? WHERE guarantee_id = ? AND state = 'pending_validation'",
        (new_state, score, tag, now, cycle_id, guarantee_id),
    ):
        raise CoreError(
            f"guarantee is {row[7]}, not pending validation", reason="invalid_state", state=row[7]
        )
    if new_state == "cancelled":
        release(tx, row[3], row[4], row[5], int(row[6]))
    emit(
        events,
        f"guarantee.{'validated' if new_state == 'payable' else 'cancelled'}",
        now,
        row[3],
        row[4],
        row[5],
        guarantee_id=guarantee_id,
        score=score,
    )


def expire_validations(tx: Tx, events: Events, now: float) -> int:
    """Cancel every G-v2 guarantee whose validation deadline passed. Returns how many."""
    expired = 0
    releases: dict[tuple[str, str, str], int] = {}
    # Guarantees first, in one order, then the positions, in one order: a void or a score
    # locks its guarantee and then its position, so neither waits on what the other holds.
    # Sorted here, not by the query: SQLite would rather read every guarantee ever accepted
    # in the unique index's order than sort the few pending ones (docs/operations.md, "Operator
    # settings": a tick's cost follows what falls due).
    pending = tx.all(
        "SELECT guarantee_id, network, asset, user_address, amount FROM fx_guarantees "
        "WHERE state = 'pending_validation' AND validation_deadline <= ?",
        (now,),
    )
    for gid, network, asset, user, amount in sorted(pending, key=lambda r: str(r[0])):
        # The deadline again: a validator's extension that committed since the SELECT stands.
        if tx.execute(
            "UPDATE fx_guarantees SET state = 'cancelled', resolved_at = ? WHERE guarantee_id = ? "
            "AND state = 'pending_validation' AND validation_deadline <= ?",
            (now, gid, now),
        ):
            key = (network, asset, user)
            releases[key] = releases.get(key, 0) + int(amount)
            expired += 1
            emit(
                events,
                "guarantee.cancelled",
                now,
                network,
                asset,
                user,
                guarantee_id=gid,
                reason="validation_timeout",
            )
    for (network, asset, user), amount in sorted(releases.items()):
        release(tx, network, asset, user, amount)
    return expired


def extend(
    tx: Tx,
    events: Events,
    guarantee_ids: list[str],
    validator: str,
    clock: Clock,
    timeout: float,
    locks: LockClauses,
) -> int:
    """Push the validation deadline of the pending guarantees ``validator`` scores back to
    now + ``timeout`` (never earlier): their paid responses are still going out. One whose
    deadline passed already (judged once their rows are ours) stays expired. Returns how many
    moved. In the expiry's order (:func:`expire_validations`), so the two never wait on each
    other's rows."""
    ids = sorted({gid for gid in guarantee_ids if guarantee_id_form(gid)})  # others name none
    for gid in ids:
        tx.one("SELECT 1 FROM fx_guarantees WHERE guarantee_id = ?" + locks.row_lock, (gid,))
    now = clock()
    until = now + timeout
    return sum(
        tx.execute(
            "UPDATE fx_guarantees SET validation_deadline = ? WHERE guarantee_id = ? "
            "AND state = 'pending_validation' AND validator = ? AND validation_deadline < ? "
            "AND validation_deadline > ?",
            (until, gid, validator, until, now),
        )
        for gid in ids
    )


def resolve(
    tx: Tx,
    events: Events,
    guarantee_id: str,
    by: str,
    score: int | None,
    tag: str,
    clock: Clock,
    config: CoreConfig,
    locks: LockClauses,
) -> None:
    """:func:`void` (``score`` None, ``by`` the recipient) or :func:`validate` (``by`` the validator)."""
    if score is None:
        void(tx, events, guarantee_id, by, clock, locks)
    else:
        validate(tx, events, guarantee_id, by, score, tag, clock, config, locks)
