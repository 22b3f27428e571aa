"""The Core's reads: every read-only method of :class:`~.ledger.Core`, each one read
transaction (docs/architecture.md, "The Core's transactions") over :mod:`.queries`,
:mod:`.tabs`, :mod:`.signals` or :mod:`.audit`. :class:`Reads` is a mixin of the facade, so the
Core's public API stays one class; nothing here changes the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

from .._eth import parse_address
from . import audit, collateral, queries, signals, tabs
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
from .signals import Signals
from .store import Store, Tx

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Reads:
    """The read-only half of :class:`~.ledger.Core`: needs its ``store`` and ``clock``."""

    store: Store
    clock: Callable[[], float]

    # -- plumbing ------------------------------------------------------------------------------

    def _query(self, fn: Callable[Concatenate[Tx, _P], _T], *args: _P.args, **kw: _P.kwargs) -> _T:
        """``fn(tx, …)`` in one read transaction."""
        with self.store.transaction(write=False) as tx:
            return fn(tx, *args, **kw)

    def _asset(self, network: str, asset: str | None) -> str:
        return collateral.asset_address(network, asset)

    # -- collateral ----------------------------------------------------------------------------

    def position(self, address: str, *, network: str, asset: str | None = None) -> Position:
        address, asset = parse_address(address), self._asset(network, asset)
        return self._query(queries.position, network, asset, address)

    def positions(self, *, network: str | None = None) -> list[Position]:
        return self._query(queries.positions, network)

    # -- tabs ----------------------------------------------------------------------------------

    def open_tab_count(self, recipient: str) -> int:
        """How many unexpired tabs ``recipient`` has (an indexed range count)."""
        with self.store.transaction(write=False) as tx:
            return tabs.open_tab_count(tx, parse_address(recipient), int(self.clock()))

    def tab(self, tab_id: int) -> Tab | None:
        return self._query(queries.tab, tab_id)

    # -- guarantees ----------------------------------------------------------------------------

    def guarantee(self, guarantee_id: str) -> GuaranteeRecord:
        return self._query(queries.guarantee, guarantee_id)

    def guarantees(
        self,
        *,
        address: str | None = None,
        state: str | None = None,
        cycle_id: int | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[GuaranteeRecord]:
        """Recent guarantees, newest first, filtered by participant, state or cycle; ``before``:
        the id of the last one of the previous page (``unknown_guarantee`` if none has it)."""
        address = parse_address(address) if address else None
        return self._query(queries.guarantees, address, state, cycle_id, limit, before)

    # -- clearing cycles -----------------------------------------------------------------------

    def cycle(self, cycle_id: int) -> Cycle:
        return self._query(queries.cycle, cycle_id)

    def cycles(
        self, *, status: str | None = None, network: str | None = None, limit: int = 1000
    ) -> list[Cycle]:
        return self._query(queries.cycles, status, network, limit)

    def due_cycles(self, status: str, now: float) -> Iterator[Cycle]:
        """Every cycle in ``status`` (open, closed, resolved) whose next step is due, oldest
        first, read a page at a time; none made meanwhile (closing one opens the next)."""
        after, upto = 0, self._query(queries.last_cycle_id)
        while page := self._query(queries.due_cycles, status, now, after, upto, 500):
            yield from page
            after = page[-1].cycle_id

    def cycle_positions(self, cycle_id: int) -> list[CyclePosition]:
        return self._query(queries.cycle_positions, cycle_id)

    def payer_counts(self, cycle_id: int) -> list[int]:
        """How many guarantees each payer had in a cycle (for metrics)."""
        return self._query(queries.payer_counts, cycle_id)

    def cycle_pairs(self, cycle_id: int) -> list[CyclePair]:
        return self._query(queries.cycle_pairs, cycle_id)

    def signals(self, *, cycles: int = 0) -> Signals:
        """The monitoring signals per seller and per asset, and the last ``cycles`` closed
        cycles of each asset (docs/operations.md, "Monitoring signals")."""
        return self._query(signals.read, cycles)

    # -- withdrawals ---------------------------------------------------------------------------

    def withdrawal(self, withdrawal_id: int) -> Withdrawal:
        return self._query(queries.withdrawal, withdrawal_id)

    def withdrawals(self, *, address: str | None = None, limit: int = 100) -> list[Withdrawal]:
        address = parse_address(address) if address else None
        return self._query(queries.withdrawals, address, limit)

    # -- audit ---------------------------------------------------------------------------------

    def events(self, *, after: int = 0, limit: int = 1000, type: str | None = None) -> list[Event]:
        """Stored events with ``event_id > after``, oldest first (a durable feed)."""
        return self._query(queries.events, after, limit, type)

    def totals(self, *, network: str, asset: str | None = None) -> dict[str, int]:
        """Money totals for the conservation audit of one (network, asset)."""
        asset = self._asset(network, asset)
        return self._query(audit.totals, network, asset)

    def audit(self) -> list[str]:
        """Check the Core's invariants; returns the violations (empty when consistent).

        - every lock is explained: a position's ``locked`` equals its live
          guarantees (payable, pending validation, netted in a cycle not yet
          resolved) plus its unpaid net debits in resolved cycles;
        - money is conserved per (network, asset);
        - every closed cycle nets to zero (Σ debits = Σ credits) and pays out
          no more than it collected;
        - a tab's running total equals the sum of its guarantees.
        """
        with self.store.transaction(write=False, snapshot=True) as tx:  # one state throughout
            return audit.problems(tx)
