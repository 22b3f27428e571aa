"""The seller's monitoring signals, read from the database (docs/operations.md, "Monitoring
signals").

Every value is an aggregate the database computes (one row per seller, asset or cycle comes
back, never one per guarantee), so every process on one database — the service, any number of
seller gates — reads the same numbers. Amounts are integer atomic units. Nothing here writes.

A seller's upstream spending (docs/buyer.md, "Fee splits and agent collaboration") is read from
the links of :mod:`fourmica_x402.links` where they live in the Core's database, as an embedded
seller keeps them; a seller on a remote facilitator keeps them in its own records database,
which the Core never reads: it has none here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .clearing import pro_rata
from .store import Tx

__all__ = ["AssetSignals", "CycleSignals", "SellerSignals", "Signals", "read"]

Key = tuple[str, str, str]  # (network, asset, address)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class SellerSignals:
    """One seller (``payTo``, the guarantees' recipient) in one (network, asset)."""

    network: str
    asset: str
    seller: str
    #: Guarantees the Core accepted for the seller, whatever became of them later.
    guarantees: int = 0
    #: Their amounts, summed.
    amount: int = 0
    #: Distinct payers among them.
    payers: int = 0
    #: Closed cycles (closed, resolved or final) in which the seller was paid.
    cycles: int = 0
    #: (cycle, payer) pairs paying the seller in those cycles.
    cycle_payers: int = 0
    #: The seller's guarantees netted in those cycles.
    cycle_guarantees: int = 0
    #: What claiming its net credits would pay it now (resolved and final cycles).
    claimable: int = 0
    #: Upstream guarantees linked to requests the seller sold (whatever became of them), the
    #: amount of those not voided or cancelled (its downstream paid spend), and its fulfilled
    #: paid requests (accepted guarantees now payable: delivered, neither voided nor
    #: cancelled). All three are counted for sellers with links only.
    upstream: int = 0
    downstream_spend: int = 0
    fulfilled: int = 0

    @property
    def average_payment(self) -> int:
        """``floor(amount / guarantees)`` (0 without guarantees)."""
        return self.amount // self.guarantees if self.guarantees else 0

    @property
    def guarantees_per_payer(self) -> float | None:
        return _ratio(self.guarantees, self.payers)

    @property
    def guarantees_per_cycle(self) -> float | None:
        return _ratio(self.cycle_guarantees, self.cycles)

    @property
    def cost_per_fulfilled(self) -> int | None:
        """``floor(downstream_spend / fulfilled)`` (None without a fulfilled request)."""
        return self.downstream_spend // self.fulfilled if self.fulfilled else None


@dataclass(frozen=True, slots=True)
class AssetSignals:
    """One (network, asset): its clearing cycles and how their net debits were settled."""

    network: str
    asset: str
    #: Cycles closed so far (closed, resolved or final), their guarantees and gross.
    cycles: int = 0
    guarantees: int = 0
    gross: int = 0
    #: Σ (collected − claimed) of those cycles: paid in, not yet taken out (rounding dust too).
    unclaimed: int = 0
    #: Net debits of final cycles, and how they were settled: ``net_debit = paid + covered +
    #: shortfall`` (paid by the debtor in the payment window, covered from its collateral at
    #: finality, lost).
    net_debit: int = 0
    paid: int = 0
    covered: int = 0
    shortfall: int = 0
    #: Debtor positions of final cycles not paid in full in time, and their unpaid amount.
    defaulted: int = 0
    defaulted_amount: int = 0

    @property
    def paid_ratio(self) -> float | None:
        """The settlement success rate: ``paid / net_debit`` over final cycles (None: no debit)."""
        return _ratio(self.paid, self.net_debit)


@dataclass(frozen=True, slots=True)
class CycleSignals:
    """One closed cycle, for the charts over the last cycles."""

    cycle_id: int
    network: str
    asset: str
    status: str
    closed_at: float
    guarantees: int
    gross: int
    net_transfers: int
    total_debit: int
    collected: int
    defaults: int
    defaulted_amount: int

    @property
    def average_payment(self) -> int:
        return self.gross // self.guarantees if self.guarantees else 0


@dataclass(frozen=True, slots=True)
class Signals:
    """Per seller, per asset, and the last closed cycles of each asset (oldest first)."""

    sellers: list[SellerSignals] = field(default_factory=list)
    assets: list[AssetSignals] = field(default_factory=list)
    cycles: list[CycleSignals] = field(default_factory=list)


def read(tx: Tx, cycles: int = 0) -> Signals:
    """Every signal, in one read transaction; ``cycles``: how many closed cycles per asset."""
    return Signals(_sellers(tx), _assets(tx), _cycles(tx, cycles) if cycles > 0 else [])


def _ints(row: Any, start: int) -> list[int]:
    return [int(v or 0) for v in row[start:]]


def _sellers(tx: Tx) -> list[SellerSignals]:
    # Per (network, asset, seller): SellerSignals' counts in field order, from `guarantees`.
    rows: dict[Key, list[int]] = {}

    def add(row: Any, at: int, *values: int) -> None:
        counts = rows.setdefault((row[0], row[1], row[2]), [0] * 10)
        for i, value in enumerate(values, start=at):
            counts[i] += value

    # From the tabs, not the guarantees: a tab keeps its guarantees' count and running total
    # (its payer and payee, network and asset are theirs), so a scrape costs the tabs.
    for r in tx.all(
        "SELECT network, asset, recipient_address, SUM(guarantee_count), SUM(total_amount), "
        "COUNT(DISTINCT user_address) FROM fx_tabs WHERE guarantee_count > 0 "
        "GROUP BY network, asset, recipient_address"
    ):
        add(r, 0, *_ints(r, 3))  # guarantees, amount, payers
    # Closed cycles' pairwise matrix, summed per payee as each cycle closes.
    for r in tx.all(
        "SELECT network, asset, payee, cycles, payers, guarantees FROM fx_seller_cycles"
    ):
        add(r, 3, *_ints(r, 3))  # cycles, cycle_payers, cycle_guarantees
    # A final cycle's collected no longer changes: a creditor's share is credit − shortfall.
    for r in tx.all(
        "SELECT c.network, c.asset, p.address, SUM(p.credit - p.shortfall - p.claimed) "
        "FROM fx_cycle_positions p JOIN fx_cycles c ON c.cycle_id = p.cycle_id "
        "WHERE c.status = 'final' AND p.role = 'creditor' GROUP BY c.network, c.asset, p.address"
    ):
        add(r, 6, *_ints(r, 3))  # claimable
    # A resolved cycle (in its payment window; a few at a time) shares what it collected so far.
    for r in tx.all(
        "SELECT c.network, c.asset, p.address, p.credit, p.claimed, c.collected, c.total_debit "
        "FROM fx_cycle_positions p JOIN fx_cycles c ON c.cycle_id = p.cycle_id "
        "WHERE c.status = 'resolved' AND p.role = 'creditor'"
    ):
        credit, claimed, collected, total_debit = _ints(r, 3)
        add(r, 6, max(pro_rata(credit, collected, total_debit) - claimed, 0))
    if _has_links(tx):
        # An upstream guarantee this Core does not know (another Core's) counts as spent.
        for r in tx.all(
            "SELECT l.network, l.asset, l.seller, COUNT(*), SUM(CASE WHEN g.state IS NULL OR "
            "g.state NOT IN ('voided', 'cancelled') THEN l.amount ELSE 0 END) FROM fx_links l "
            "LEFT JOIN fx_guarantees g ON g.guarantee_id = l.guarantee_id "
            "GROUP BY l.network, l.asset, l.seller"
        ):
            add(r, 7, *_ints(r, 3))  # upstream, downstream_spend
        for r in tx.all(
            "SELECT network, asset, recipient_address, COUNT(*) FROM fx_guarantees "
            "WHERE state = 'payable' AND recipient_address IN (SELECT seller FROM fx_links) "
            "GROUP BY network, asset, recipient_address"
        ):
            add(r, 9, *_ints(r, 3))  # fulfilled
    return [SellerSignals(*key, *counts) for key, counts in sorted(rows.items())]


def _has_links(tx: Tx) -> bool:
    """Whether the links' table exists in this database (its migration key in ``fx_meta``)."""
    rows = tx.all("SELECT value FROM fx_meta WHERE key = 'links_schema_version'")
    return bool(rows) and int(rows[0][0]) >= 1


def _assets(tx: Tx) -> list[AssetSignals]:
    # Per (network, asset): AssetSignals' counts in field order, from `cycles`.
    rows: dict[tuple[str, str], list[int]] = {}
    for r in tx.all(
        "SELECT network, asset, COUNT(*), SUM(guarantee_count), SUM(gross), "
        "SUM(collected - claimed) FROM fx_cycles WHERE status <> 'open' GROUP BY network, asset"
    ):
        rows[(r[0], r[1])] = [*_ints(r, 2), 0, 0, 0, 0, 0, 0]
    for r in tx.all(
        "SELECT c.network, c.asset, SUM(p.debit), SUM(p.paid), SUM(p.covered), SUM(p.shortfall), "
        "SUM(CASE WHEN p.status = 'defaulted' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN p.status = 'defaulted' THEN p.debit - p.paid ELSE 0 END) "
        "FROM fx_cycle_positions p JOIN fx_cycles c ON c.cycle_id = p.cycle_id "
        "WHERE c.status = 'final' AND p.role = 'debtor' GROUP BY c.network, c.asset"
    ):
        rows.setdefault((r[0], r[1]), [0] * 10)[4:] = _ints(r, 2)
    return [AssetSignals(*key, *counts) for key, counts in sorted(rows.items())]


def _cycles(tx: Tx, last: int) -> list[CycleSignals]:
    found = tx.all(
        "SELECT cycle_id, network, asset, status, closed_at, guarantee_count, gross, "
        "net_transfers, total_debit, collected FROM (SELECT c.*, ROW_NUMBER() OVER "
        "(PARTITION BY network, asset ORDER BY cycle_id DESC) AS nth FROM fx_cycles c "
        "WHERE status <> 'open') AS q WHERE nth <= ? "
        "ORDER BY network COLLATE BINARY, asset COLLATE BINARY, cycle_id",
        (int(last),),
    )
    defaults: dict[int, tuple[int, int]] = {}
    if found:
        marks = ", ".join("?" * len(found))
        for r in tx.all(
            "SELECT cycle_id, COUNT(*), SUM(debit - paid) FROM fx_cycle_positions "
            f"WHERE status = 'defaulted' AND cycle_id IN ({marks}) GROUP BY cycle_id",
            [int(r[0]) for r in found],
        ):
            defaults[int(r[0])] = (int(r[1]), int(r[2] or 0))
    out = []
    for r in found:
        guarantees, gross, transfers, debit, collected = _ints(r, 5)
        count, unpaid = defaults.get(int(r[0]), (0, 0))
        out.append(
            CycleSignals(
                int(r[0]),
                r[1],
                r[2],
                r[3],
                float(r[4] or 0.0),
                guarantees,
                gross,
                transfers,
                debit,
                collected,
                count,
                unpaid,
            )
        )
    return out
