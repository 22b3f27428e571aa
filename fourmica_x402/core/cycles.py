"""Clearing cycles: open → closed (netted) → resolved → final, and the net settlement.

Per (network, asset) one cycle is open; payable guarantees join it as a pairwise
aggregate (``fx_cycle_pairs``). Closing nets the matrix into one position per
participant (:mod:`.clearing`); resolving keeps only each debtor's net debit locked;
debtors pay their debit in the payment window, creditors claim their pro-rata share of
what was collected; finalising covers unpaid debits from the debtor's collateral.
Every function runs inside the caller's transaction.
"""

from __future__ import annotations

from ..errors import CoreError
from . import clearing
from .collateral import factor, lock_position, record_flow, release, set_collateral
from .common import INT64_MAX, LockClauses, check_amount, row_id
from .config import CoreConfig
from .feed import Events, emit
from .models import Cycle
from .queries import CYCLE_COLUMNS, cycle_from_row
from .store import Row, StoreUnavailable, Tx

__all__ = [
    "claim_net_credit",
    "close",
    "close_open",
    "finalize",
    "join",
    "locked_cycle",
    "open_cycle",
    "pay_net_debit",
    "resolve",
]


def open_cycle(
    tx: Tx,
    network: str,
    asset: str,
    now: float,
    config: CoreConfig,
    locks: LockClauses,
    columns: str = CYCLE_COLUMNS,
    *,
    exclusive: bool = False,
) -> Row:
    """The open cycle of (network, asset) as a row of ``columns``, opened if none is;
    share-locked so that it cannot close under the caller's transaction (PostgreSQL), or
    locked for update (``exclusive``: the caller closes it; two closers then queue instead
    of deadlocking on their shared locks)."""
    select = (
        f"SELECT {columns} FROM fx_cycles WHERE network = ? AND asset = ? "
        "AND status = 'open'" + (locks.row_lock if exclusive else locks.share_lock)
    )
    for _ in range(_OPEN_TRIES):
        row = tx.one(select, (network, asset))
        if row is not None:
            return row
        # Opened here, or by another transaction (PostgreSQL: this insert waits for it); that
        # cycle may also have closed meanwhile, so look again.
        tx.execute(
            "INSERT INTO fx_cycles (network, asset, status, opened_at, closes_at) "
            "VALUES (?, ?, 'open', ?, ?) ON CONFLICT DO NOTHING",
            (network, asset, now, now + config.cycle_window),
        )
    raise StoreUnavailable("the open clearing cycle kept closing under this transaction")


#: How often :func:`open_cycle` looks for (or opens) the open cycle before giving up.
_OPEN_TRIES = 20


def join(
    tx: Tx,
    network: str,
    asset: str,
    payer: str,
    payee: str,
    amount: int,
    now: float,
    config: CoreConfig,
    locks: LockClauses,
) -> int:
    """Put a payable obligation into the open cycle: bump its pairwise aggregate. Returns the cycle."""
    cycle_id = int(open_cycle(tx, network, asset, now, config, locks, "cycle_id")[0])
    tx.execute(
        "INSERT INTO fx_cycle_pairs (cycle_id, payer, payee, amount, guarantee_count) "
        "VALUES (?, ?, ?, ?, 1) ON CONFLICT (cycle_id, payer, payee) DO UPDATE SET "
        "amount = fx_cycle_pairs.amount + excluded.amount, "
        "guarantee_count = fx_cycle_pairs.guarantee_count + 1",
        (cycle_id, payer, payee, amount),
    )
    return cycle_id


def locked_cycle(tx: Tx, cycle_id: int) -> Cycle:
    # No-op update: row-locks the cycle for the rest of the transaction (PostgreSQL).
    row = (
        tx.one(
            f"UPDATE fx_cycles SET status = status WHERE cycle_id = ? RETURNING {CYCLE_COLUMNS}",
            (cycle_id,),
        )
        if row_id(cycle_id)
        else None
    )
    if row is None:
        raise CoreError(f"no cycle {cycle_id}", reason="unknown_cycle", status=404)
    return cycle_from_row(row)


# -- phases ---------------------------------------------------------------------------------


def close_open(
    tx: Tx,
    events: Events,
    network: str,
    asset: str,
    now: float,
    config: CoreConfig,
    locks: LockClauses,
) -> int:
    """Close the open cycle of (network, asset) now (see :func:`close`). Returns its id."""
    cycle_id = int(open_cycle(tx, network, asset, now, config, locks, exclusive=True)[0])
    close(tx, events, cycle_id, network, asset, now, config)
    return cycle_id


def close(
    tx: Tx,
    events: Events,
    cycle_id: int,
    network: str,
    asset: str,
    now: float,
    config: CoreConfig,
) -> None:
    """Close an open cycle: net its matrix, fix its timetable, open the next cycle."""
    if not tx.execute(
        "UPDATE fx_cycles SET status = 'closed', closed_at = ? WHERE cycle_id = ? AND status = 'open'",
        (now, cycle_id),
    ):
        return  # another process closed it first
    # The pairwise matrix was kept up to date as guarantees became payable (or were voided).
    tx.execute("DELETE FROM fx_cycle_pairs WHERE cycle_id = ? AND guarantee_count = 0", (cycle_id,))
    following = None
    gross, count, gross_total = _gross(tx, cycle_id)
    if gross_total > INT64_MAX:
        # Every amount of a cycle (a gross in, a credit, the total debit) is at most its gross,
        # and each is a BIGINT column: what does not fit waits for the next cycle
        # (docs/operations.md, "Operator settings").
        following = _open_next(tx, network, asset, now, config)
        _defer_overflow(tx, cycle_id, following)
        gross, count, gross_total = _gross(tx, cycle_id)
    netting = clearing.Netting({a: (v[0], v[1]) for a, v in gross.items()})
    rows = []
    for address, (gross_in, gross_out) in netting.gross.items():
        value = gross_in - gross_out
        role = netting.role_of(address)
        rows.append(
            (
                cycle_id,
                address,
                gross_in,
                gross_out,
                value,
                role,
                max(0, -value),
                max(0, value),
                "unpaid" if role == "debtor" else "open",
            )
        )
    tx.many(
        "INSERT INTO fx_cycle_positions (cycle_id, address, gross_in, gross_out, net, role, debit, "
        "credit, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    # Each payee's closed-cycle totals, added once here (a closed cycle's pairs never change
    # again): the signals read them instead of every pair of every cycle (docs/operations.md).
    tx.execute(
        "INSERT INTO fx_seller_cycles (network, asset, payee, cycles, payers, guarantees) "
        "SELECT ?, ?, payee, 1, COUNT(*), SUM(guarantee_count) FROM fx_cycle_pairs "
        "WHERE cycle_id = ? GROUP BY payee ON CONFLICT (network, asset, payee) DO UPDATE SET "
        "cycles = fx_seller_cycles.cycles + 1, payers = fx_seller_cycles.payers + excluded.payers, "
        "guarantees = fx_seller_cycles.guarantees + excluded.guarantees",
        (network, asset, cycle_id),
    )
    resolve_at = now + config.resolution_delay
    pay_by = resolve_at + config.payment_window
    root = clearing.merkle_root((a, netting.net_of(a)) for a in netting.gross)
    tx.execute(
        "UPDATE fx_cycles SET resolve_at = ?, pay_by = ?, final_at = ?, guarantee_count = ?, "
        "gross = ?, net_transfers = ?, total_debit = ?, merkle_root = ? WHERE cycle_id = ?",
        (
            resolve_at,
            pay_by,
            pay_by + config.finality,
            count,
            gross_total,
            netting.transfers,
            netting.total_debit,
            "0x" + root.hex(),
            cycle_id,
        ),
    )
    if following is None:
        _open_next(tx, network, asset, now, config)
    emit(
        events,
        "cycle.closed",
        now,
        network,
        asset,
        None,
        cycle_id=cycle_id,
        guarantees=count,
        net_transfers=netting.transfers,
        total_debit=netting.total_debit,
    )


def _gross(tx: Tx, cycle_id: int) -> tuple[dict[str, list[int]], int, int]:
    """Gross in and out per participant, the guarantee count and the gross: summed by the
    database (a cycle may hold a million pairs; one row per participant comes back)."""
    gross: dict[str, list[int]] = {}
    count = gross_total = 0
    for payer, amount, guarantees in tx.all(
        "SELECT payer, SUM(amount), SUM(guarantee_count) FROM fx_cycle_pairs "
        "WHERE cycle_id = ? GROUP BY payer",
        (cycle_id,),
    ):
        gross[payer] = [0, int(amount)]
        count += int(guarantees)
        gross_total += int(amount)
    for payee, amount in tx.all(
        "SELECT payee, SUM(amount) FROM fx_cycle_pairs WHERE cycle_id = ? GROUP BY payee",
        (cycle_id,),
    ):
        gross.setdefault(payee, [0, 0])[0] = int(amount)
    return gross, count, gross_total


def _open_next(tx: Tx, network: str, asset: str, now: float, config: CoreConfig) -> int:
    row = tx.one(
        "INSERT INTO fx_cycles (network, asset, status, opened_at, closes_at) "
        "VALUES (?, ?, 'open', ?, ?) RETURNING cycle_id",
        (network, asset, now, now + config.cycle_window),
    )
    assert row is not None
    return int(row[0])


def _defer_overflow(tx: Tx, cycle_id: int, following: int) -> None:
    """Move the pairs (and their guarantees) that would take the cycle's gross past 2**63 - 1
    into the ``following`` cycle, smallest pairs kept first: each close nets at least one
    pair (each is at most 2**63 - 1), so a cycle never stays stuck."""
    kept, moved = 0, []
    for payer, payee, amount in tx.all(
        "SELECT payer, payee, amount FROM fx_cycle_pairs WHERE cycle_id = ? "
        "ORDER BY amount, payer COLLATE BINARY, payee COLLATE BINARY",
        (cycle_id,),
    ):
        if kept and kept + int(amount) > INT64_MAX:
            moved.append((following, cycle_id, payer, payee))
        else:
            kept += int(amount)
    tx.many(
        "UPDATE fx_cycle_pairs SET cycle_id = ? WHERE cycle_id = ? AND payer = ? AND payee = ?",
        moved,
    )
    tx.many(
        "UPDATE fx_guarantees SET cycle_id = ? WHERE cycle_id = ? AND user_address = ? "
        "AND recipient_address = ?",
        moved,
    )


def resolve(tx: Tx, events: Events, cycle: Cycle, now: float) -> None:
    """Resolve a closed cycle: of each payer's locked gross out, keep its net debit locked."""
    if not tx.execute(
        "UPDATE fx_cycles SET status = 'resolved' WHERE cycle_id = ? AND status = 'closed'",
        (cycle.cycle_id,),
    ):
        return
    for address, gross_out, debit in tx.all(
        "SELECT address, gross_out, debit FROM fx_cycle_positions WHERE cycle_id = ? "
        "ORDER BY address COLLATE BINARY",  # one order (PostgreSQL: no deadlock between ticks)
        (cycle.cycle_id,),
    ):
        # The batch locked gross_out of this payer; keep only its net debit locked.
        release(tx, cycle.network, cycle.asset, address, int(gross_out) - int(debit))
    emit(events, "cycle.resolved", now, cycle.network, cycle.asset, None, cycle_id=cycle.cycle_id)


def finalize(tx: Tx, events: Events, cycle: Cycle, now: float) -> None:
    """Finalise a resolved cycle: cover each unpaid debit from the debtor's collateral
    (default coverage), then record each creditor's shortfall."""
    if not tx.execute(
        "UPDATE fx_cycles SET status = 'final' WHERE cycle_id = ? AND status = 'resolved'",
        (cycle.cycle_id,),
    ):
        return
    covered_total = 0
    value = factor(tx, cycle.network, cycle.asset)  # before the positions: collateral.factor
    for address, debit, paid in tx.all(
        "SELECT address, debit, paid FROM fx_cycle_positions WHERE cycle_id = ? AND role = 'debtor' "
        "AND paid < debit ORDER BY address COLLATE BINARY",
        (cycle.cycle_id,),
    ):
        unpaid = int(debit) - int(paid)
        collateral, _, locked, _ = lock_position(tx, cycle.network, cycle.asset, address)
        cover = min(unpaid, collateral)
        set_collateral(tx, cycle.network, cycle.asset, address, collateral - cover, value)
        release(tx, cycle.network, cycle.asset, address, min(unpaid, locked))
        tx.execute(
            "UPDATE fx_cycle_positions SET covered = ?, shortfall = ?, status = 'defaulted' "
            "WHERE cycle_id = ? AND address = ?",
            (cover, unpaid - cover, cycle.cycle_id, address),
        )
        covered_total += cover
        emit(
            events,
            "position.defaulted",
            now,
            cycle.network,
            cycle.asset,
            address,
            cycle_id=cycle.cycle_id,
            unpaid=unpaid,
            covered=cover,
            shortfall=unpaid - cover,
        )
    collected_row = tx.one(
        "UPDATE fx_cycles SET collected = collected + ? WHERE cycle_id = ? RETURNING collected",
        (covered_total, cycle.cycle_id),
    )
    collected = int(collected_row[0]) if collected_row else 0
    # Creditors' shortfall: what their pro-rata share of the collected money leaves unpaid.
    for address, credit in tx.all(
        "SELECT address, credit FROM fx_cycle_positions WHERE cycle_id = ? AND role = 'creditor'",
        (cycle.cycle_id,),
    ):
        share = clearing.pro_rata(int(credit), collected, cycle.total_debit)
        tx.execute(
            "UPDATE fx_cycle_positions SET shortfall = ? WHERE cycle_id = ? AND address = ?",
            (int(credit) - share, cycle.cycle_id, address),
        )


# -- settlement -----------------------------------------------------------------------------


def pay_net_debit(
    tx: Tx, events: Events, cycle_id: int, address: str, amount: int | None, now: float
) -> None:
    """A debtor pays ``amount`` (None: all that is outstanding) of its net debit."""
    cycle = locked_cycle(tx, cycle_id)
    if cycle.status != "resolved":
        raise CoreError(
            f"cycle {cycle_id} is {cycle.status}; debits are paid once it is resolved",
            reason="invalid_state",
        )
    row = tx.one(
        "SELECT debit, paid FROM fx_cycle_positions WHERE cycle_id = ? AND address = ? AND role = 'debtor'",
        (cycle_id, address),
    )
    if row is None:
        raise CoreError(
            f"{address} owes nothing in cycle {cycle_id}", reason="not_debtor", status=404
        )
    outstanding = int(row[0]) - int(row[1])
    if outstanding <= 0:
        raise CoreError(
            f"{address}'s net debit in cycle {cycle_id} is paid already",
            reason="already_paid",
            status=409,
        )
    if amount is not None:
        check_amount(amount)
    pay = outstanding if amount is None else amount
    if pay <= 0 or pay > outstanding:
        raise CoreError(f"payment must be 1..{outstanding}", reason="invalid_amount", status=400)
    tx.execute(
        "UPDATE fx_cycle_positions SET paid = paid + ?, status = CASE WHEN paid + ? >= debit "
        "THEN 'paid' ELSE status END WHERE cycle_id = ? AND address = ?",
        (pay, pay, cycle_id, address),
    )
    tx.execute("UPDATE fx_cycles SET collected = collected + ? WHERE cycle_id = ?", (pay, cycle_id))
    lock_position(tx, cycle.network, cycle.asset, address)
    release(tx, cycle.network, cycle.asset, address, pay)
    record_flow(tx, "debit_payment", cycle.network, cycle.asset, address, pay, now, str(cycle_id))
    emit(
        events,
        "debit.paid",
        now,
        cycle.network,
        cycle.asset,
        address,
        cycle_id=cycle_id,
        amount=pay,
        outstanding=outstanding - pay,
    )


def claim_net_credit(tx: Tx, events: Events, cycle_id: int, address: str, now: float) -> int:
    """A creditor takes its pro-rata share of what was collected, less what it claimed."""
    cycle = locked_cycle(tx, cycle_id)
    if cycle.status not in ("resolved", "final"):
        raise CoreError(f"cycle {cycle_id} is {cycle.status}", reason="invalid_state")
    row = tx.one(
        "SELECT credit, claimed FROM fx_cycle_positions WHERE cycle_id = ? AND address = ? "
        "AND role = 'creditor'",
        (cycle_id, address),
    )
    if row is None:
        raise CoreError(
            f"{address} is owed nothing in cycle {cycle_id}",
            reason="not_creditor",
            status=404,
        )
    due = clearing.pro_rata(int(row[0]), cycle.collected, cycle.total_debit) - int(row[1])
    if due <= 0:
        return 0
    tx.execute(
        "UPDATE fx_cycle_positions SET claimed = claimed + ? WHERE cycle_id = ? AND address = ?",
        (due, cycle_id, address),
    )
    tx.execute("UPDATE fx_cycles SET claimed = claimed + ? WHERE cycle_id = ?", (due, cycle_id))
    record_flow(tx, "credit_claim", cycle.network, cycle.asset, address, due, now, str(cycle_id))
    emit(
        events,
        "credit.claimed",
        now,
        cycle.network,
        cycle.asset,
        address,
        cycle_id=cycle_id,
        amount=due,
    )
    return due
