"""The conditions of the database alert rules (docs/operations.md, "Alerts"): each reader
returns the subjects for which its rule holds now, as the :class:`~.alerts.Alert` to fire.

Each is a few queries over small or indexed sets (positions under a floor, late debtors,
defaulted positions not alerted yet, pending withdrawals, open follow-ups). Nothing here
writes; :mod:`.alerts` flips the states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .models import Alert
from .store import Tx

__all__ = ["LASTING", "READERS", "default_floor"]

Reader = Callable[[Tx, Any, float], dict[str, Alert]]


def collateral_floor(
    tx: Tx, floor: int | Mapping[tuple[str, str], int], now: float
) -> dict[str, Alert]:
    """Positions with collateral, a lock or a pending withdrawal whose free collateral
    (``credit_limit − locked − pending_withdrawal``) is below the floor."""
    sql = (
        "SELECT network, asset, address, collateral, credit_limit, locked, pending_withdrawal "
        "FROM fx_positions WHERE (collateral > 0 OR locked > 0 OR pending_withdrawal > 0) "
        "AND credit_limit - locked - pending_withdrawal < ?"
    )
    targets: list[tuple[int, str, tuple[Any, ...]]] = (
        [(floor, sql, ())]
        if isinstance(floor, int)
        else [(f, sql + " AND network = ? AND asset = ?", key) for key, f in floor.items()]
    )
    found: dict[str, Alert] = {}
    for value, query, key in targets:
        for network, asset, address, collateral, limit, locked, pending in tx.all(
            query, (value, *key)
        ):
            subject = f"{network}/{asset}/{address}"
            found[subject] = Alert(
                rule="collateral_floor",
                subject=subject,
                value=max(int(limit) - int(locked) - int(pending), 0),
                threshold=value,
                at=now,
                network=network,
                asset=asset,
                address=address,
                detail={
                    "collateral": int(collateral),
                    "locked": int(locked),
                    "pending_withdrawal": int(pending),
                },
            )
    return found


def settlement_deadline(tx: Tx, grace: float, now: float) -> dict[str, Alert]:
    """Debtors of resolved cycles whose net debit is still unpaid ``grace`` seconds past the
    payment deadline (one subject per debtor position: its late cycles together)."""
    late: dict[tuple[str, str, str], list[tuple[int, float, int]]] = {}
    for network, asset, address, cycle_id, pay_by, unpaid in tx.all(
        "SELECT c.network, c.asset, p.address, c.cycle_id, c.pay_by, p.debit - p.paid "
        "FROM fx_cycle_positions p JOIN fx_cycles c ON c.cycle_id = p.cycle_id "
        "WHERE c.status = 'resolved' AND c.pay_by <= ? AND p.role = 'debtor' "
        "AND p.paid < p.debit ORDER BY c.cycle_id",
        (now - grace,),
    ):
        late.setdefault((network, asset, address), []).append(
            (int(cycle_id), float(pay_by), int(unpaid))
        )
    found: dict[str, Alert] = {}
    for (network, asset, address), cycles in late.items():
        subject = f"{network}/{asset}/{address}"
        found[subject] = Alert(
            rule="settlement_deadline",
            subject=subject,
            value=int(now - min(pay_by for _, pay_by, _ in cycles)),
            threshold=grace,
            at=now,
            network=network,
            asset=asset,
            address=address,
            detail={
                "cycle_ids": [c for c, _, _ in cycles],
                "unpaid": sum(u for _, _, u in cycles),
            },
        )
    return found


def default_floor(tx: Tx) -> int:
    """A cycle id below which every cycle is final: the oldest cycle not final yet (an indexed
    read of the few open, closed or resolved ones), else one past the last cycle. A cycle's
    defaults are written in the transaction that makes it final, so none appears below it later.
    """
    row = tx.one(
        "SELECT MIN(cycle_id) FROM fx_cycles WHERE status IN ('open', 'closed', 'resolved')"
    )
    if row is not None and row[0] is not None:
        return int(row[0])
    row = tx.one("SELECT MAX(cycle_id) FROM fx_cycles")
    return 1 if row is None or row[0] is None else int(row[0]) + 1


def default(tx: Tx, least: int, now: float, since: int = 0) -> dict[str, Alert]:
    """Defaulted debtor positions (of final cycles) not alerted yet, of the cycles from
    ``since`` on: a default lasts, so each fires once (an indexed read of the defaulted rows of
    those cycles and of their alert states; the checker passes the :func:`default_floor` of its
    last check as ``since``, so it reads only the cycles finalised since)."""
    found: dict[str, Alert] = {}
    for cycle_id, network, asset, address, unpaid, covered, shortfall in tx.all(
        "SELECT p.cycle_id, c.network, c.asset, p.address, p.debit - p.paid, p.covered, "
        "p.shortfall FROM fx_cycle_positions p JOIN fx_cycles c ON c.cycle_id = p.cycle_id "
        "WHERE p.status = 'defaulted' AND p.cycle_id >= ? AND p.debit - p.paid >= ? "
        "AND NOT EXISTS (SELECT 1 FROM fx_alerts a WHERE a.rule = 'default' "
        "AND a.subject = CAST(p.cycle_id AS TEXT) || '/' || p.address)",
        (since, least),
    ):
        subject = f"{int(cycle_id)}/{address}"
        found[subject] = Alert(
            rule="default",
            subject=subject,
            value=int(unpaid),
            threshold=least,
            at=now,
            network=network,
            asset=asset,
            address=address,
            detail={
                "cycle_id": int(cycle_id),
                "covered": int(covered),
                "shortfall": int(shortfall),
            },
        )
    return found


def withdrawal_requested(tx: Tx, least: int, now: float) -> dict[str, Alert]:
    """Pending withdrawals of at least ``least``."""
    found: dict[str, Alert] = {}
    for withdrawal_id, network, asset, address, amount, available_at in tx.all(
        "SELECT withdrawal_id, network, asset, address, amount, available_at "
        "FROM fx_withdrawals WHERE status = 'pending' AND amount >= ?",
        (least,),
    ):
        subject = str(int(withdrawal_id))
        found[subject] = Alert(
            rule="withdrawal_requested",
            subject=subject,
            value=int(amount),
            threshold=least,
            at=now,
            network=network,
            asset=asset,
            address=address,
            detail={"withdrawal_id": int(withdrawal_id), "available_at": float(available_at)},
        )
    return found


def _followups(tx: Tx) -> tuple[int, float | None]:
    """(open follow-ups, when the oldest was filed); (0, None) without the records' tables."""
    row = tx.one("SELECT value FROM fx_meta WHERE key = 'records_schema_version'")
    if row is None or int(row[0]) < 4:  # the records' migration 4 names the table fx_followups
        return 0, None
    row = tx.one("SELECT COUNT(*), MIN(created_at) FROM fx_followups WHERE status = 'open'")
    if row is None or not row[0]:
        return 0, None
    return int(row[0]), float(row[1])


def reconciler_backlog(tx: Tx, least: int, now: float) -> dict[str, Alert]:
    """At least ``least`` open follow-ups."""
    count, oldest = _followups(tx)
    if count < least or oldest is None:
        return {}
    detail = {"oldest_age": int(now - oldest)}
    return {
        "open": Alert(
            rule="reconciler_backlog",
            subject="open",
            value=count,
            threshold=least,
            at=now,
            detail=detail,
        )
    }


def reconciler_backlog_age(tx: Tx, age: float, now: float) -> dict[str, Alert]:
    """An open follow-up filed at least ``age`` seconds ago."""
    count, oldest = _followups(tx)
    if oldest is None or now - oldest < age:
        return {}
    return {
        "oldest": Alert(
            rule="reconciler_backlog_age",
            subject="oldest",
            value=int(now - oldest),
            threshold=age,
            at=now,
            detail={"open": count},
        )
    }


#: The reader of each database rule.
READERS: dict[str, Reader] = {
    "collateral_floor": collateral_floor,
    "settlement_deadline": settlement_deadline,
    "default": default,
    "withdrawal_requested": withdrawal_requested,
    "reconciler_backlog": reconciler_backlog,
    "reconciler_backlog_age": reconciler_backlog_age,
}
#: Rules whose condition never ends once true: their readers return unalerted subjects only.
LASTING = frozenset({"default"})
