"""Withdrawals: a request lowers capacity at once; the collateral leaves after the grace
period, and only if what stays still covers the position's locks. Every function runs
inside the caller's transaction.
"""

from __future__ import annotations

import math
from fractions import Fraction

from ..errors import CoreError
from .collateral import factor, lock_position, record_flow, set_collateral
from .common import row_id
from .feed import Events, emit
from .models import Withdrawal
from .queries import WITHDRAWAL_COLUMNS, withdrawal_from_row
from .store import Tx

__all__ = ["cancel", "finalize", "request"]


def _free(collateral: int, limit: int, locked: int, pending: int, value: Fraction) -> int:
    """How much collateral a new withdrawal may reserve: the capacity (the credit limit less
    the locks and the pending withdrawals), never more than the collateral not yet reserved.
    Under a factor below 1 the capacity is less than the collateral that backs it, so that
    rule alone would keep part of every position for good (a position of 1 unit at 1/2 has
    none): there, the collateral may go as long as what stays after every pending
    withdrawal still backs the locks (``floor(stays × factor) ≥ locked``)."""
    unreserved = collateral - pending
    free = min(limit - locked, collateral) - pending
    if value < 1 and unreserved > 0:
        needed = math.ceil(locked / value)  # the least collateral whose credit covers the locks
        free = max(free, unreserved - needed)
    return max(min(free, unreserved), 0)


def _covered(remaining: int, locked: int, others: int, value: Fraction) -> bool:
    """Whether ``remaining`` collateral, once a withdrawal leaves, still covers the locks and
    the ``others`` pending withdrawals: its credit covers them 1:1 (the capacity rule), or,
    under a factor below 1, what stays after the others leave backs the locks (see
    :func:`_free`)."""
    if remaining < 0:
        return False
    if int(remaining * value) >= locked + others:
        return True
    return value < 1 and remaining >= others and int((remaining - others) * value) >= locked


def request(
    tx: Tx,
    events: Events,
    network: str,
    asset: str,
    address: str,
    amount: int,
    now: float,
    grace: float,
) -> int:
    """Reserve ``amount`` of free collateral for a withdrawal. Returns its id."""
    value = factor(tx, network, asset)  # before the position: see collateral.factor
    # No-op update: row-locks the position, if there is one, for the rest of the transaction.
    row = tx.one(
        "UPDATE fx_positions SET collateral = collateral WHERE network = ? AND asset = ? "
        "AND address = ? RETURNING collateral, credit_limit, locked, pending_withdrawal",
        (network, asset, address),
    )
    collateral, limit, locked, pending = (int(v) for v in row) if row else (0, 0, 0, 0)
    free = _free(collateral, limit, locked, pending, value)
    if amount > free:
        raise CoreError(  # the amounts, so the caller knows how far off it is
            f"not enough free collateral: {amount} asked, {free} free (atomic units)",
            reason="insufficient_collateral",
        )
    tx.execute(
        "UPDATE fx_positions SET pending_withdrawal = pending_withdrawal + ? WHERE network = ? "
        "AND asset = ? AND address = ?",
        (amount, network, asset, address),
    )
    row = tx.one(
        "INSERT INTO fx_withdrawals (network, asset, address, amount, requested_at, available_at, "
        "status) VALUES (?, ?, ?, ?, ?, ?, 'pending') RETURNING withdrawal_id",
        (network, asset, address, amount, now, now + grace),
    )
    assert row is not None
    emit(
        events,
        "withdrawal.requested",
        now,
        network,
        asset,
        address,
        withdrawal_id=int(row[0]),
        amount=amount,
    )
    return int(row[0])


def _pending(tx: Tx, withdrawal_id: int) -> Withdrawal:
    # No-op update: row-locks the withdrawal for the rest of the transaction (PostgreSQL).
    row = (
        tx.one(
            f"UPDATE fx_withdrawals SET status = status WHERE withdrawal_id = ? RETURNING {WITHDRAWAL_COLUMNS}",
            (withdrawal_id,),
        )
        if row_id(withdrawal_id)
        else None
    )
    if row is None:
        raise CoreError(f"no withdrawal {withdrawal_id}", reason="unknown_withdrawal", status=404)
    w = withdrawal_from_row(row)
    if w.status != "pending":
        raise CoreError(f"withdrawal is {w.status}", reason="invalid_state")
    return w


def cancel(tx: Tx, withdrawal_id: int, now: float) -> None:
    w = _pending(tx, withdrawal_id)
    tx.execute(
        "UPDATE fx_withdrawals SET status = 'cancelled', finished_at = ? WHERE withdrawal_id = ?",
        (now, withdrawal_id),
    )
    tx.execute(
        "UPDATE fx_positions SET pending_withdrawal = pending_withdrawal - ? WHERE network = ? "
        "AND asset = ? AND address = ?",
        (w.amount, w.network, w.asset, w.address),
    )


def finalize(tx: Tx, events: Events, withdrawal_id: int, now: float) -> None:
    """Pay out a pending withdrawal whose grace period has passed."""
    w = _pending(tx, withdrawal_id)
    if now < w.available_at:
        raise CoreError("the grace period has not passed", reason="withdrawal_not_ready")
    value = factor(tx, w.network, w.asset)  # before the position: see collateral.factor
    collateral, _, locked, pending = lock_position(tx, w.network, w.asset, w.address)
    remaining = collateral - w.amount
    if not _covered(remaining, locked, pending - w.amount, value):
        raise CoreError(
            "what would remain does not cover the locked amount and the other pending withdrawals",
            reason="withdrawal_unsafe",
        )
    set_collateral(tx, w.network, w.asset, w.address, remaining, value)
    tx.execute(
        "UPDATE fx_positions SET pending_withdrawal = pending_withdrawal - ? WHERE network = ? "
        "AND asset = ? AND address = ?",
        (w.amount, w.network, w.asset, w.address),
    )
    tx.execute(
        "UPDATE fx_withdrawals SET status = 'finalized', finished_at = ? WHERE withdrawal_id = ?",
        (now, withdrawal_id),
    )
    record_flow(tx, "withdrawal", w.network, w.asset, w.address, w.amount, now, str(withdrawal_id))
    emit(
        events,
        "withdrawal.finalized",
        now,
        w.network,
        w.asset,
        w.address,
        withdrawal_id=withdrawal_id,
        amount=w.amount,
    )
