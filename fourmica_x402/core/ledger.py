"""The Core: collateral, tabs, guarantee acceptance, clearing cycles, withdrawals.

:class:`Core` is the facade: it owns the store, the config and the clock. Each of its
state changes is one database transaction (docs/architecture.md, "The Core's
transactions"), opened here and handed (``tx``) to a function of the topic's module —
:mod:`.collateral`, :mod:`.tabs`, :mod:`.acceptance`, :mod:`.resolution`, :mod:`.certs`,
:mod:`.cycles`, :mod:`.withdrawals`, :mod:`.queries`, :mod:`.audit` — which never opens
one itself; events go through :mod:`.feed`. The read-only methods, one read transaction
each, are in :mod:`._reads`. A result read back after a change (``deposit`` → its
position) is a read transaction of its own, after the commit. Checks that need no
database (claims shape, binding hashes, the signature) run before the transaction, so a
write lock is never held across a signature recovery.

Concurrency rules, for SQLite (``BEGIN IMMEDIATE`` serialises writers) and PostgreSQL
(READ COMMITTED) alike: a capacity lock is one conditional ``UPDATE … WHERE credit_limit −
locked − pending_withdrawal ≥ amount`` (two sellers racing for the last unit never both
win); a replay is stopped by the ``(tab_id, req_id)`` primary key, never deleted; a state
transition is a conditional update on the old state, so it happens once; a row read, then
written, is first locked with a no-op ``UPDATE``; a transaction PostgreSQL made a deadlock's
victim is run again (:func:`.store.retried`).

Money is conserved: :mod:`.audit` checks it (and the property tests run the audit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from fractions import Fraction
from typing import Any, Concatenate, ParamSpec, TypeVar

from .._eth import parse_address
from ..errors import CoreError, GuaranteeRejected, Reason
from ..guarantee import Eip712Domain, SignedGuarantee
from . import acceptance, certs, collateral, cycles, queries, resolution, tabs, withdrawals
from ._reads import Reads
from .alerts import Alerting
from .certs import Certifying, Operator
from .common import check_amount, rejected
from .config import SANDBOX_CONTRACT, SANDBOX_REGISTRY, CoreConfig, Domains
from .feed import EventFeed, Events
from .models import (
    Acceptance,
    Cycle,
    CyclePosition,
    Event,
    Expected,
    GuaranteeRecord,
    Position,
    Tab,
    Withdrawal,
)
from .schema import migrate
from .store import Conflict, Store, Tx, WouldBlock, open_store, retried
from .store.deferred import Task

__all__ = ["SANDBOX_CONTRACT", "SANDBOX_REGISTRY", "Core", "CoreConfig"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Core(Alerting, Certifying, Reads):
    """The embedded Core over a :class:`~fourmica_x402.core.store.Store`.

    ``Core("sqlite:///fourmica.db")`` opens (and migrates) a SQLite file;
    ``Core("postgresql://…")`` a PostgreSQL database. Thread-safe; several
    processes may share one database. Its read-only methods (``position``, ``guarantees``,
    ``cycles``, ``audit`` …) come from :class:`~._reads.Reads`; ``check_alerts`` and
    ``record_alert`` from :class:`~.alerts.Alerting`.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        config: CoreConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store: Store = open_store(store) if isinstance(store, str) else store
        self.config = config or CoreConfig()
        self.clock = clock
        migrate(self.store)
        seed = self.config.operator_seed
        if not seed:
            with self.store.transaction() as tx:
                seed = certs.stored_seed(tx)
        self.operator = Operator(seed)
        self._domains = Domains(self.config)
        self._feed = EventFeed()
        self._open_counts = tabs.OpenTabCounts()

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _write(self, nowait: bool = False) -> Iterator[tuple[Tx, Events]]:
        """A write transaction plus its event list, stored with it, delivered after commit."""
        pending: Events = []
        with self.store.transaction(nowait=nowait) as tx:
            yield tx, pending
            EventFeed.store(tx, pending)
        self._feed.deliver(pending)

    def _change(
        self, fn: Callable[Concatenate[Tx, Events, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        """``fn(tx, events, …)`` in one write transaction (a state change), retried."""

        def change() -> _T:
            with self._write() as (tx, events):
                return fn(tx, events, *args, **kw)

        return retried(change)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after each committed change (best effort: never blocks or
        fails a Core operation; events are stored too, :meth:`events`). Returns an unsubscriber."""
        return self._feed.subscribe(callback)

    def domain(self, chain_id: int) -> Eip712Domain:
        """The EIP-712 domain guarantees on ``chain_id`` are signed in."""
        return self._domains.eip712(chain_id)

    def guarantee_domain(self, chain_id: int) -> bytes:
        """The guarantee domain separator certificates on ``chain_id`` carry."""
        return self._domains.guarantee(chain_id)

    # -- collateral -----------------------------------------------------------------------------

    def deposit(
        self, address: str, amount: int, *, network: str, asset: str | None = None
    ) -> Position:
        """Add collateral (sandbox: at once). ``amount`` in atomic units."""
        address, asset = parse_address(address), self._asset(network, asset)
        check_amount(amount)
        now = self.clock()
        self._change(collateral.deposit, network, asset, address, amount, now)
        return self.position(address, network=network, asset=asset)

    def set_factor(self, network: str, asset: str | None, factor: str | int | Fraction) -> None:
        """Set an asset's collateral factor (``capacity = floor(collateral × factor) − …``)."""
        asset = self._asset(network, asset)
        value = Fraction(factor)
        if value <= 0:
            raise CoreError("factor must be positive", reason="invalid_amount", status=400)

        def change() -> None:  # it locks every position of the asset: a deadlock's victim
            with self._write() as (tx, _):  # on PostgreSQL, like any change, runs again
                collateral.set_factor(tx, network, asset, value)

        retried(change)

    def suspend(self, address: str, suspended: bool = True) -> None:
        """Suspend (or reinstate) a payer: its guarantees are refused while suspended."""
        address = parse_address(address)
        self._change(lambda tx, _: collateral.suspend(tx, address, suspended))

    # -- tabs -----------------------------------------------------------------------------------

    def open_tab(
        self,
        user: str,
        recipient: str,
        *,
        network: str,
        asset: str | None = None,
        guarantee_version: int = 1,
        ttl_seconds: int | None = None,
        max_open_tabs: int | None = None,
        admit_new: Callable[[], None] | None = None,
    ) -> Tab:
        """The active tab of (user, recipient, asset, version), opened if needed.

        Every call hands out the next unused request id (0 on a new tab, ≥ 1 on a reuse).
        Only a *new* tab is subject to the two guards, never a reuse of the active one
        (docs/operations.md, "The tab endpoint"):

        - ``max_open_tabs``: refuse (:class:`TabLimited`, ``open_tab_limit``) when the
          recipient already has that many unexpired tabs;
        - ``admit_new``: called inside the transaction just before a new tab is written;
          whatever it raises refuses the tab, and nothing is written.
        """
        user, recipient = parse_address(user), parse_address(recipient)
        tabs.check_parties(user, recipient)
        asset = self._asset(network, asset)
        if guarantee_version not in self.config.accepted_versions:
            raise rejected(Reason.UNSUPPORTED_VERSION, f"guarantee version {guarantee_version}")
        ttl = tabs.checked_ttl(int(ttl_seconds or self.config.tab_ttl))
        key = (user, recipient, network, asset, guarantee_version)
        for _attempt in range(5):
            try:
                with self._write() as (tx, _):
                    return tabs.open_once(
                        tx, key, ttl, self.clock(), self._open_counts, max_open_tabs, admit_new
                    )
            except tabs.Retry:  # another process replaced the active tab first (PostgreSQL)
                continue
        raise CoreError("could not open a tab under contention", reason="conflict", status=503)

    # -- guarantees -----------------------------------------------------------------------------

    def verify(self, signed: SignedGuarantee, expected: Expected) -> str:
        """Every acceptance check that changes nothing, capacity included. Returns the payer."""
        claims = acceptance.precheck(signed, expected, self.config, self._domains)
        with self.store.transaction(write=False) as tx:
            return acceptance.verify(tx, claims, expected, self.clock(), self.config.max_clock_skew)

    def accept(
        self,
        signed: SignedGuarantee,
        expected: Expected,
        *,
        also: Callable[[Tx, Acceptance], Any] | None = None,
        nowait: bool = False,
    ) -> Acceptance:
        """Accept a guarantee (docs/protocol.md, "Acceptance"): all checks, then lock capacity, in one transaction.

        ``also(tx, acceptance)`` runs inside that transaction once the guarantee is
        stored (the gate writes its payment record there: one commit, not two); if it
        raises, nothing is accepted. ``nowait=True``: raise
        :class:`~fourmica_x402.core.store.WouldBlock` rather than wait for the database
        (nothing is done then), so an event loop may call it directly.

        Raises :class:`~fourmica_x402.errors.GuaranteeRejected` with a stable reason.
        """
        claims = acceptance.precheck(signed, expected, self.config, self._domains)
        gid = acceptance.id_of(claims, expected.network)

        def attempt() -> Acceptance:
            with self._write(nowait) as (tx, events):
                now = self.clock()  # once the lock is won: the checks and accepted_at use it
                accepted = acceptance.accept(
                    tx, events, signed, expected, gid, now, self.config, self.store
                )
                if also is not None:
                    also(tx, accepted)
            return accepted

        try:
            accepted = retried(attempt)
        except Conflict:
            raise rejected(Reason.REPLAYED_REQUEST_ID) from None
        except GuaranteeRejected as exc:  # a full tab is not handed out again
            if exc.reason == Reason.TAB_TOTAL_EXCEEDED:
                with suppress(WouldBlock), self._write(nowait) as (tx, _):
                    tabs.retire(tx, claims.tab_id)
            raise
        return accepted

    def void(self, guarantee_id: str, *, by: str) -> GuaranteeRecord:
        """The seller (recipient) refunds a guarantee before it is netted: the lock is released."""
        self.resolve(guarantee_id, by=by, score=None)
        return self.guarantee(guarantee_id)

    def post_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> GuaranteeRecord:
        """The sandbox validation registry: the named validator posts a score (0–100).

        ``score ≥ min_validation_score`` makes a G-v2 guarantee payable; a lower
        score cancels it and releases the lock.
        """
        resolution.check_score(score)
        resolution.check_tag(tag)
        self.resolve(guarantee_id, by=validator, score=score, tag=tag)
        return self.guarantee(guarantee_id)

    def resolve(
        self,
        guarantee_id: str,
        *,
        by: str,
        score: int | None,
        tag: str = "",
        also: Callable[[Tx], Any] | None = None,
        nowait: bool = False,
    ) -> None:
        """Void (``score=None``, by the recipient) or score (by the validator) one guarantee.

        ``also(tx)`` runs in the same transaction (the gate completes its payment
        record there, so a delivery costs one commit). ``nowait`` as in :meth:`accept`.
        """
        by, clock = parse_address(by), self.clock  # read once the guarantee's row is ours

        def change() -> None:
            with self._write(nowait) as (tx, events):
                resolution.resolve(
                    tx, events, guarantee_id, by, score, tag, clock, self.config, self.store
                )
                if also is not None:
                    also(tx)

        retried(change)

    def resolve_later(
        self,
        guarantee_id: str,
        *,
        by: str,
        score: int | None,
        tag: str = "",
        also: Callable[[Tx], Any] | None = None,
        failed: Callable[[Exception], None] | None = None,
        payer: str = "",
    ) -> None:
        """:meth:`resolve`, committed off the caller's path: with this process's next write
        or within the store's window (docs/architecture.md, "Completion off the request path").
        ``payer`` (the guarantee's, when known) orders it among a batch's writes.

        ``also(tx)`` runs in the same transaction. If the resolution is refused (a
        :class:`~fourmica_x402.errors.CoreError`) or cannot be written, nothing of it or of
        ``also`` is written and ``failed(error)`` is called, outside any transaction.
        """
        by = parse_address(by)
        events: Events = []

        def apply(tx: Tx) -> None:
            events.clear()  # a batch that failed elsewhere applies each job again
            resolution.resolve(
                tx, events, guarantee_id, by, score, tag, self.clock, self.config, self.store
            )
            if also is not None:
                also(tx)
            EventFeed.store(tx, events)

        self.store.deferred.submit(
            Task(apply, committed=lambda: self._feed.deliver(events), failed=failed, order=payer)
        )

    def expire_validations(self) -> int:
        """Cancel the G-v2 guarantees whose validation deadline passed (part of :meth:`tick`)."""
        return self._change(resolution.expire_validations, self.clock())

    def extend_validations(self, guarantee_ids: Sequence[str], *, by: str) -> int:
        """Validator ``by`` holds them open (responses still going out): deadline now + timeout."""
        validator, timeout = parse_address(by), self.config.validation_timeout
        ids, clock, locks = list(guarantee_ids), self.clock, self.store
        return self._change(resolution.extend, ids, validator, clock, timeout, locks)

    # -- clearing cycles ------------------------------------------------------------------------

    def current_cycle(self, *, network: str, asset: str | None = None) -> Cycle:
        """The open cycle of (network, asset), opened now if there is none."""
        asset = self._asset(network, asset)
        config, store = self.config, self.store
        row = self._change(
            lambda tx, _: cycles.open_cycle(tx, network, asset, self.clock(), config, store)
        )
        return queries.cycle_from_row(row)

    def close_cycle(self, *, network: str, asset: str | None = None) -> Cycle:
        """Close the open cycle now: freeze its payable guarantees, net them, open the next."""
        asset = self._asset(network, asset)
        now, config = self.clock(), self.config
        return self.cycle(self._change(cycles.close_open, network, asset, now, config, self.store))

    def tick(self) -> dict[str, int]:
        """Advance everything that is due: validation timeouts and cycle phases.

        Call it periodically (the service does); each step is its own
        transaction and safe to run from several processes at once.
        """
        now = self.clock()
        expired = self._change(resolution.expire_validations, now)
        done = {"validations_expired": expired, "closed": 0, "resolved": 0, "finalized": 0}
        for cycle in self.due_cycles("open", now):
            self._change(cycles.close, cycle.cycle_id, cycle.network, cycle.asset, now, self.config)
            done["closed"] += 1
        for cycle in self.due_cycles("closed", now):
            self._change(cycles.resolve, cycle, now)
            done["resolved"] += 1
        for cycle in self.due_cycles("resolved", now):
            self._change(cycles.finalize, cycle, now)
            done["finalized"] += 1
        return done

    def pay_net_debit(
        self, cycle_id: int, address: str, amount: int | None = None
    ) -> CyclePosition:
        """A debtor pays (part of) its net debit during the payment window (sandbox: from outside)."""
        address = parse_address(address)
        now = self.clock()
        self._change(cycles.pay_net_debit, cycle_id, address, amount, now)
        return next(p for p in self.cycle_positions(cycle_id) if p.address == address)

    def claim_net_credit(self, cycle_id: int, address: str) -> int:
        """A creditor takes what has been paid in for it so far (pro rata). Returns the amount."""
        address = parse_address(address)
        now = self.clock()
        return self._change(cycles.claim_net_credit, cycle_id, address, now)

    # -- withdrawals ----------------------------------------------------------------------------

    def request_withdrawal(
        self, address: str, amount: int, *, network: str, asset: str | None = None
    ) -> Withdrawal:
        """Ask to withdraw collateral: capacity drops at once; funds move after the grace period."""
        address, asset = parse_address(address), self._asset(network, asset)
        check_amount(amount)
        grace = self.config.withdrawal_grace
        found = self._change(
            withdrawals.request, network, asset, address, amount, self.clock(), grace
        )
        return self.withdrawal(found)

    def cancel_withdrawal(self, withdrawal_id: int) -> Withdrawal:
        now = self.clock()
        self._change(lambda tx, _: withdrawals.cancel(tx, withdrawal_id, now))
        return self.withdrawal(withdrawal_id)

    def finalize_withdrawal(self, withdrawal_id: int) -> Withdrawal:
        """Pay out a pending withdrawal after its grace period, if what stays covers the locks."""
        now = self.clock()
        self._change(withdrawals.finalize, withdrawal_id, now)
        return self.withdrawal(withdrawal_id)

    def close(self) -> None:
        self.store.close()
