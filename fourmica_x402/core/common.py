"""What the Core's topic modules share: amounts, ids, refusals."""

from __future__ import annotations

from typing import Protocol

from ..errors import CoreError, GuaranteeRejected, Reason

__all__ = ["INT64_MAX", "LockClauses", "check_amount", "hex_id", "rejected", "row_id"]

#: Amounts and balances are BIGINT columns.
INT64_MAX = (1 << 63) - 1


class LockClauses(Protocol):
    """What a topic function may use of the store: its row-lock clauses, appended to a
    SELECT (``FOR SHARE`` / ``FOR UPDATE`` on PostgreSQL; empty on SQLite, whose writers
    are serialised). The Core passes its store; a topic function never opens a transaction."""

    @property
    def share_lock(self) -> str: ...

    @property
    def row_lock(self) -> str: ...


def hex_id(value: int) -> str:
    """A 256-bit id (tab, request) as it is stored: too wide for a BIGINT column."""
    return hex(value)


def row_id(value: int) -> bool:
    """Whether ``value`` may be a row's id (a BIGINT column): one no column can hold names
    no row, and the SQLite driver would refuse to bind it (an OverflowError)."""
    return 0 <= value <= INT64_MAX


def check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= INT64_MAX:
        raise CoreError(
            "amount must be a positive integer of atomic units", reason="invalid_amount", status=400
        )


def rejected(reason: Reason, message: str | None = None) -> GuaranteeRejected:
    return GuaranteeRejected(message, reason=reason)
