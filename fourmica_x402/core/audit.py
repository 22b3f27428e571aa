"""The Core's self-audit: money totals and the invariants the property tests rely on.

Money conservation per (network, asset)::

    Σ collateral + Σ (cycle collected − cycle claimed) = Σ external in − Σ external out

where external in = deposits + net debits paid, external out = withdrawals + net
credits claimed (the ``fx_flows`` rows). Default coverage moves collateral into its
cycle. Nothing here writes.
"""

from __future__ import annotations

from fractions import Fraction

from .common import INT64_MAX
from .store import Tx

__all__ = ["conservation", "invariants", "problems", "totals"]


def totals(tx: Tx, network: str, asset: str) -> dict[str, int]:
    """Money totals for the conservation audit of one (network, asset)."""
    pos = tx.one(
        "SELECT COALESCE(SUM(collateral), 0), COALESCE(SUM(locked), 0) FROM fx_positions "
        "WHERE network = ? AND asset = ?",
        (network, asset),
    )
    held = tx.one(
        "SELECT COALESCE(SUM(collected - claimed), 0) FROM fx_cycles WHERE network = ? AND asset = ?",
        (network, asset),
    )
    flows: dict[str, int] = dict(
        tx.all(
            "SELECT kind, COALESCE(SUM(amount), 0) FROM fx_flows WHERE network = ? AND asset = ? "
            "GROUP BY kind",
            (network, asset),
        )
    )
    assert pos is not None and held is not None
    external_in = int(flows.get("deposit", 0)) + int(flows.get("debit_payment", 0))
    external_out = int(flows.get("withdrawal", 0)) + int(flows.get("credit_claim", 0))
    return {
        "collateral": int(pos[0]),
        "locked": int(pos[1]),
        "held_in_cycles": int(held[0]),
        "external_in": external_in,
        "external_out": external_out,
    }


def invariants(tx: Tx) -> list[str]:
    """Violations of the lock, cycle, tab and matrix invariants (see ``Core.audit``)."""
    problems: list[str] = []
    expected: dict[tuple[str, str, str], int] = {}
    for network, asset, user, amount in tx.all(
        "SELECT g.network, g.asset, g.user_address, SUM(g.amount) FROM fx_guarantees g "
        "LEFT JOIN fx_cycles c ON c.cycle_id = g.cycle_id WHERE g.state = 'pending_validation' "
        "OR (g.state = 'payable' AND c.status IN ('open', 'closed')) "
        "GROUP BY g.network, g.asset, g.user_address"
    ):
        expected[(network, asset, user)] = int(amount)
    for network, asset, user, owed in tx.all(
        "SELECT c.network, c.asset, p.address, SUM(p.debit - p.paid) FROM fx_cycle_positions p "
        "JOIN fx_cycles c ON c.cycle_id = p.cycle_id WHERE c.status = 'resolved' "
        "AND p.role = 'debtor' GROUP BY c.network, c.asset, p.address"
    ):
        key = (network, asset, user)
        expected[key] = expected.get(key, 0) + int(owed)
    for network, asset, address, locked in tx.all(
        "SELECT network, asset, address, locked FROM fx_positions"
    ):
        want = expected.pop((network, asset, address), 0)
        if int(locked) != want:
            problems.append(f"{address} on {network}: locked {locked}, guarantees explain {want}")
    problems += [
        f"{k[2]} on {k[0]}: {v} locked by guarantees but no position"
        for k, v in expected.items()
        if v
    ]
    factors = {
        (network, asset): Fraction(value)
        for network, asset, value in tx.all("SELECT network, asset, factor FROM fx_asset_params")
    }
    for network, asset, address, collateral, limit in tx.all(
        "SELECT network, asset, address, collateral, credit_limit FROM fx_positions"
    ):
        want = min(int(int(collateral) * factors.get((network, asset), Fraction(1))), INT64_MAX)
        if int(limit) != want:
            problems.append(
                f"{address} on {network}: credit limit {limit}, collateral × factor {want}"
            )
    for cycle_id, debits, credits, nets in tx.all(
        "SELECT cycle_id, SUM(debit), SUM(credit), SUM(net) FROM fx_cycle_positions GROUP BY cycle_id"
    ):
        if int(debits) != int(credits) or int(nets) != 0:
            problems.append(f"cycle {cycle_id}: debits {debits} != credits {credits}")
    for tab_id, total, summed, count, counted in tx.all(
        "SELECT t.tab_id, t.total_amount, COALESCE(SUM(g.amount), 0), t.guarantee_count, "
        "COUNT(g.tab_id) FROM fx_tabs t LEFT JOIN fx_guarantees g ON g.tab_id = t.tab_id "
        "GROUP BY t.tab_id, t.total_amount, t.guarantee_count"
    ):
        if int(total) != int(summed):
            problems.append(f"tab {tab_id}: total {total} != guarantees {summed}")
        if int(count) != int(counted):  # the per-seller signals read these counts
            problems.append(f"tab {tab_id}: {count} guarantees counted, {counted} stored")
    summed_pairs = {
        (r[0], r[1], r[2]): tuple(int(v) for v in r[3:])
        for r in tx.all(
            "SELECT c.network, c.asset, p.payee, COUNT(DISTINCT p.cycle_id), COUNT(*), "
            "SUM(p.guarantee_count) FROM fx_cycle_pairs p JOIN fx_cycles c "
            "ON c.cycle_id = p.cycle_id WHERE c.status <> 'open' GROUP BY c.network, c.asset, p.payee"
        )
    }
    kept = {
        (r[0], r[1], r[2]): tuple(int(v) for v in r[3:])
        for r in tx.all(
            "SELECT network, asset, payee, cycles, payers, guarantees FROM fx_seller_cycles"
        )
    }
    for key in sorted(kept.keys() | summed_pairs.keys()):  # the per-seller cycle signals
        if kept.get(key, (0, 0, 0)) != summed_pairs.get(key, (0, 0, 0)):  # read these totals
            problems.append(
                f"seller {key[2]} on {key[0]} ({key[1]}): closed-cycle totals "
                f"{kept.get(key)} != its cycles' pairs {summed_pairs.get(key)}"
            )
    matrix = {
        int(r[0]): (int(r[1]), int(r[2]))
        for r in tx.all(
            "SELECT cycle_id, SUM(amount), SUM(guarantee_count) FROM fx_cycle_pairs GROUP BY cycle_id"
        )
    }
    for cycle_id, amount, count in tx.all(
        "SELECT cycle_id, SUM(amount), COUNT(*) FROM fx_guarantees WHERE state = 'payable' "
        "GROUP BY cycle_id"
    ):
        if cycle_id is None:
            problems.append(f"{count} payable guarantees belong to no cycle")
        elif matrix.pop(int(cycle_id), (0, 0)) != (int(amount), int(count)):
            problems.append(f"cycle {cycle_id}: pairwise matrix does not sum its guarantees")
    problems += [
        f"cycle {c}: matrix {v} without guarantees" for c, v in matrix.items() if v != (0, 0)
    ]
    return problems


def conservation(tx: Tx, network: str, asset: str) -> str | None:
    """The money-conservation violation of one (network, asset), if any."""
    t = totals(tx, network, asset)
    held = t["collateral"] + t["held_in_cycles"]
    if held != t["external_in"] - t["external_out"]:
        return (
            f"{network}/{asset}: money not conserved: held {held}, "
            f"in − out {t['external_in'] - t['external_out']}"
        )
    return None


def problems(tx: Tx) -> list[str]:
    """Every violation: :func:`invariants`, then :func:`conservation` of each (network, asset).

    One read transaction, so every check sees the same state.
    """
    found = invariants(tx)
    for network, asset in tx.all("SELECT DISTINCT network, asset FROM fx_positions"):
        problem = conservation(tx, network, asset)
        if problem:
            found.append(problem)
    return found
