"""Reads: how the Core's rows become the models it reports. Nothing here writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import CoreError
from .common import guarantee_row, hex_id, row_id
from .models import (
    Cycle,
    CyclePair,
    CyclePosition,
    Event,
    GuaranteeRecord,
    Position,
    Tab,
    Withdrawal,
)
from .store import Tx

__all__ = [
    "CYCLE_COLUMNS",
    "WITHDRAWAL_COLUMNS",
    "cycle",
    "cycle_from_row",
    "cycle_pairs",
    "cycle_positions",
    "cycles",
    "events",
    "guarantee",
    "guarantees",
    "payer_counts",
    "position",
    "positions",
    "tab",
    "withdrawal",
    "withdrawal_from_row",
    "withdrawals",
]

# -- positions and tabs ---------------------------------------------------------------------


def position(tx: Tx, network: str, asset: str, address: str) -> Position:
    row = tx.one(
        "SELECT collateral, credit_limit, locked, pending_withdrawal FROM fx_positions "
        "WHERE network = ? AND asset = ? AND address = ?",
        (network, asset, address),
    )
    return Position(network, asset, address, *(int(v) for v in (row or (0, 0, 0, 0))))


def positions(tx: Tx, network: str | None) -> list[Position]:
    sql = "SELECT network, asset, address, collateral, credit_limit, locked, pending_withdrawal FROM fx_positions"
    params: tuple[Any, ...] = ()
    if network:
        sql += " WHERE network = ?"
        params = (network,)
    rows = tx.all(
        sql + " ORDER BY network COLLATE BINARY, asset COLLATE BINARY, address COLLATE BINARY",
        params,
    )
    return [Position(r[0], r[1], r[2], *(int(v) for v in r[3:])) for r in rows]


def tab(tx: Tx, tab_id: int) -> Tab | None:
    row = tx.one(
        "SELECT user_address, recipient_address, network, asset, guarantee_version, "
        "start_ts, ttl, next_req_id FROM fx_tabs WHERE tab_id = ?",
        (hex_id(tab_id),),
    )
    if row is None:
        return None
    return Tab(
        tab_id,
        row[0],
        row[1],
        row[2],
        row[3],
        int(row[4]),
        int(row[5]),
        int(row[6]),
        int(row[7]),
    )


# -- guarantees -----------------------------------------------------------------------------

# Netting never rewrites guarantee rows: once a cycle closes, a payable guarantee's state
# follows from its cycle and its payer's net position there.
_GUARANTEE_SELECT = (
    "SELECT g.guarantee_id, g.tab_id, g.req_id, g.network, g.asset, g.user_address, "
    "g.recipient_address, g.amount, g.total_amount, g.ts, g.version, CASE "
    "WHEN g.state <> 'payable' OR c.status IS NULL OR c.status = 'open' THEN g.state "
    "WHEN c.status = 'closed' THEN 'netted' "
    "WHEN p.role <> 'debtor' OR p.status = 'paid' THEN 'settled' "
    "WHEN p.status = 'defaulted' THEN 'default_covered' ELSE 'netted' END AS state, "
    "g.accepted_at, g.cycle_id, g.validator, g.min_score, g.score, g.certificate "
    "FROM fx_guarantees g LEFT JOIN fx_cycles c ON c.cycle_id = g.cycle_id "
    "LEFT JOIN fx_cycle_positions p ON p.cycle_id = g.cycle_id AND p.address = g.user_address"
)


def _guarantee_record(r: Sequence[Any]) -> GuaranteeRecord:
    return GuaranteeRecord(
        r[0],
        int(r[1], 16),
        int(r[2], 16),
        r[3],
        r[4],
        r[5],
        r[6],
        int(r[7]),
        int(r[8]),
        int(r[9]),
        int(r[10]),
        r[11],
        float(r[12]),
        None if r[13] is None else int(r[13]),
        r[14],
        r[15],
        r[16],
        r[17],
    )


def guarantee(tx: Tx, guarantee_id: str) -> GuaranteeRecord:
    return _guarantee_record(
        guarantee_row(tx, _GUARANTEE_SELECT + " WHERE g.guarantee_id = ?", guarantee_id)
    )


def guarantees(
    tx: Tx,
    address: str | None,
    state: str | None,
    cycle_id: int | None,
    limit: int,
    before: str | None = None,
) -> list[GuaranteeRecord]:
    """Newest first; ``address`` already parsed; ``before``: the id of the last guarantee of
    the previous page (keyset pagination through the listing-order index, docs/operations.md)."""
    where: list[str] = []
    params: list[Any] = []
    if address:
        # Through the tabs (a guarantee's payer and payee are its tab's, checked at acceptance):
        # the address's tabs, then their guarantees by primary key, not a scan of them all.
        where.append(
            "g.tab_id IN (SELECT tab_id FROM fx_tabs WHERE user_address = ? OR "
            "recipient_address = ?) AND (g.user_address = ? OR g.recipient_address = ?)"
        )
        params += [address] * 4
    if cycle_id is not None:
        where.append("g.cycle_id = ?")
        params.append(cycle_id)
    if before is not None:
        at = guarantee_row(
            tx, "SELECT accepted_at FROM fx_guarantees WHERE guarantee_id = ?", before
        )
        where.append(
            "g.accepted_at <= ? AND (g.accepted_at < ? OR g.guarantee_id COLLATE BINARY > ?)"
        )
        params += [at[0], at[0], before]
    sql = _GUARANTEE_SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = "ORDER BY accepted_at DESC, guarantee_id COLLATE BINARY LIMIT ?"
    if state:  # the state is derived from the cycle: filtered after the join
        sql = f"SELECT * FROM ({sql}) AS q WHERE state = ? {order}"
        params.append(state)
    else:  # in the order of fx_guarantees_recent, read no further than the page
        sql += " " + order.replace("accepted_at", "g.accepted_at").replace(
            "guarantee_id", "g.guarantee_id"
        )
    rows = tx.all(sql, (*params, int(limit)))
    return [_guarantee_record(r) for r in rows]


# -- cycles ---------------------------------------------------------------------------------

CYCLE_COLUMNS = (
    "cycle_id, network, asset, status, opened_at, closes_at, closed_at, resolve_at, pay_by, "
    "final_at, guarantee_count, gross, net_transfers, total_debit, collected, claimed, merkle_root"
)


def cycle_from_row(r: Sequence[Any]) -> Cycle:
    """A :class:`Cycle` from a row of :data:`CYCLE_COLUMNS`."""
    n = [int(v) for v in r[10:16]]
    return Cycle(
        int(r[0]),
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        n[0],
        n[1],
        n[2],
        n[3],
        n[4],
        n[5],
        r[16],
    )


def cycle(tx: Tx, cycle_id: int) -> Cycle:
    row = (
        tx.one(f"SELECT {CYCLE_COLUMNS} FROM fx_cycles WHERE cycle_id = ?", (cycle_id,))
        if row_id(cycle_id)
        else None
    )
    if row is None:
        raise CoreError(f"no cycle {cycle_id}", reason="unknown_cycle", status=404)
    return cycle_from_row(row)


def cycles(tx: Tx, status: str | None, network: str | None, limit: int) -> list[Cycle]:
    where: list[str] = []
    params: list[Any] = []
    if status:
        where.append("status = ?")
        params.append(status)
    if network:
        where.append("network = ?")
        params.append(network)
    sql = f"SELECT {CYCLE_COLUMNS} FROM fx_cycles"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = tx.all(sql + " ORDER BY cycle_id DESC LIMIT ?", (*params, int(limit)))
    return [cycle_from_row(r) for r in rows]


#: The time each cycle phase waits for: its status → the column that says when it is due.
_DUE_AT = {"open": "closes_at", "closed": "resolve_at", "resolved": "final_at"}


def due_cycles(tx: Tx, status: str, now: float, after: int, upto: int, limit: int) -> list[Cycle]:
    """Cycles in ``status`` whose next step is due at ``now``, oldest first, with ids in
    ``(after, upto]`` (the due ones are the oldest: never a newest-first page that leaves
    them out; ``upto``: none that a step of this pass made)."""
    at = _DUE_AT[status]
    rows = tx.all(
        f"SELECT {CYCLE_COLUMNS} FROM fx_cycles WHERE status = ? AND {at} <= ? "
        "AND cycle_id > ? AND cycle_id <= ? ORDER BY cycle_id LIMIT ?",
        (status, now, after, upto, int(limit)),
    )
    return [cycle_from_row(r) for r in rows]


def last_cycle_id(tx: Tx) -> int:
    row = tx.one("SELECT MAX(cycle_id) FROM fx_cycles")
    return int(row[0]) if row and row[0] is not None else 0


def cycle_positions(tx: Tx, cycle_id: int) -> list[CyclePosition]:
    if not row_id(cycle_id):
        return []
    rows = tx.all(
        "SELECT cycle_id, address, gross_in, gross_out, net, role, debit, credit, paid, covered, "
        "claimed, shortfall, status FROM fx_cycle_positions WHERE cycle_id = ? "
        "ORDER BY address COLLATE BINARY",
        (cycle_id,),
    )
    out = []
    for r in rows:
        n = [int(v) for v in (*r[2:5], *r[6:12])]
        out.append(
            CyclePosition(
                int(r[0]),
                r[1],
                n[0],
                n[1],
                n[2],
                r[5],
                n[3],
                n[4],
                n[5],
                n[6],
                n[7],
                n[8],
                r[12],
            )
        )
    return out


def payer_counts(tx: Tx, cycle_id: int) -> list[int]:
    if not row_id(cycle_id):
        return []
    rows = tx.all(
        "SELECT SUM(guarantee_count) FROM fx_cycle_pairs WHERE cycle_id = ? GROUP BY payer",
        (cycle_id,),
    )
    return [int(r[0]) for r in rows]


def cycle_pairs(tx: Tx, cycle_id: int) -> list[CyclePair]:
    if not row_id(cycle_id):
        return []
    rows = tx.all(
        "SELECT cycle_id, payer, payee, amount, guarantee_count FROM fx_cycle_pairs "
        "WHERE cycle_id = ? ORDER BY payer COLLATE BINARY, payee COLLATE BINARY",
        (cycle_id,),
    )
    return [CyclePair(int(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in rows]


# -- withdrawals and events -----------------------------------------------------------------

WITHDRAWAL_COLUMNS = (
    "withdrawal_id, network, asset, address, amount, requested_at, available_at, status, "
    "finished_at"
)


def withdrawal_from_row(r: Sequence[Any]) -> Withdrawal:
    """A :class:`Withdrawal` from a row of :data:`WITHDRAWAL_COLUMNS`."""
    return Withdrawal(
        int(r[0]),
        r[1],
        r[2],
        r[3],
        int(r[4]),
        float(r[5]),
        float(r[6]),
        r[7],
        None if r[8] is None else float(r[8]),
    )


def withdrawal(tx: Tx, withdrawal_id: int) -> Withdrawal:
    row = (
        tx.one(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM fx_withdrawals WHERE withdrawal_id = ?",
            (withdrawal_id,),
        )
        if row_id(withdrawal_id)
        else None
    )
    if row is None:
        raise CoreError(f"no withdrawal {withdrawal_id}", reason="unknown_withdrawal", status=404)
    return withdrawal_from_row(row)


def withdrawals(tx: Tx, address: str | None, limit: int) -> list[Withdrawal]:
    """Newest first; ``address`` already parsed."""
    sql = f"SELECT {WITHDRAWAL_COLUMNS} FROM fx_withdrawals"
    params: tuple[Any, ...] = ()
    if address:
        sql, params = sql + " WHERE address = ?", (address,)
    rows = tx.all(sql + " ORDER BY withdrawal_id DESC LIMIT ?", (*params, int(limit)))
    return [withdrawal_from_row(r) for r in rows]


def events(tx: Tx, after: int, limit: int, type_: str | None) -> list[Event]:
    sql = (
        "SELECT event_id, type, at, network, asset, address, data FROM fx_events WHERE event_id > ?"
    )
    params: list[Any] = [after]
    if type_:
        sql += " AND type = ?"
        params.append(type_)
    rows = tx.all(sql + " ORDER BY event_id LIMIT ?", (*params, int(limit)))
    return [Event(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5], json.loads(r[6])) for r in rows]
