"""Alerts (docs/operations.md, "Alerts"): rules with thresholds, and the ones read from the
database, each firing once per crossing.

:class:`AlertRules` holds every threshold (None: that rule is off). The invalid-payment rules
are per-process observations (the database stores no refused payment): a seller gate counts
them in memory (:mod:`fourmica_x402.alerts`). Every other rule is a condition of the database
(:mod:`.alert_conditions`), evaluated by :meth:`Alerting.check_alerts`; its state per
``(rule, subject)`` lives in ``fx_alerts`` (``firing`` or ``clear``), so a condition that stays
true fires once, fires again only after it cleared, and several processes on one database fire
a crossing once in total: the flip is a conditional upsert, and on PostgreSQL the checkers take
turns on an advisory lock, so none applies a reading older than another's.

A firing is an ``alert.fired`` event written in the transaction of the flip (so webhooks carry
it, signed like every event) and a ``WARNING`` line of the ``fourmica_x402.alerts`` logger.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigurationError
from . import alert_conditions
from .common import INT64_MAX
from .feed import EventFeed, Events, emit
from .models import Alert
from .store import Store, Tx
from .store.deferred import Task

__all__ = ["Alert", "AlertRules", "Alerting", "log_alert"]

log = logging.getLogger("fourmica_x402.alerts")

#: Every checker on PostgreSQL holds this advisory lock while it flips states (the schema's
#: migrator holds 7340402).
_ADVISORY_LOCK = 7340403

#: Rules read from the database, in the order they are checked.
DATABASE_RULES = (
    "collateral_floor",
    "settlement_deadline",
    "default",
    "withdrawal_requested",
    "reconciler_backlog",
    "reconciler_backlog_age",
)
#: Rules a seller gate observes in its own process.
PAYMENT_RULES = (
    "invalid_payments_per_payer",
    "invalid_payments_per_ip",
    "invalid_payments_per_route",
)
_DURATION_RULES = ("settlement_deadline", "reconciler_backlog_age", "invalid_window", "interval")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PLAIN = re.compile(r"\d+(?:\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdSMHD])")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdSMHD])+")
_WHOLE = re.compile(r"\d[\d_]*")


@dataclass(kw_only=True)
class AlertRules:
    """The alert rules and their thresholds; a rule whose threshold is None is off.

    Amounts are atomic units of the asset; durations are seconds.
    """

    #: Invalid payments within ``invalid_window`` seconds from one payer (refusals of a properly
    #: signed payment only: a bad signature proves nothing about the payer it names), one
    #: client address, or on one route, at which the rule fires.
    invalid_payments_per_payer: int | None = None
    invalid_payments_per_ip: int | None = None
    invalid_payments_per_route: int | None = None
    invalid_window: float = 60.0
    #: A position (with collateral, a lock or a pending withdrawal) whose free collateral
    #: (``credit_limit − locked − pending_withdrawal``) drops below this floor: one amount for
    #: every asset, or ``{(network, asset): floor}`` (asset None: the network's USDC).
    collateral_floor: int | Mapping[tuple[str, str | None], int] | None = None
    #: A debtor with a net debit still unpaid this many seconds past its payment deadline.
    settlement_deadline: float | None = None
    #: A debtor position defaulted leaving at least this much unpaid (0: every default).
    default: int | None = None
    #: A withdrawal requested of at least this amount, while it is pending (0: every one).
    withdrawal_requested: int | None = None
    #: At least this many open follow-ups of the gates' reconciler, or an open one this many
    #: seconds old (follow-ups kept in the Core's database: the embedded Core's records).
    reconciler_backlog: int | None = None
    reconciler_backlog_age: float | None = None
    #: Seconds between two checks of the database rules (by the service and each seller gate).
    interval: float = 10.0

    def __post_init__(self) -> None:
        for name in (*PAYMENT_RULES, "reconciler_backlog"):
            _check_int(self, name, 1)
        for name in ("default", "withdrawal_requested"):
            _check_int(self, name, 0)
        for name, low in (("settlement_deadline", 0.0), ("reconciler_backlog_age", 0.0)):
            value = getattr(self, name)
            # NaN or infinity: no database compares a time with it as with a number
            if value is not None and (
                not _is_number(value) or not math.isfinite(value) or value < low
            ):
                raise ConfigurationError(f"alerts: {name} must be seconds ≥ {low:g}, or None")
        for name in ("invalid_window", "interval"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= 86_400:
                raise ConfigurationError(f"alerts: {name} must be seconds in (0, 86400]")
        floor = self.collateral_floor
        if isinstance(floor, Mapping):
            self.collateral_floor = dict(_floors(floor))
        else:
            _check_int(self, "collateral_floor", 1)

    @property
    def database_rules(self) -> list[str]:
        """The database rules that are on."""
        return [name for name in DATABASE_RULES if getattr(self, name) is not None]

    @property
    def payment_rules(self) -> list[str]:
        """The invalid-payment rules that are on."""
        return [name for name in PAYMENT_RULES if getattr(self, name) is not None]

    @classmethod
    def parse(cls, text: str) -> AlertRules:
        """Rules from ``"name=value,name=value"`` (the service's ``--alerts``): counts and
        amounts are whole numbers, durations seconds or a number and a unit (``15m``, ``2h``);
        ``collateral_floor`` takes one amount for every asset."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, raw = (s.strip() for s in item.partition("="))
            name = name.replace("-", "_")
            if not sep or name not in known or not raw:
                raise ConfigurationError(
                    f"alerts: {item!r:.60} is not name=value with a name among "
                    f"{', '.join(sorted(known))}"
                )
            values[name] = _parse_value(name, raw)
        return cls(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: Any, low: int) -> bool:
    """Whether ``value`` is a whole number in ``low..2**63-1``: the database compares
    thresholds with its amounts, which are signed 64-bit, and takes no larger number."""
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= INT64_MAX


def _check_int(rules: AlertRules, name: str, low: int) -> None:
    value = getattr(rules, name)
    if value is not None and not _whole(value, low):
        raise ConfigurationError(
            f"alerts: {name} must be a whole number {low}..{INT64_MAX}, or None"
        )


def _floors(given: Mapping[tuple[str, str | None], int]) -> dict[tuple[str, str | None], int]:
    """The floors keyed by (network, token address), the asset named or the network's USDC."""
    from .collateral import asset_address

    floors: dict[tuple[str, str | None], int] = {}
    for key, floor in given.items():
        try:
            network, asset = key
            floors[(network, asset_address(network, asset))] = floor
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"alerts: collateral_floor keys are (network, asset): {key!r:.80} ({exc})"
            ) from None
        if not _whole(floor, 1):
            raise ConfigurationError(
                f"alerts: a collateral floor must be a whole number 1..{INT64_MAX}"
            )
    return floors


def _parse_value(name: str, raw: str) -> int | float:
    if name in _DURATION_RULES:
        if _PLAIN.fullmatch(raw):
            return float(raw)
        if _DURATION.fullmatch(raw):  # 90s, 15m, 1h30m: as the operator settings take them
            return float(sum(float(n) * _UNITS[u.lower()] for n, u in _PART.findall(raw)))
    elif _WHOLE.fullmatch(raw):
        return int(raw.replace("_", ""))
    raise ConfigurationError(f"alerts: {name}={raw!r:.40} is not a number")


def log_alert(alert: Alert) -> None:
    """The alert's log line (addresses and amounts only: nothing secret)."""
    extra = "".join(f" {k}={v}" for k, v in sorted(alert.detail.items()))
    log.warning(
        "alert %s fired: %s value=%s threshold=%s%s",
        alert.rule,
        alert.subject,
        alert.value,
        alert.threshold,
        extra,
    )


def emit_alert(events: Events, alert: Alert) -> None:
    emit(events, "alert.fired", alert.at, alert.network, alert.asset, alert.address, **alert.data())


# -- the database rules ---------------------------------------------------------------------

#: A rule's reading: ``(rule, alerts to fire, subjects to clear)``.
Change = tuple[str, list[Alert], list[str]]


def changes(tx: Tx, rules: AlertRules, now: float, since: int = 0) -> list[Change]:
    """What each database rule would flip now: its subjects that hold and are not firing, and
    its firing subjects that no longer hold (defaults: of the cycles from ``since`` on)."""
    found: list[Change] = []
    for name in rules.database_rules:
        if name == "default":
            holding = alert_conditions.default(tx, getattr(rules, name), now, since)
        else:
            holding = alert_conditions.READERS[name](tx, getattr(rules, name), now)
        firing: set[str] = set()
        if name not in alert_conditions.LASTING:  # a lasting condition is read unalerted only
            firing = {
                r[0]
                for r in tx.all(
                    "SELECT subject FROM fx_alerts WHERE rule = ? AND state = 'firing'", (name,)
                )
            }
        fire = [alert for subject, alert in sorted(holding.items()) if subject not in firing]
        clear = sorted(firing - holding.keys())
        if fire or clear:
            found.append((name, fire, clear))
    return found


def apply(tx: Tx, events: Events, found: list[Change], now: float) -> list[Alert]:
    """Flip the states: whoever flips a subject to ``firing`` fires it (its event queued)."""
    fired: list[Alert] = []
    for rule, fire, clear in found:
        for alert in fire:
            if tx.one(
                "INSERT INTO fx_alerts (rule, subject, state, fired_at, fires) "
                "VALUES (?, ?, 'firing', ?, 1) ON CONFLICT (rule, subject) DO UPDATE SET "
                "state = 'firing', fired_at = excluded.fired_at, fires = fx_alerts.fires + 1 "
                "WHERE fx_alerts.state = 'clear' RETURNING fires",
                (rule, alert.subject, now),
            ):
                emit_alert(events, alert)
                fired.append(alert)
        for subject in clear:
            tx.execute(
                "UPDATE fx_alerts SET state = 'clear', cleared_at = ? "
                "WHERE rule = ? AND subject = ? AND state = 'firing'",
                (now, rule, subject),
            )
    return fired


class Alerting:
    """The alert half of :class:`~.ledger.Core`: needs its ``store``, ``clock`` and feed."""

    store: Store
    clock: Callable[[], float]
    _feed: EventFeed

    def check_alerts(self, rules: AlertRules, *, now: float | None = None) -> list[Alert]:
        """Evaluate the database rules of ``rules`` now; returns the alerts this call fired.

        A read transaction finds what changed; only then a write transaction reads again and
        flips the states, so a check that finds nothing new writes nothing. Safe to call from
        any number of processes at once: a crossing fires once in total.
        """
        if not rules.database_rules:
            return []
        now = self.clock() if now is None else now
        # The default rule reads the cycles from the floor its last check with this threshold
        # left (docs/operations.md, "Alerts"): every cycle below it was final then, and read.
        marks: dict[int | None, int] = self.__dict__.setdefault("_default_marks", {})
        since = marks.get(rules.default, 0)
        with self.store.transaction(write=False) as tx:
            # Before the defaults (PostgreSQL reads each statement afresh): a cycle made final
            # after this read is not below the floor, so the next check reads it too.
            floor = alert_conditions.default_floor(tx) if rules.default is not None else 0
            found = changes(tx, rules, now, since)
        if found:
            events: Events = []
            with self.store.transaction() as tx:
                if self.store.dialect == "postgres":
                    tx.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
                fired = apply(tx, events, changes(tx, rules, now, since), now)
                EventFeed.store(tx, events)
        if rules.default is not None:
            if len(marks) >= 16 and rules.default not in marks:
                marks.clear()  # thresholds come and go (a process's rules changed): forget
            # This check's floor, even one lower than the last: PostgreSQL gives a cycle its id
            # as it is inserted, so one committed after a later cycle (another asset's) appears
            # below the last floor, and is read from here on as any cycle not final yet.
            marks[rules.default] = floor
        if not found:
            return []
        self._feed.deliver(events)
        for alert in fired:
            log_alert(alert)
        return fired

    def record_alert(self, alert: Alert, *, later: bool = False) -> None:
        """Store ``alert`` as an ``alert.fired`` event (a firing decided by the caller, e.g. a
        gate's invalid-payment rules) and log it.

        ``later=True``: logged now, written off the caller's path with this process's next
        write or within the store's window (a failure is logged).
        """
        if not later:
            events: Events = []
            with self.store.transaction() as tx:
                emit_alert(events, alert)
                EventFeed.store(tx, events)
            self._feed.deliver(events)
            log_alert(alert)
            return
        log_alert(alert)
        queued: Events = []

        def write(tx: Tx) -> None:
            queued.clear()  # a batch that failed elsewhere applies each job again
            emit_alert(queued, alert)
            EventFeed.store(tx, queued)

        def failed(error: Exception) -> None:
            log.error("could not store the %s alert on %s: %s", alert.rule, alert.subject, error)

        try:
            self.store.deferred.submit(
                Task(write, committed=lambda: self._feed.deliver(queued), failed=failed)
            )
        except RuntimeError as exc:  # the store is closed
            failed(exc)
