"""What the Core's topic modules share: amounts, ids, refusals."""

from __future__ import annotations

import re
from typing import Protocol

from ..errors import CoreError, GuaranteeRejected, Reason
from .store import Row, Tx

__all__ = [
    "INT64_MAX",
    "LockClauses",
    "check_amount",
    "guarantee_id_form",
    "guarantee_row",
    "hex_id",
    "rejected",
    "row_id",
]

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


#: A guarantee id as the Core stores it: ``0x`` and 64 lowercase hex digits.
_GUARANTEE_ID = re.compile(r"0x[0-9a-f]{64}\Z")


def guarantee_id_form(guarantee_id: object) -> bool:
    """Whether ``guarantee_id`` is written as the Core stores guarantee ids."""
    return isinstance(guarantee_id, str) and _GUARANTEE_ID.match(guarantee_id) is not None


def guarantee_row(tx: Tx, sql: str, guarantee_id: str) -> Row:
    """The row of ``sql`` (a SELECT with one ``?``, the id) for one guarantee, or
    ``unknown_guarantee`` (404). An id not written as the Core stores them names none and is
    refused without a query: the database is never handed text it may refuse (PostgreSQL, a
    U+0000), so every store answers it the same."""
    row = tx.one(sql, (guarantee_id,)) if guarantee_id_form(guarantee_id) else None
    if row is None:
        raise CoreError(
            f"no guarantee {guarantee_id!r:.80}", reason="unknown_guarantee", status=404
        )
    return row


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
