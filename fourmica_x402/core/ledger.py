"""The Core: collateral, tabs, guarantee acceptance, clearing cycles, withdrawals.

Every state change is one database transaction. Checks that need no
database (claims shape, binding hashes, the signature) run before the
transaction, so a write lock is never held across a signature recovery.

Concurrency rules, for SQLite (``BEGIN IMMEDIATE`` serialises writers) and
PostgreSQL (READ COMMITTED) alike:

- a capacity lock is one conditional ``UPDATE … WHERE credit_limit − locked
  − pending_withdrawal ≥ amount``: two sellers racing for the last unit can
  never both win;
- a replay is stopped by the ``(tab_id, req_id)`` primary key, never deleted;
- state transitions are conditional updates on the old state (``WHERE state
  = 'payable'``, ``WHERE status = 'open'``), so a transition happens once;
- a row that is read, then written, is first locked with a no-op ``UPDATE``.

Money conservation (checked by the property tests)::

    Σ collateral + Σ (cycle collected − cycle claimed) = Σ external in − Σ external out

where external in = deposits + net debits paid, external out = withdrawals
+ net credits claimed. Default coverage moves collateral into its cycle.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .._eth import keccak, parse_address
from ..errors import CoreError, GuaranteeRejected, Reason, TabLimited
from ..guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    certificate_message,
    guarantee_domain,
    guarantee_id,
    recover_signer,
)
from ..networks import default_asset, find_asset, get_network
from . import clearing
from .certs import Certificate, Operator
from .models import (
    Acceptance,
    Cycle,
    CyclePair,
    CyclePosition,
    Event,
    Expected,
    GuaranteeRecord,
    Position,
    Tab,
    Withdrawal,
)
from .schema import migrate
from .store import Conflict, Row, Store, Tx, open_store

__all__ = ["SANDBOX_CONTRACT", "SANDBOX_REGISTRY", "Core", "CoreConfig"]

log = logging.getLogger("fourmica_x402.core")

#: Address the sandbox Core reports as its contract (no chain behind it).
SANDBOX_CONTRACT = parse_address("0x" + keccak(b"fourmica-x402 sandbox core")[-20:].hex())
#: Address of the embedded sandbox validation registry.
SANDBOX_REGISTRY = parse_address(
    "0x" + keccak(b"fourmica-x402 sandbox validation registry")[-20:].hex()
)
_INT64_MAX = (1 << 63) - 1
_LIVE = ("payable", "pending_validation")
#: Seconds a count of a seller's open tabs is trusted while well below the cap.
_OPEN_COUNT_FRESH = 5.0


@dataclass(frozen=True, kw_only=True)
class CoreConfig:
    """Core parameters. Durations are seconds; all may be set down to seconds for tests."""

    tab_ttl: int = 86_400
    max_clock_skew: int = 5
    validation_timeout: float = 3_600.0
    cycle_window: float = 86_400.0
    resolution_delay: float = 6 * 3_600.0
    payment_window: float = 2 * 3_600.0
    finality: float = 2 * 3_600.0
    withdrawal_grace: float = 22 * 86_400.0
    accepted_versions: tuple[int, ...] = (1, 2)
    eip712_name: str = "4mica"
    eip712_version: str = "1"
    contract_address: str = SANDBOX_CONTRACT
    trusted_registries: tuple[str, ...] = (SANDBOX_REGISTRY,)
    #: The 32-byte BLS seed of the operator key; None: generated once and kept in the database.
    operator_seed: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.tab_ttl <= 0:
            raise ValueError("tab_ttl must be positive")
        for name in ("cycle_window", "resolution_delay", "payment_window", "finality"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def _rejected(reason: Reason, message: str | None = None) -> GuaranteeRejected:
    return GuaranteeRejected(message, reason=reason)


class Core:
    """The embedded Core over a :class:`~fourmica_x402.core.store.Store`.

    ``Core("sqlite:///fourmica.db")`` opens (and migrates) a SQLite file;
    ``Core("postgresql://…")`` a PostgreSQL database. Thread-safe; several
    processes may share one database.
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
        self.operator = Operator(self.config.operator_seed or self._stored_seed())
        self._domains: dict[int, Eip712Domain] = {}
        self._guarantee_domains: dict[int, bytes] = {}
        self._subscribers: list[Callable[[Event], None]] = []
        self._sub_lock = threading.Lock()
        #: recipient → (monotonic time counted, open tabs then + opened here since).
        self._open_counts: dict[str, tuple[float, int]] = {}
        self._open_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------------

    def _stored_seed(self) -> bytes:
        with self.store.transaction() as tx:
            row = tx.one("SELECT value FROM fx_meta WHERE key = 'operator_seed'")
            if row:
                return bytes.fromhex(row[0])
            _, seed = Operator.generate()
            tx.execute(
                "INSERT INTO fx_meta (key, value) VALUES ('operator_seed', ?) "
                "ON CONFLICT (key) DO NOTHING",
                (seed.hex(),),
            )
            row = tx.one("SELECT value FROM fx_meta WHERE key = 'operator_seed'")
            assert row is not None
            return bytes.fromhex(row[0])

    @contextmanager
    def _write(self, nowait: bool = False) -> Iterator[tuple[Tx, list[tuple[Any, ...]]]]:
        """A write transaction plus an event list, dispatched only after commit."""
        pending: list[tuple[Any, ...]] = []
        with self.store.transaction(nowait=nowait) as tx:
            yield tx, pending
            for item in pending:
                tx.execute(
                    "INSERT INTO fx_events (type, at, network, asset, address, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    item,
                )
        if pending and self._subscribers:
            for type_, at, network, asset, address, data in pending:
                self._dispatch(Event(0, type_, at, network, asset, address, json.loads(data)))

    @staticmethod
    def _event(
        pending: list[tuple[Any, ...]],
        type_: str,
        at: float,
        network: str | None,
        asset: str | None,
        address: str | None,
        **data: Any,
    ) -> None:
        pending.append((type_, at, network, asset, address, json.dumps(data, sort_keys=True)))

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after each committed change; returns an unsubscribe function.

        Events are also stored durably (:meth:`events`); in-process delivery is
        best effort and never blocks or fails a Core operation.
        """
        with self._sub_lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._sub_lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def _dispatch(self, event: Event) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not undo a committed payment
                log.exception("event subscriber failed on %s", event.type)

    def domain(self, chain_id: int) -> Eip712Domain:
        """The EIP-712 domain guarantees on ``chain_id`` are signed in."""
        domain = self._domains.get(chain_id)
        if domain is None:
            domain = Eip712Domain(chain_id, self.config.eip712_name, self.config.eip712_version)
            self._domains[chain_id] = domain
        return domain

    def guarantee_domain(self, chain_id: int) -> bytes:
        """The guarantee domain separator certificates on ``chain_id`` carry."""
        value = self._guarantee_domains.get(chain_id)
        if value is None:
            value = guarantee_domain(chain_id, self.config.contract_address)
            self._guarantee_domains[chain_id] = value
        return value

    def _asset(self, network: str, asset: str | None) -> str:
        get_network(network)
        if asset is None:
            return default_asset(network).address
        known = find_asset(network, asset)
        return known.address if known else parse_address(asset)

    @staticmethod
    def _factor(tx: Tx, network: str, asset: str) -> Fraction:
        # Read inside the transaction, never cached: another process may have changed it.
        row = tx.one(
            "SELECT factor FROM fx_asset_params WHERE network = ? AND asset = ?", (network, asset)
        )
        return Fraction(row[0]) if row else Fraction(1)

    def _lock_position(self, tx: Tx, network: str, asset: str, address: str) -> tuple[int, ...]:
        """Create-if-missing and row-lock a position; returns (collateral, credit_limit, locked, pending)."""
        tx.execute(
            "INSERT INTO fx_positions (network, asset, address) VALUES (?, ?, ?) "
            "ON CONFLICT (network, asset, address) DO NOTHING",
            (network, asset, address),
        )
        row = tx.one(
            "UPDATE fx_positions SET collateral = collateral "
            "WHERE network = ? AND asset = ? AND address = ? "
            "RETURNING collateral, credit_limit, locked, pending_withdrawal",
            (network, asset, address),
        )
        assert row is not None
        return tuple(int(v) for v in row)

    def _set_collateral(
        self, tx: Tx, network: str, asset: str, address: str, collateral: int
    ) -> None:
        limit = int(collateral * self._factor(tx, network, asset))
        tx.execute(
            "UPDATE fx_positions SET collateral = ?, credit_limit = ? "
            "WHERE network = ? AND asset = ? AND address = ?",
            (collateral, min(limit, _INT64_MAX), network, asset, address),
        )

    # -- collateral -----------------------------------------------------------------------------

    def deposit(
        self, address: str, amount: int, *, network: str, asset: str | None = None
    ) -> Position:
        """Add collateral (sandbox: at once). ``amount`` in atomic units."""
        address, asset = parse_address(address), self._asset(network, asset)
        _check_amount(amount)
        now = self.clock()
        with self._write() as (tx, events):
            collateral, *_ = self._lock_position(tx, network, asset, address)
            if collateral + amount > _INT64_MAX:
                raise CoreError("collateral would overflow", reason="invalid_amount", status=400)
            self._set_collateral(tx, network, asset, address, collateral + amount)
            self._flow(tx, "deposit", network, asset, address, amount, now)
            self._event(events, "collateral.deposited", now, network, asset, address, amount=amount)
        return self.position(address, network=network, asset=asset)

    def set_factor(self, network: str, asset: str | None, factor: str | int | Fraction) -> None:
        """Set an asset's collateral factor (``capacity = floor(collateral × factor) − …``)."""
        asset = self._asset(network, asset)
        value = Fraction(factor)
        if value <= 0:
            raise CoreError("factor must be positive", reason="invalid_amount", status=400)
        with self._write() as (tx, _):
            tx.execute(
                "INSERT INTO fx_asset_params (network, asset, factor) VALUES (?, ?, ?) "
                "ON CONFLICT (network, asset) DO UPDATE SET factor = excluded.factor",
                (network, asset, str(value)),
            )
            rows = tx.all(
                "SELECT address, collateral FROM fx_positions WHERE network = ? AND asset = ?",
                (network, asset),
            )
            for address, collateral in rows:
                self._set_collateral(tx, network, asset, address, int(collateral))

    def position(self, address: str, *, network: str, asset: str | None = None) -> Position:
        address, asset = parse_address(address), self._asset(network, asset)
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT collateral, credit_limit, locked, pending_withdrawal FROM fx_positions "
                "WHERE network = ? AND asset = ? AND address = ?",
                (network, asset, address),
            )
        return Position(network, asset, address, *(int(v) for v in (row or (0, 0, 0, 0))))

    def positions(self, *, network: str | None = None) -> list[Position]:
        sql = "SELECT network, asset, address, collateral, credit_limit, locked, pending_withdrawal FROM fx_positions"
        params: tuple[Any, ...] = ()
        if network:
            sql += " WHERE network = ?"
            params = (network,)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY network, asset, address", params)
        return [Position(r[0], r[1], r[2], *(int(v) for v in r[3:])) for r in rows]

    def suspend(self, address: str, suspended: bool = True) -> None:
        """Suspend (or reinstate) a payer: its guarantees are refused while suspended."""
        address = parse_address(address)
        with self._write() as (tx, _):
            tx.execute(
                "INSERT INTO fx_participants (address, suspended) VALUES (?, ?) "
                "ON CONFLICT (address) DO UPDATE SET suspended = excluded.suspended",
                (address, int(suspended)),
            )

    def _flow(
        self,
        tx: Tx,
        kind: str,
        network: str,
        asset: str,
        address: str,
        amount: int,
        at: float,
        ref: str | None = None,
    ) -> None:
        tx.execute(
            "INSERT INTO fx_flows (kind, network, asset, address, amount, at, ref) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, network, asset, address, amount, at, ref),
        )

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
        asset = self._asset(network, asset)
        if guarantee_version not in self.config.accepted_versions:
            raise _rejected(Reason.UNSUPPORTED_VERSION, f"guarantee version {guarantee_version}")
        ttl = int(ttl_seconds or self.config.tab_ttl)
        if ttl <= 0:
            raise CoreError("ttlSeconds must be positive", reason="invalid_ttl", status=400)
        key = (user, recipient, network, asset, guarantee_version)
        for _attempt in range(5):
            try:
                return self._open_tab_once(key, ttl, max_open_tabs, admit_new)
            except _Retry:  # another process replaced the active tab first (PostgreSQL)
                continue
        raise CoreError("could not open a tab under contention", reason="conflict", status=503)

    def _open_tab_once(
        self,
        key: tuple[str, str, str, str, int],
        ttl: int,
        max_open: int | None = None,
        admit_new: Callable[[], None] | None = None,
    ) -> Tab:
        _, recipient, _, asset, guarantee_version = key
        now = int(self.clock())
        with self._write() as (tx, _):
            row = tx.one(
                "SELECT t.tab_id, t.start_ts, t.ttl FROM fx_active_tabs a "
                "JOIN fx_tabs t ON t.tab_id = a.tab_id WHERE a.user_address = ? AND "
                "a.recipient_address = ? AND a.network = ? AND a.asset = ? AND "
                "a.guarantee_version = ?",
                key,
            )
            if row is not None and now <= int(row[1]) + int(row[2]):
                nxt = tx.one(
                    "UPDATE fx_tabs SET next_req_id = next_req_id + 1 WHERE tab_id = ? "
                    "RETURNING next_req_id",
                    (row[0],),
                )
                assert nxt is not None
                return Tab(
                    int(row[0], 16),
                    *key[:3],
                    asset,
                    guarantee_version,
                    int(row[1]),
                    int(row[2]),
                    int(nxt[0]) - 1,
                )
            if max_open is not None:
                self._check_open_cap(tx, recipient, now, max_open)
            if admit_new is not None:
                admit_new()
            tab_id = secrets.randbits(256)
            tx.execute(
                "INSERT INTO fx_tabs (tab_id, user_address, recipient_address, network, asset, "
                "guarantee_version, start_ts, ttl, next_req_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (_hex(tab_id), *key, now, ttl),
            )
            if row is None:
                changed = tx.execute(
                    "INSERT INTO fx_active_tabs (user_address, recipient_address, network, asset, "
                    "guarantee_version, tab_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (*key, _hex(tab_id)),
                )
            else:
                changed = tx.execute(
                    "UPDATE fx_active_tabs SET tab_id = ? WHERE user_address = ? AND "
                    "recipient_address = ? AND network = ? AND asset = ? AND "
                    "guarantee_version = ? AND tab_id = ?",
                    (_hex(tab_id), *key, row[0]),
                )
            if changed == 1:
                if max_open is not None:
                    self._counted_open_tab(recipient)
                return Tab(tab_id, *key[:3], asset, guarantee_version, now, ttl, 0)
            raise _Retry

    #: A recipient's unexpired tabs: a range of the fx_tabs_recipient_expiry index.
    _OPEN_TABS_SQL = "FROM fx_tabs WHERE recipient_address = ? AND start_ts + ttl >= ?"

    def open_tab_count(self, recipient: str) -> int:
        """How many unexpired tabs ``recipient`` has (an indexed range count)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                f"SELECT COUNT(*) {self._OPEN_TABS_SQL}",
                (parse_address(recipient), int(self.clock())),
            )
        return int(row[0]) if row else 0

    def _check_open_cap(self, tx: Tx, recipient: str, now: int, max_open: int) -> None:
        """Refuse a new tab for ``recipient`` at ``max_open`` unexpired tabs.

        Counting is a range scan of the recipient's unexpired tabs, so it is skipped while a
        count less than ``_OPEN_COUNT_FRESH`` seconds old (plus the tabs this process opened
        since) is more than 1 % below the cap; closer to the cap every new tab is counted
        (exact on SQLite, whose writers are serialised; on PostgreSQL, concurrent openers
        may pass the cap by the few tabs being opened at that moment). Another process
        sharing the database is seen at the next count.
        """
        mono = time.monotonic()
        with self._open_lock:
            known = self._open_counts.get(recipient)
        if (
            known is not None
            and mono - known[0] < _OPEN_COUNT_FRESH
            and known[1] < max_open - max(1, max_open // 100)
        ):
            return
        row = tx.one(f"SELECT COUNT(*) {self._OPEN_TABS_SQL}", (recipient, now))
        count = int(row[0]) if row else 0
        with self._open_lock:
            if len(self._open_counts) >= 10_000:  # bounded: one entry per seller address
                self._open_counts.clear()
            self._open_counts[recipient] = (mono, count)
        if count >= max_open:
            first = tx.one(f"SELECT MIN(start_ts + ttl) {self._OPEN_TABS_SQL}", (recipient, now))
            frees_at = int(first[0]) if first and first[0] is not None else now
            raise TabLimited(
                f"this seller has {count} open tabs (the cap is {max_open}); "
                "no new tab until one expires",
                reason=Reason.OPEN_TAB_LIMIT,
                retry_after=frees_at - now + 1,
            )

    def _counted_open_tab(self, recipient: str) -> None:
        with self._open_lock:
            known = self._open_counts.get(recipient)
            if known is not None:
                self._open_counts[recipient] = (known[0], known[1] + 1)

    def tab(self, tab_id: int) -> Tab | None:
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT user_address, recipient_address, network, asset, guarantee_version, "
                "start_ts, ttl, next_req_id FROM fx_tabs WHERE tab_id = ?",
                (_hex(tab_id),),
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

    def _precheck(self, signed: SignedGuarantee, expected: Expected) -> GuaranteeClaims:
        """Acceptance steps 1–2 (docs/protocol.md): everything that needs no database."""
        claims = signed.claims
        if claims.version not in self.config.accepted_versions:
            raise _rejected(
                Reason.UNSUPPORTED_VERSION, f"guarantee version {claims.version} is not accepted"
            )
        try:
            chain_id = get_network(expected.network).chain_id
        except Exception:
            raise _rejected(
                Reason.NETWORK_MISMATCH, f"unknown network {expected.network}"
            ) from None
        if claims.version == 2:
            score = claims.min_validation_score or 0
            if not 1 <= score <= 100:
                raise _rejected(
                    Reason.INVALID_VALIDATION_POLICY, "min_validation_score must be 1..100"
                )
            if claims.validation_chain_id != chain_id:
                raise _rejected(
                    Reason.INVALID_VALIDATION_POLICY,
                    "validation_chain_id is not the network's chain",
                )
            if not claims.bindings_are_canonical():
                raise _rejected(
                    Reason.INVALID_VALIDATION_POLICY, "validation binding hashes are not canonical"
                )
            if claims.validation_registry_address not in self.config.trusted_registries:
                raise _rejected(Reason.UNTRUSTED_VALIDATION_REGISTRY)
        if recover_signer(signed, self.domain(chain_id)) != claims.user_address:
            raise _rejected(Reason.INVALID_SIGNATURE, "signature does not recover user_address")
        return claims

    def _check(self, tx: Tx, claims: GuaranteeClaims, expected: Expected, now: float) -> None:
        """Acceptance steps 3–7 (docs/protocol.md), inside the transaction."""
        suspended = tx.one(
            "SELECT suspended FROM fx_participants WHERE address = ?", (claims.user_address,)
        )
        if suspended and suspended[0]:
            raise _rejected(Reason.PAYER_SUSPENDED)
        tab_key = _hex(claims.tab_id)
        if tx.one(
            "SELECT 1 FROM fx_guarantees WHERE tab_id = ? AND req_id = ?",
            (tab_key, _hex(claims.req_id)),
        ):
            raise _rejected(Reason.REPLAYED_REQUEST_ID)
        if claims.timestamp > now + self.config.max_clock_skew:
            raise _rejected(Reason.TIMESTAMP_IN_FUTURE)
        tab = tx.one(
            "SELECT user_address, recipient_address, network, asset, guarantee_version, start_ts, ttl "
            "FROM fx_tabs WHERE tab_id = ?",
            (tab_key,),
        )
        if tab is None:
            raise _rejected(Reason.UNKNOWN_TAB)
        start, end = int(tab[5]), int(tab[5]) + int(tab[6])
        if now > end:
            raise _rejected(Reason.TAB_EXPIRED)
        if not start <= claims.timestamp <= end:
            raise _rejected(Reason.TIMESTAMP_OUTSIDE_TAB, "timestamp is outside the tab's window")
        if (tab[0], tab[1], tab[3], int(tab[4])) != (
            claims.user_address,
            claims.recipient_address,
            claims.asset_address,
            claims.version,
        ):
            raise _rejected(Reason.TAB_MISMATCH, "claims do not match the tab")
        if claims.recipient_address != parse_address(expected.pay_to):
            raise _rejected(Reason.RECIPIENT_MISMATCH)
        if claims.asset_address != parse_address(expected.asset):
            raise _rejected(Reason.ASSET_MISMATCH)
        if claims.amount != expected.amount:
            raise _rejected(Reason.AMOUNT_MISMATCH)
        if tab[2] != expected.network:
            raise _rejected(Reason.NETWORK_MISMATCH)
        if expected.policy is not None and claims.policy != expected.policy:
            raise _rejected(Reason.VALIDATION_POLICY_MISMATCH)
        if expected.policy is None and claims.version == 2:
            raise _rejected(
                Reason.VALIDATION_POLICY_MISMATCH,
                "a G-v2 guarantee for requirements without a validation policy",
            )

    def verify(self, signed: SignedGuarantee, expected: Expected) -> str:
        """Every acceptance check that changes nothing, capacity included. Returns the payer."""
        claims = self._precheck(signed, expected)
        with self.store.transaction(write=False) as tx:
            self._check(tx, claims, expected, self.clock())
            row = tx.one(
                "SELECT credit_limit - locked - pending_withdrawal FROM fx_positions "
                "WHERE network = ? AND asset = ? AND address = ?",
                (expected.network, claims.asset_address, claims.user_address),
            )
        if row is None or int(row[0]) < claims.amount:
            raise _rejected(Reason.INSUFFICIENT_COLLATERAL)
        return claims.user_address

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
        claims = self._precheck(signed, expected)
        network, asset, user = expected.network, claims.asset_address, claims.user_address
        chain_id = get_network(network).chain_id
        gid = "0x" + guarantee_id(chain_id, claims.tab_id, claims.req_id).hex()
        state = "payable" if claims.version == 1 else "pending_validation"
        try:
            with self._write(nowait) as (tx, events):
                now = self.clock()
                self._check(tx, claims, expected, now)
                if claims.amount > _INT64_MAX or not tx.execute(
                    "UPDATE fx_positions SET locked = locked + ? WHERE network = ? AND asset = ? "
                    "AND address = ? AND credit_limit - locked - pending_withdrawal >= ?",
                    (claims.amount, network, asset, user, claims.amount),
                ):
                    raise _rejected(Reason.INSUFFICIENT_COLLATERAL)
                total_row = tx.one(
                    "UPDATE fx_tabs SET total_amount = total_amount + ? WHERE tab_id = ? "
                    "RETURNING total_amount",
                    (claims.amount, _hex(claims.tab_id)),
                )
                assert total_row is not None
                total = int(total_row[0])
                cycle_id = None
                if state == "payable":
                    cycle_id = self._join_cycle(
                        tx, network, asset, user, claims.recipient_address, claims.amount, now
                    )
                tx.execute(
                    "INSERT INTO fx_guarantees (tab_id, req_id, guarantee_id, network, asset, "
                    "user_address, recipient_address, amount, total_amount, ts, version, state, "
                    "accepted_at, resolved_at, cycle_id, validator, min_score, required_tag, "
                    "validation_deadline, claims, signature, scheme) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _hex(claims.tab_id),
                        _hex(claims.req_id),
                        gid,
                        network,
                        asset,
                        user,
                        claims.recipient_address,
                        claims.amount,
                        total,
                        claims.timestamp,
                        claims.version,
                        state,
                        now,
                        now if state == "payable" else None,
                        cycle_id,
                        claims.validator_address,
                        claims.min_validation_score,
                        claims.required_validation_tag,
                        now + self.config.validation_timeout if claims.version == 2 else None,
                        json.dumps(claims.to_json()),
                        "0x" + signed.signature.hex(),
                        signed.scheme,
                    ),
                )
                self._event(
                    events,
                    "guarantee.accepted",
                    now,
                    network,
                    asset,
                    user,
                    guarantee_id=gid,
                    recipient=claims.recipient_address,
                    amount=claims.amount,
                    state=state,
                )
                accepted = Acceptance(
                    gid,
                    claims.tab_id,
                    claims.req_id,
                    user,
                    claims.recipient_address,
                    claims.amount,
                    total,
                    network,
                    asset,
                    state,
                    claims.version,
                )
                if also is not None:
                    also(tx, accepted)
        except Conflict:
            raise _rejected(Reason.REPLAYED_REQUEST_ID) from None
        return accepted

    def certify(self, guarantee_id: str) -> Certificate:
        """The Core's BLS certificate for an accepted guarantee (made once, then stored)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT claims, total_amount, network, certificate, certificate_claims "
                "FROM fx_guarantees WHERE guarantee_id = ?",
                (guarantee_id,),
            )
        if row is None:
            raise CoreError(f"no guarantee {guarantee_id}", reason="unknown_guarantee", status=404)
        if row[3]:
            return Certificate(bytes.fromhex(row[4][2:]), bytes.fromhex(row[3][2:]))
        claims = GuaranteeClaims.from_json(json.loads(row[0]))
        chain_id = get_network(row[2]).chain_id
        cert = self.operator.certify(
            certificate_message(claims, self.guarantee_domain(chain_id), int(row[1]))
        )
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE fx_guarantees SET certificate = ?, certificate_claims = ? "
                "WHERE guarantee_id = ? AND certificate IS NULL",
                ("0x" + cert.signature.hex(), "0x" + cert.claims.hex(), guarantee_id),
            )
        return cert

    def _join_cycle(
        self, tx: Tx, network: str, asset: str, payer: str, payee: str, amount: int, now: float
    ) -> int:
        """Put a payable obligation into the open cycle: bump its pairwise aggregate."""
        cycle_id = int(self._open_cycle(tx, network, asset, now)[0])
        tx.execute(
            "INSERT INTO fx_cycle_pairs (cycle_id, payer, payee, amount, guarantee_count) "
            "VALUES (?, ?, ?, ?, 1) ON CONFLICT (cycle_id, payer, payee) DO UPDATE SET "
            "amount = fx_cycle_pairs.amount + excluded.amount, "
            "guarantee_count = fx_cycle_pairs.guarantee_count + 1",
            (cycle_id, payer, payee, amount),
        )
        return cycle_id

    def certify_many(
        self,
        guarantee_ids: Sequence[str],
        *,
        also: Callable[[Tx, dict[str, Certificate]], Any] | None = None,
    ) -> dict[str, Certificate]:
        """Certificates for many guarantees: one read, the BLS signatures, one write.

        ``also(tx, certificates)`` runs in that write (the gate files them in its records).
        """
        if not guarantee_ids:
            return {}
        marks = ", ".join("?" for _ in guarantee_ids)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT guarantee_id, claims, total_amount, network, certificate, certificate_claims "
                f"FROM fx_guarantees WHERE guarantee_id IN ({marks})",
                tuple(guarantee_ids),
            )
        done: dict[str, Certificate] = {}
        fresh = []
        for gid, claims_json, total, network, signature, message in rows:
            if signature:
                done[gid] = Certificate(bytes.fromhex(message[2:]), bytes.fromhex(signature[2:]))
                continue
            claims = GuaranteeClaims.from_json(json.loads(claims_json))
            domain = self.guarantee_domain(get_network(network).chain_id)
            done[gid] = self.operator.certify(certificate_message(claims, domain, int(total)))
            fresh.append(gid)
        if fresh or (also is not None and done):
            with self.store.transaction() as tx:
                tx.many(
                    "UPDATE fx_guarantees SET certificate = ?, certificate_claims = ? "
                    "WHERE guarantee_id = ? AND certificate IS NULL",
                    (
                        ("0x" + done[g].signature.hex(), "0x" + done[g].claims.hex(), g)
                        for g in fresh
                    ),
                )
                if also is not None:
                    also(tx, done)
        return done

    def _release(self, tx: Tx, network: str, asset: str, address: str, amount: int) -> None:
        if amount:
            tx.execute(
                "UPDATE fx_positions SET locked = locked - ? WHERE network = ? AND asset = ? AND address = ?",
                (amount, network, asset, address),
            )

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
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
            raise CoreError("score must be an integer 0..100", reason="invalid_score", status=400)
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
        by = parse_address(by)
        now = self.clock()
        with self._write(nowait) as (tx, events):
            if score is None:
                self._void_in(tx, events, guarantee_id, by, now)
            else:
                self._validate_in(tx, events, guarantee_id, by, score, tag, now)
            if also is not None:
                also(tx)

    def _locked_guarantee(self, tx: Tx, guarantee_id: str, columns: str) -> Row:
        """One guarantee row, locked for this transaction (SQLite: the write lock is held)."""
        row = tx.one(
            f"SELECT {columns} FROM fx_guarantees WHERE guarantee_id = ?" + self.store.row_lock,
            (guarantee_id,),
        )
        if row is None:
            raise CoreError(f"no guarantee {guarantee_id}", reason="unknown_guarantee", status=404)
        return row

    def _void_in(
        self, tx: Tx, events: list[tuple[Any, ...]], guarantee_id: str, by: str, now: float
    ) -> None:
        row = self._locked_guarantee(
            tx,
            guarantee_id,
            "recipient_address, network, asset, user_address, amount, state, cycle_id",
        )
        if row[0] != by:
            raise CoreError(
                "only the recipient may void a guarantee", reason="not_recipient", status=403
            )
        cycle_id = row[6]
        if cycle_id is not None:
            status = tx.one(
                "SELECT status FROM fx_cycles WHERE cycle_id = ?" + self.store.share_lock,
                (cycle_id,),
            )
            if status is None or status[0] != "open":
                raise CoreError(
                    "guarantee is netted, it can no longer be voided", reason="invalid_state"
                )
        if not tx.execute(
            "UPDATE fx_guarantees SET state = 'voided', resolved_at = ?, cycle_id = NULL "
            "WHERE guarantee_id = ? AND state IN ('payable', 'pending_validation')",
            (now, guarantee_id),
        ):
            raise CoreError(
                f"guarantee is {row[5]}, it can no longer be voided", reason="invalid_state"
            )
        if cycle_id is not None:
            tx.execute(
                "UPDATE fx_cycle_pairs SET amount = amount - ?, guarantee_count = guarantee_count - 1 "
                "WHERE cycle_id = ? AND payer = ? AND payee = ?",
                (int(row[4]), cycle_id, row[3], row[0]),
            )
        self._release(tx, row[1], row[2], row[3], int(row[4]))
        self._event(
            events,
            "guarantee.voided",
            now,
            row[1],
            row[2],
            row[3],
            guarantee_id=guarantee_id,
            amount=int(row[4]),
        )

    def _validate_in(
        self,
        tx: Tx,
        events: list[tuple[Any, ...]],
        guarantee_id: str,
        validator: str,
        score: int,
        tag: str,
        now: float,
    ) -> None:
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
            raise CoreError("score must be an integer 0..100", reason="invalid_score", status=400)
        row = self._locked_guarantee(
            tx,
            guarantee_id,
            "validator, min_score, required_tag, network, asset, user_address, amount, state, "
            "recipient_address",
        )
        if row[0] is None or row[0] != validator:
            raise CoreError(
                "only the validator named in the claims may post",
                reason="not_validator",
                status=403,
            )
        if row[2] and tag != row[2]:
            raise CoreError(f"validation tag must be {row[2]!r}", reason="tag_mismatch", status=400)
        new_state = "payable" if score >= int(row[1]) else "cancelled"
        cycle_id = None
        if new_state == "payable":
            cycle_id = self._join_cycle(tx, row[3], row[4], row[5], row[8], int(row[6]), now)
        if not tx.execute(
            "UPDATE fx_guarantees SET state = ?, score = ?, score_tag = ?, resolved_at = ?, "
            "cycle_id = ? WHERE guarantee_id = ? AND state = 'pending_validation'",
            (new_state, score, tag, now, cycle_id, guarantee_id),
        ):
            raise CoreError(
                f"guarantee is {row[7]}, not pending validation", reason="invalid_state"
            )
        if new_state == "cancelled":
            self._release(tx, row[3], row[4], row[5], int(row[6]))
        self._event(
            events,
            f"guarantee.{'validated' if new_state == 'payable' else 'cancelled'}",
            now,
            row[3],
            row[4],
            row[5],
            guarantee_id=guarantee_id,
            score=score,
        )

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

    @staticmethod
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

    def guarantee(self, guarantee_id: str) -> GuaranteeRecord:
        with self.store.transaction(write=False) as tx:
            row = tx.one(self._GUARANTEE_SELECT + " WHERE g.guarantee_id = ?", (guarantee_id,))
        if row is None:
            raise CoreError(f"no guarantee {guarantee_id}", reason="unknown_guarantee", status=404)
        return self._guarantee_record(row)

    def guarantees(
        self,
        *,
        address: str | None = None,
        state: str | None = None,
        cycle_id: int | None = None,
        limit: int = 100,
    ) -> list[GuaranteeRecord]:
        """Recent guarantees, newest first, filtered by participant, state or cycle."""
        where: list[str] = []
        params: list[Any] = []
        if address:
            where.append("(g.user_address = ? OR g.recipient_address = ?)")
            params += [parse_address(address)] * 2
        if cycle_id is not None:
            where.append("g.cycle_id = ?")
            params.append(cycle_id)
        sql = self._GUARANTEE_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql = f"SELECT * FROM ({sql}) AS q"
        if state:
            sql += " WHERE state = ?"
            params.append(state)
        sql += " ORDER BY accepted_at DESC, guarantee_id LIMIT ?"
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql, (*params, int(limit)))
        return [self._guarantee_record(r) for r in rows]

    # -- clearing cycles ------------------------------------------------------------------------

    _CYCLE_COLUMNS = (
        "cycle_id, network, asset, status, opened_at, closes_at, closed_at, resolve_at, pay_by, "
        "final_at, guarantee_count, gross, net_transfers, total_debit, collected, claimed, merkle_root"
    )

    @staticmethod
    def _cycle(r: Sequence[Any]) -> Cycle:
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

    def _open_cycle(self, tx: Tx, network: str, asset: str, now: float) -> tuple[Any, ...]:
        select = (
            f"SELECT {self._CYCLE_COLUMNS} FROM fx_cycles WHERE network = ? AND asset = ? "
            "AND status = 'open'" + self.store.share_lock
        )
        row = tx.one(select, (network, asset))
        if row is None:
            tx.execute(
                "INSERT INTO fx_cycles (network, asset, status, opened_at, closes_at) "
                "VALUES (?, ?, 'open', ?, ?) ON CONFLICT DO NOTHING",
                (network, asset, now, now + self.config.cycle_window),
            )
            row = tx.one(select, (network, asset))
        assert row is not None
        return row

    def current_cycle(self, *, network: str, asset: str | None = None) -> Cycle:
        """The open cycle of (network, asset), opened now if there is none."""
        asset = self._asset(network, asset)
        with self._write() as (tx, _):
            return self._cycle(self._open_cycle(tx, network, asset, self.clock()))

    def close_cycle(self, *, network: str, asset: str | None = None) -> Cycle:
        """Close the open cycle now: freeze its payable guarantees, net them, open the next."""
        asset = self._asset(network, asset)
        now = self.clock()
        with self._write() as (tx, events):
            cycle_id = int(self._open_cycle(tx, network, asset, now)[0])
            self._close(tx, events, cycle_id, network, asset, now)
        return self.cycle(cycle_id)

    def _close(
        self,
        tx: Tx,
        events: list[tuple[Any, ...]],
        cycle_id: int,
        network: str,
        asset: str,
        now: float,
    ) -> None:
        if not tx.execute(
            "UPDATE fx_cycles SET status = 'closed', closed_at = ? WHERE cycle_id = ? AND status = 'open'",
            (now, cycle_id),
        ):
            return  # another process closed it first
        # The pairwise matrix was kept up to date as guarantees became payable (or were voided).
        tx.execute(
            "DELETE FROM fx_cycle_pairs WHERE cycle_id = ? AND guarantee_count = 0", (cycle_id,)
        )
        # Gross in and out per participant, summed by the database (a cycle may hold a million
        # pairs; one row per participant comes back). Payers stream in key order.
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
        resolve_at = now + self.config.resolution_delay
        pay_by = resolve_at + self.config.payment_window
        root = clearing.merkle_root((a, netting.net_of(a)) for a in netting.gross)
        tx.execute(
            "UPDATE fx_cycles SET resolve_at = ?, pay_by = ?, final_at = ?, guarantee_count = ?, "
            "gross = ?, net_transfers = ?, total_debit = ?, merkle_root = ? WHERE cycle_id = ?",
            (
                resolve_at,
                pay_by,
                pay_by + self.config.finality,
                count,
                gross_total,
                netting.transfers,
                netting.total_debit,
                "0x" + root.hex(),
                cycle_id,
            ),
        )
        tx.execute(
            "INSERT INTO fx_cycles (network, asset, status, opened_at, closes_at) VALUES (?, ?, 'open', ?, ?)",
            (network, asset, now, now + self.config.cycle_window),
        )
        self._event(
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

    def _resolve(self, tx: Tx, events: list[tuple[Any, ...]], cycle: Cycle, now: float) -> None:
        if not tx.execute(
            "UPDATE fx_cycles SET status = 'resolved' WHERE cycle_id = ? AND status = 'closed'",
            (cycle.cycle_id,),
        ):
            return
        for address, gross_out, debit in tx.all(
            "SELECT address, gross_out, debit FROM fx_cycle_positions WHERE cycle_id = ?",
            (cycle.cycle_id,),
        ):
            # The batch locked gross_out of this payer; keep only its net debit locked.
            self._release(tx, cycle.network, cycle.asset, address, int(gross_out) - int(debit))
        self._event(
            events, "cycle.resolved", now, cycle.network, cycle.asset, None, cycle_id=cycle.cycle_id
        )

    def _finalize(self, tx: Tx, events: list[tuple[Any, ...]], cycle: Cycle, now: float) -> None:
        if not tx.execute(
            "UPDATE fx_cycles SET status = 'final' WHERE cycle_id = ? AND status = 'resolved'",
            (cycle.cycle_id,),
        ):
            return
        covered_total = 0
        for address, debit, paid in tx.all(
            "SELECT address, debit, paid FROM fx_cycle_positions WHERE cycle_id = ? AND role = 'debtor' "
            "AND paid < debit",
            (cycle.cycle_id,),
        ):
            unpaid = int(debit) - int(paid)
            collateral, _, locked, _ = self._lock_position(tx, cycle.network, cycle.asset, address)
            cover = min(unpaid, collateral)
            self._set_collateral(tx, cycle.network, cycle.asset, address, collateral - cover)
            self._release(tx, cycle.network, cycle.asset, address, min(unpaid, locked))
            tx.execute(
                "UPDATE fx_cycle_positions SET covered = ?, shortfall = ?, status = 'defaulted' "
                "WHERE cycle_id = ? AND address = ?",
                (cover, unpaid - cover, cycle.cycle_id, address),
            )
            covered_total += cover
            self._event(
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

    def tick(self) -> dict[str, int]:
        """Advance everything that is due: validation timeouts and cycle phases.

        Call it periodically (the service does); each step is its own
        transaction and safe to run from several processes at once.
        """
        now = self.clock()
        done = {"validations_expired": 0, "closed": 0, "resolved": 0, "finalized": 0}
        with self._write() as (tx, events):
            for gid, network, asset, user, amount in tx.all(
                "SELECT guarantee_id, network, asset, user_address, amount FROM fx_guarantees "
                "WHERE state = 'pending_validation' AND validation_deadline < ?",
                (now,),
            ):
                if tx.execute(
                    "UPDATE fx_guarantees SET state = 'cancelled', resolved_at = ? WHERE guarantee_id = ? "
                    "AND state = 'pending_validation'",
                    (now, gid),
                ):
                    self._release(tx, network, asset, user, int(amount))
                    done["validations_expired"] += 1
                    self._event(
                        events,
                        "guarantee.cancelled",
                        now,
                        network,
                        asset,
                        user,
                        guarantee_id=gid,
                        reason="validation_timeout",
                    )
        for cycle in self.cycles(status="open"):
            if cycle.closes_at <= now:
                with self._write() as (tx, events):
                    self._close(tx, events, cycle.cycle_id, cycle.network, cycle.asset, now)
                done["closed"] += 1
        for cycle in self.cycles(status="closed"):
            if cycle.resolve_at is not None and cycle.resolve_at <= now:
                with self._write() as (tx, events):
                    self._resolve(tx, events, cycle, now)
                done["resolved"] += 1
        for cycle in self.cycles(status="resolved"):
            if cycle.final_at is not None and cycle.final_at <= now:
                with self._write() as (tx, events):
                    self._finalize(tx, events, cycle, now)
                done["finalized"] += 1
        return done

    def cycle(self, cycle_id: int) -> Cycle:
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                f"SELECT {self._CYCLE_COLUMNS} FROM fx_cycles WHERE cycle_id = ?", (cycle_id,)
            )
        if row is None:
            raise CoreError(f"no cycle {cycle_id}", reason="unknown_cycle", status=404)
        return self._cycle(row)

    def cycles(
        self, *, status: str | None = None, network: str | None = None, limit: int = 1000
    ) -> list[Cycle]:
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if network:
            where.append("network = ?")
            params.append(network)
        sql = f"SELECT {self._CYCLE_COLUMNS} FROM fx_cycles"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY cycle_id DESC LIMIT ?", (*params, int(limit)))
        return [self._cycle(r) for r in rows]

    def cycle_positions(self, cycle_id: int) -> list[CyclePosition]:
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT cycle_id, address, gross_in, gross_out, net, role, debit, credit, paid, covered, "
                "claimed, shortfall, status FROM fx_cycle_positions WHERE cycle_id = ? ORDER BY address",
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

    def payer_counts(self, cycle_id: int) -> list[int]:
        """How many guarantees each payer had in a cycle (for metrics)."""
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT SUM(guarantee_count) FROM fx_cycle_pairs WHERE cycle_id = ? GROUP BY payer",
                (cycle_id,),
            )
        return [int(r[0]) for r in rows]

    def cycle_pairs(self, cycle_id: int) -> list[CyclePair]:
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT cycle_id, payer, payee, amount, guarantee_count FROM fx_cycle_pairs "
                "WHERE cycle_id = ? ORDER BY payer, payee",
                (cycle_id,),
            )
        return [CyclePair(int(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    def pay_net_debit(
        self, cycle_id: int, address: str, amount: int | None = None
    ) -> CyclePosition:
        """A debtor pays (part of) its net debit during the payment window (sandbox: from outside)."""
        address = parse_address(address)
        now = self.clock()
        with self._write() as (tx, events):
            cycle = self._cycle_row(tx, cycle_id)
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
            if amount is not None:
                _check_amount(amount)
            pay = outstanding if amount is None else amount
            if pay <= 0 or pay > outstanding:
                raise CoreError(
                    f"payment must be 1..{outstanding}", reason="invalid_amount", status=400
                )
            tx.execute(
                "UPDATE fx_cycle_positions SET paid = paid + ?, status = CASE WHEN paid + ? >= debit "
                "THEN 'paid' ELSE status END WHERE cycle_id = ? AND address = ?",
                (pay, pay, cycle_id, address),
            )
            tx.execute(
                "UPDATE fx_cycles SET collected = collected + ? WHERE cycle_id = ?", (pay, cycle_id)
            )
            self._lock_position(tx, cycle.network, cycle.asset, address)
            self._release(tx, cycle.network, cycle.asset, address, pay)
            self._flow(
                tx, "debit_payment", cycle.network, cycle.asset, address, pay, now, str(cycle_id)
            )
            self._event(
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
        return next(p for p in self.cycle_positions(cycle_id) if p.address == address)

    def claim_net_credit(self, cycle_id: int, address: str) -> int:
        """A creditor takes what has been paid in for it so far (pro rata). Returns the amount."""
        address = parse_address(address)
        now = self.clock()
        with self._write() as (tx, events):
            cycle = self._cycle_row(tx, cycle_id)
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
            tx.execute(
                "UPDATE fx_cycles SET claimed = claimed + ? WHERE cycle_id = ?", (due, cycle_id)
            )
            self._flow(
                tx, "credit_claim", cycle.network, cycle.asset, address, due, now, str(cycle_id)
            )
            self._event(
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

    def _cycle_row(self, tx: Tx, cycle_id: int) -> Cycle:
        # No-op update: row-locks the cycle for the rest of the transaction (PostgreSQL).
        row = tx.one(
            f"UPDATE fx_cycles SET status = status WHERE cycle_id = ? RETURNING {self._CYCLE_COLUMNS}",
            (cycle_id,),
        )
        if row is None:
            raise CoreError(f"no cycle {cycle_id}", reason="unknown_cycle", status=404)
        return self._cycle(row)

    # -- withdrawals ----------------------------------------------------------------------------

    def request_withdrawal(
        self, address: str, amount: int, *, network: str, asset: str | None = None
    ) -> Withdrawal:
        """Ask to withdraw collateral: capacity drops at once; funds move after the grace period."""
        address, asset = parse_address(address), self._asset(network, asset)
        _check_amount(amount)
        now = self.clock()
        with self._write() as (tx, events):
            if not tx.execute(
                "UPDATE fx_positions SET pending_withdrawal = pending_withdrawal + ? WHERE network = ? "
                "AND asset = ? AND address = ? AND credit_limit - locked - pending_withdrawal >= ? "
                "AND collateral - pending_withdrawal >= ?",
                (amount, network, asset, address, amount, amount),
            ):
                raise CoreError("not enough free collateral", reason="insufficient_collateral")
            row = tx.one(
                "INSERT INTO fx_withdrawals (network, asset, address, amount, requested_at, available_at, "
                "status) VALUES (?, ?, ?, ?, ?, ?, 'pending') RETURNING withdrawal_id",
                (network, asset, address, amount, now, now + self.config.withdrawal_grace),
            )
            assert row is not None
            self._event(
                events,
                "withdrawal.requested",
                now,
                network,
                asset,
                address,
                withdrawal_id=int(row[0]),
                amount=amount,
            )
        return self.withdrawal(int(row[0]))

    def cancel_withdrawal(self, withdrawal_id: int) -> Withdrawal:
        now = self.clock()
        with self._write() as (tx, _):
            w = self._pending_withdrawal(tx, withdrawal_id)
            tx.execute(
                "UPDATE fx_withdrawals SET status = 'cancelled', finished_at = ? WHERE withdrawal_id = ?",
                (now, withdrawal_id),
            )
            tx.execute(
                "UPDATE fx_positions SET pending_withdrawal = pending_withdrawal - ? WHERE network = ? "
                "AND asset = ? AND address = ?",
                (w.amount, w.network, w.asset, w.address),
            )
        return self.withdrawal(withdrawal_id)

    def finalize_withdrawal(self, withdrawal_id: int) -> Withdrawal:
        """Pay out a pending withdrawal after its grace period, if what stays covers the locks."""
        now = self.clock()
        with self._write() as (tx, events):
            w = self._pending_withdrawal(tx, withdrawal_id)
            if now < w.available_at:
                raise CoreError("the grace period has not passed", reason="withdrawal_not_ready")
            collateral, _, locked, _ = self._lock_position(tx, w.network, w.asset, w.address)
            remaining = collateral - w.amount
            if remaining < 0 or remaining * self._factor(tx, w.network, w.asset) < locked:
                raise CoreError(
                    "what would remain does not cover the locked amount", reason="withdrawal_unsafe"
                )
            self._set_collateral(tx, w.network, w.asset, w.address, remaining)
            tx.execute(
                "UPDATE fx_positions SET pending_withdrawal = pending_withdrawal - ? WHERE network = ? "
                "AND asset = ? AND address = ?",
                (w.amount, w.network, w.asset, w.address),
            )
            tx.execute(
                "UPDATE fx_withdrawals SET status = 'finalized', finished_at = ? WHERE withdrawal_id = ?",
                (now, withdrawal_id),
            )
            self._flow(
                tx, "withdrawal", w.network, w.asset, w.address, w.amount, now, str(withdrawal_id)
            )
            self._event(
                events,
                "withdrawal.finalized",
                now,
                w.network,
                w.asset,
                w.address,
                withdrawal_id=withdrawal_id,
                amount=w.amount,
            )
        return self.withdrawal(withdrawal_id)

    def _pending_withdrawal(self, tx: Tx, withdrawal_id: int) -> Withdrawal:
        row = tx.one(
            f"UPDATE fx_withdrawals SET status = status WHERE withdrawal_id = ? RETURNING {_W_COLUMNS}",
            (withdrawal_id,),
        )
        if row is None:
            raise CoreError(
                f"no withdrawal {withdrawal_id}", reason="unknown_withdrawal", status=404
            )
        w = _withdrawal(row)
        if w.status != "pending":
            raise CoreError(f"withdrawal is {w.status}", reason="invalid_state")
        return w

    def withdrawal(self, withdrawal_id: int) -> Withdrawal:
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                f"SELECT {_W_COLUMNS} FROM fx_withdrawals WHERE withdrawal_id = ?", (withdrawal_id,)
            )
        if row is None:
            raise CoreError(
                f"no withdrawal {withdrawal_id}", reason="unknown_withdrawal", status=404
            )
        return _withdrawal(row)

    def withdrawals(self, *, address: str | None = None, limit: int = 100) -> list[Withdrawal]:
        sql = f"SELECT {_W_COLUMNS} FROM fx_withdrawals"
        params: tuple[Any, ...] = ()
        if address:
            sql, params = sql + " WHERE address = ?", (parse_address(address),)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY withdrawal_id DESC LIMIT ?", (*params, int(limit)))
        return [_withdrawal(r) for r in rows]

    # -- audit ----------------------------------------------------------------------------------

    def events(self, *, after: int = 0, limit: int = 1000, type: str | None = None) -> list[Event]:
        """Stored events with ``event_id > after``, oldest first (a durable feed)."""
        sql = "SELECT event_id, type, at, network, asset, address, data FROM fx_events WHERE event_id > ?"
        params: list[Any] = [after]
        if type:
            sql += " AND type = ?"
            params.append(type)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY event_id LIMIT ?", (*params, int(limit)))
        return [
            Event(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5], json.loads(r[6])) for r in rows
        ]

    def totals(self, *, network: str, asset: str | None = None) -> dict[str, int]:
        """Money totals for the conservation audit of one (network, asset)."""
        asset = self._asset(network, asset)
        with self.store.transaction(write=False) as tx:
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
        problems: list[str] = []
        with self.store.transaction(write=False) as tx:
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
                    problems.append(
                        f"{address} on {network}: locked {locked}, guarantees explain {want}"
                    )
            problems += [
                f"{k[2]} on {k[0]}: {v} locked by guarantees but no position"
                for k, v in expected.items()
                if v
            ]
            for cycle_id, debits, credits, nets in tx.all(
                "SELECT cycle_id, SUM(debit), SUM(credit), SUM(net) FROM fx_cycle_positions GROUP BY cycle_id"
            ):
                if int(debits) != int(credits) or int(nets) != 0:
                    problems.append(f"cycle {cycle_id}: debits {debits} != credits {credits}")
            for tab_id, total, summed in tx.all(
                "SELECT t.tab_id, t.total_amount, COALESCE(SUM(g.amount), 0) FROM fx_tabs t "
                "LEFT JOIN fx_guarantees g ON g.tab_id = t.tab_id GROUP BY t.tab_id, t.total_amount"
            ):
                if int(total) != int(summed):
                    problems.append(f"tab {tab_id}: total {total} != guarantees {summed}")
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
                    problems.append(
                        f"cycle {cycle_id}: pairwise matrix does not sum its guarantees"
                    )
            problems += [
                f"cycle {c}: matrix {v} without guarantees"
                for c, v in matrix.items()
                if v != (0, 0)
            ]
            pairs = tx.all("SELECT DISTINCT network, asset FROM fx_positions")
        for network, asset in pairs:
            t = self.totals(network=network, asset=asset)
            held = t["collateral"] + t["held_in_cycles"]
            if held != t["external_in"] - t["external_out"]:
                problems.append(
                    f"{network}/{asset}: money not conserved: held {held}, "
                    f"in − out {t['external_in'] - t['external_out']}"
                )
        return problems

    def close(self) -> None:
        self.store.close()


class _Retry(Exception):
    pass


_W_COLUMNS = "withdrawal_id, network, asset, address, amount, requested_at, available_at, status, finished_at"


def _withdrawal(r: Sequence[Any]) -> Withdrawal:
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


def _hex(value: int) -> str:
    return hex(value)


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= _INT64_MAX:
        raise CoreError(
            "amount must be a positive integer of atomic units", reason="invalid_amount", status=400
        )
