"""Where a :class:`~.policy.SpendingPolicy` keeps what was spent: in the object, or in a ledger.

A *book* holds one row per approved payment (time, seller, asset, amount, task, state):
``reserved`` when the policy said yes, ``committed`` once the signed guarantee left, deleted
when the payment never happened. Unsettled guarantees count, whatever a seller said became of
them (docs/buyer.md, "Budgets").

:class:`LedgerBook` keeps the rows in the receipts ledger's SQLite file. The policy's whole
decision — read the totals, compare with the caps, reserve — runs inside one
``BEGIN IMMEDIATE`` transaction, which SQLite grants to one connection at a time across every
process on the file: two agents sharing a budget can never both take its last unit, and an
agent restarted on the same file finds its spending there.

A reservation left ``reserved`` by a process that died between approving and signing keeps
counting: whether its guarantee left cannot be known, so the budget errs on the safe side.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .receipts import ReceiptLedger

__all__ = ["Book", "LedgerBook", "MemoryBook"]


class Book(Protocol):
    """What the policy reads and writes while it decides (inside :meth:`hold`)."""

    def hold(self) -> contextlib.AbstractContextManager[Book]:
        """The book, held for one decision: reads and the reservation are one unit."""
        ...

    def spent(
        self, since: float, assets: Collection[str], *, seller: str | None = None
    ) -> dict[str, int]:
        """Atomic units spent or reserved since ``since``, per asset of ``assets``."""
        ...

    def task_used(self, task: str, assets: Collection[str]) -> dict[str, int] | None:
        """A task's spending by name, per asset, or None when tasks are tallied by their objects."""
        ...

    def paid_before(self, seller: str) -> bool: ...

    def reserve(self, at: float, seller: str, asset: str, amount: int, tasks: Sequence[str]) -> int:
        """Reserve ``amount``; ``tasks``: the names it spends under, innermost first."""
        ...

    def commit(self, reservation: int) -> None: ...

    def release(self, reservation: int) -> None: ...


class MemoryBook:
    """The rows in this object (the policy's lock guards them).

    A committed row older than a day (the longest window) is folded into a total per seller,
    asset and hour, so a buyer running for months holds a bounded number of rows; a total
    counts when its hour ends after ``since`` (to the hour, on the safe side; docs/buyer.md).
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._rows: dict[int, tuple[float, str, str, int]] = {}  # id -> at, seller, asset, amount
        self._committed: set[int] = set()
        self._hours: dict[tuple[int, str, str], int] = {}  # (hour, seller, asset) -> amount
        self._paid: set[str] = set()

    @contextlib.contextmanager
    def hold(self) -> Iterator[MemoryBook]:
        yield self

    def spent(
        self, since: float, assets: Collection[str], *, seller: str | None = None
    ) -> dict[str, int]:
        totals = dict.fromkeys(assets, 0)
        for at, who, token, amount in self._rows.values():
            if at >= since and token in totals and (seller is None or who == seller):
                totals[token] += amount
        for (hour, who, token), amount in self._hours.items():
            if (hour + 1) * _HOUR > since and token in totals and seller in (None, who):
                totals[token] += amount
        return totals

    def task_used(self, task: str, assets: Collection[str]) -> dict[str, int] | None:
        return None

    def paid_before(self, seller: str) -> bool:
        return seller in self._paid

    def reserve(self, at: float, seller: str, asset: str, amount: int, tasks: Sequence[str]) -> int:
        self._fold(at - _KEEP)
        rid = next(self._ids)
        self._rows[rid] = (at, seller, asset, amount)
        return rid

    def commit(self, reservation: int) -> None:
        if reservation in self._rows:
            self._committed.add(reservation)
            self._paid.add(self._rows[reservation][1])

    def release(self, reservation: int) -> None:
        if reservation not in self._committed:
            self._rows.pop(reservation, None)

    def _fold(self, before: float) -> None:
        """Fold the committed rows older than ``before`` into the hourly totals (the rows are
        in the order they were reserved; an uncommitted one stays until it is settled)."""
        old = []
        for rid, row in self._rows.items():
            if row[0] >= before:
                break
            if rid in self._committed:
                old.append(rid)
        for rid in old:
            at, seller, asset, amount = self._rows.pop(rid)
            self._committed.discard(rid)
            key = (int(at // _HOUR), seller, asset)
            self._hours[key] = self._hours.get(key, 0) + amount


_HOUR = 3_600.0
_KEEP = 86_400.0  # the longest window a policy counts (per_day)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spending (reservation_id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "at REAL NOT NULL, seller TEXT NOT NULL, asset TEXT NOT NULL, amount TEXT NOT NULL, "
    "task TEXT, state TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS spending_asset_at ON spending (asset, at)",
    "CREATE INDEX IF NOT EXISTS spending_task ON spending (task, asset)",
    # a seller's own rows (the per-seller cap, "paid this seller before"), not every seller's
    "CREATE INDEX IF NOT EXISTS spending_seller ON spending (seller, asset, at)",
    # the outer tasks a reservation also spends under (``task`` holds the innermost)
    "CREATE TABLE IF NOT EXISTS spending_outer (reservation_id INTEGER NOT NULL, "
    "task TEXT NOT NULL, PRIMARY KEY (task, reservation_id))",
    # a reservation given back deletes its rows by id, not by reading every task's
    "CREATE INDEX IF NOT EXISTS spending_outer_reservation ON spending_outer (reservation_id)",
)


class LedgerBook:
    """The rows in the ledger's SQLite file, shared by every process that opens it."""

    def __init__(self, ledger: ReceiptLedger) -> None:
        self.ledger = ledger
        with ledger.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    @contextlib.contextmanager
    def hold(self) -> Iterator[LedgerBook]:
        with self.ledger.transaction():
            yield self

    # The methods below run inside hold() (or, for commit/release, one statement each).

    def spent(
        self, since: float, assets: Collection[str], *, seller: str | None = None
    ) -> dict[str, int]:
        totals = dict.fromkeys(assets, 0)
        for asset in totals:
            sql = "SELECT amount FROM spending WHERE asset = ? AND at >= ?"
            args: tuple[object, ...] = (asset, since)
            if seller is not None:
                sql, args = sql + " AND seller = ?", (*args, seller)
            totals[asset] = _sum(self.ledger.connection.execute(sql, args))
        return totals

    def task_used(self, task: str, assets: Collection[str]) -> dict[str, int] | None:
        return {
            asset: _sum(
                self.ledger.connection.execute(
                    "SELECT amount FROM spending WHERE asset = ? AND (task = ? OR "
                    "reservation_id IN (SELECT reservation_id FROM spending_outer WHERE task = ?))",
                    (asset, task, task),
                )
            )
            for asset in assets
        }

    def paid_before(self, seller: str) -> bool:
        row = self.ledger.connection.execute(
            "SELECT 1 FROM spending WHERE seller = ? AND state = 'committed' LIMIT 1", (seller,)
        ).fetchone()
        return row is not None

    def reserve(self, at: float, seller: str, asset: str, amount: int, tasks: Sequence[str]) -> int:
        conn = self.ledger.connection
        cursor = conn.execute(
            "INSERT INTO spending (at, seller, asset, amount, task, state) "
            "VALUES (?, ?, ?, ?, ?, 'reserved')",
            (at, seller, asset, str(amount), tasks[0] if tasks else None),
        )
        assert cursor.lastrowid is not None
        rid = int(cursor.lastrowid)
        outer = {name for name in tasks[1:] if name != tasks[0]}  # a name counts once
        conn.executemany(
            "INSERT INTO spending_outer (reservation_id, task) VALUES (?, ?)",
            [(rid, name) for name in sorted(outer)],
        )
        return rid

    def commit(self, reservation: int) -> None:
        with self.ledger.transaction() as conn:
            conn.execute(
                "UPDATE spending SET state = 'committed' WHERE reservation_id = ?", (reservation,)
            )

    def release(self, reservation: int) -> None:
        with self.ledger.transaction() as conn:
            if conn.execute(
                "DELETE FROM spending WHERE reservation_id = ? AND state = 'reserved'",
                (reservation,),
            ).rowcount:
                conn.execute("DELETE FROM spending_outer WHERE reservation_id = ?", (reservation,))


def _sum(rows: Iterable[Any]) -> int:
    # Amounts are decimal text (they may pass 64 bits): summed exactly here, not in SQL.
    total = 0
    for (amount,) in rows:
        try:
            total += int(amount)
        except (TypeError, ValueError):  # a row edited by hand: over every budget, said once
            if not _UNREADABLE:
                _UNREADABLE.append(amount)
                logging.getLogger("fourmica_x402.client").error(
                    "the receipts ledger holds an amount that is not a number (%.40r): it "
                    "counts as over every budget until the row is fixed",
                    amount,
                )
            total += _OVER_ANY
    return total


#: What an unreadable amount counts as (more than any budget); and whether one was said.
_OVER_ANY = 1 << 256
_UNREADABLE: list[Any] = []
