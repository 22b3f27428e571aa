"""Alerts on a seller gate and on the service (docs/operations.md, "Alerts").

    payments = PaymentConfig(..., alerts=AlertRules(invalid_payments_per_ip=50,
                                                    collateral_floor=1_000_000, default=0))

Each firing is an ``alert.fired`` event of the Core (webhooks deliver it, signed like every
event) and a ``WARNING`` line of the ``fourmica_x402.alerts`` logger. Two kinds of rules:

- **invalid payments** per payer, per client address and per route: the database stores no
  refused payment, so each gate counts its own, in a sliding window
  (:class:`InvalidPaymentAlerts`, an ``on_failure`` hook the gate chains before the seller's
  own). A key fires when its count reaches the threshold, and again only once its count in
  the window has fallen below it and reaches it anew;
- **the database rules** (collateral floor, missed settlement deadline, default, withdrawal,
  reconciler backlog): ``Core.check_alerts`` evaluates them; :class:`AlertChecker` calls it
  every ``interval`` seconds in a daemon thread of each gate on the embedded Core, and the
  service does in its loop. Their states live in the database, so a crossing fires once
  whatever the number of processes.

Nothing of it touches a paid request: the hook runs on the failure path only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .core.alerts import AlertRules, log_alert
from .core.models import Alert
from .errors import Reason

if TYPE_CHECKING:
    from .core import Core
    from .gate.flow import Gate
    from .gate.types import RequestView

__all__ = ["Alert", "AlertChecker", "AlertRules", "GateAlerts", "InvalidPaymentAlerts"]

log = logging.getLogger("fourmica_x402.alerts")

#: Refusals the Core makes once the signature is checked: they count against the payer the
#: payment names (any other refusal proves nothing about it, so it counts only per client
#: address and per route), as the throttle attributes them (docs/operations.md, "Alerts").
PAYER_REASONS = frozenset(
    {
        Reason.PAYER_SUSPENDED,
        Reason.REPLAYED_REQUEST_ID,
        Reason.TIMESTAMP_IN_FUTURE,
        Reason.TIMESTAMP_OUTSIDE_TAB,
        Reason.TAB_EXPIRED,
        Reason.UNKNOWN_TAB,
        Reason.TAB_MISMATCH,
        Reason.RECIPIENT_MISMATCH,
        Reason.ASSET_MISMATCH,
        Reason.AMOUNT_MISMATCH,
        Reason.VALIDATION_POLICY_MISMATCH,
        Reason.INSUFFICIENT_COLLATERAL,
    }
)

#: Keys kept per rule at most; beyond, the keys whose window is empty are dropped first, then
#: the oldest, down to half.
MAX_KEYS = 100_000


class _Window:
    """One rule's sliding-window counts per key, and which keys are armed."""

    def __init__(self, rule: str, threshold: int, window: float) -> None:
        self.rule, self.threshold, self.window = rule, threshold, window
        self._hits: dict[str, deque[float]] = {}
        self._fired: set[str] = set()  # keys disarmed until their count falls below

    def hit(self, key: str, now: float) -> int | None:
        """Count one invalid payment of ``key``; the count when this hit crosses the threshold."""
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= MAX_KEYS:
                self._sweep(now)
            hits = self._hits[key] = deque(maxlen=self.threshold)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if key in self._fired and len(hits) < self.threshold:
            self._fired.discard(key)  # fell back below: armed again
        hits.append(now)
        if len(hits) >= self.threshold and key not in self._fired:
            self._fired.add(key)
            return len(hits)
        return None

    def _sweep(self, now: float) -> None:
        """Down to half of :data:`MAX_KEYS`, stale keys first, then the oldest: a sweep that
        freed only a few would run again at the next new key, reading every key each time."""
        stale = [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]
        for key in stale:
            del self._hits[key]
            self._fired.discard(key)
        for key in list(self._hits)[: max(len(self._hits) - MAX_KEYS // 2, 0)]:
            del self._hits[key]
            self._fired.discard(key)


class InvalidPaymentAlerts:
    """An ``on_failure`` hook: the invalid-payment rules of ``rules``, in this process.

    ``core``: where a firing is stored as an event (off the request's path); None (a gate on a
    remote facilitator) logs it only. ``route_of(request)`` names the route of a refused
    request (the gate's route key). ``then`` is the next hook (the seller's own), called after
    counting; its result is returned. ``clock``: a monotonic clock, for the windows.
    """

    def __init__(
        self,
        rules: AlertRules,
        *,
        core: Core | None = None,
        route_of: Callable[[RequestView], str | None] | None = None,
        then: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules, self.core, self.then = rules, core, then
        self._route_of = route_of
        self._clock = clock
        self._windows = {
            name: _Window(name, getattr(rules, name), rules.invalid_window)
            for name in rules.payment_rules
        }
        self._lock = threading.Lock()

    def __call__(self, request: RequestView, error: Any) -> Any:
        if getattr(error, "status", 400) < 500:  # a facilitator or database down is no refusal
            self.observe(request, str(getattr(error, "reason", None) or "unknown"))
        return None if self.then is None else self.then(request, error)

    def observe(self, request: RequestView, reason: str) -> list[Alert]:
        """Count one refused payment of ``request``; returns the alerts it fired."""
        keys: list[tuple[str, str | None]] = []
        windows = self._windows
        if "invalid_payments_per_ip" in windows:  # an IPv6 sender by its /64, as throttled
            from .gate.throttle import Throttle

            keys.append(("invalid_payments_per_ip", Throttle.sender(request.client)))
        if "invalid_payments_per_route" in windows:
            keys.append(("invalid_payments_per_route", self._route(request)))
        if "invalid_payments_per_payer" in windows and reason in PAYER_REASONS:
            keys.append(("invalid_payments_per_payer", _payer(request)))
        fired: list[Alert] = []
        now = self._clock()
        with self._lock:
            for rule, key in keys:
                if key:
                    count = windows[rule].hit(key, now)
                    if count is not None:
                        fired.append(self._alert(rule, key, count, reason))
        for alert in fired:
            self._fire(alert)
        return fired

    def _alert(self, rule: str, key: str, count: int, reason: str) -> Alert:
        return Alert(
            rule=rule,
            subject=key,
            value=count,
            threshold=self._windows[rule].threshold,
            at=time.time() if self.core is None else self.core.clock(),
            address=key if rule == "invalid_payments_per_payer" else None,
            detail={"window": self.rules.invalid_window, "reason": reason},
        )

    def _fire(self, alert: Alert) -> None:
        if self.core is None:
            log_alert(alert)
            return
        try:
            self.core.record_alert(alert, later=True)
        except Exception:  # never fail the refusal it counts
            log.exception("could not record the %s alert", alert.rule)

    def _route(self, request: RequestView) -> str | None:
        if self._route_of is not None:
            try:
                found = self._route_of(request)
            except Exception:  # a router that fails here names no route: use the path
                found = None
            if found:
                return found
        return f"{request.method.upper()} {request.path}"


def _payer(request: RequestView) -> str | None:
    """The payer a payment header names (read again: only on the failure path)."""
    from .guarantee import SignedGuarantee
    from .wire import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER, decode_payment_header

    for name, version in ((PAYMENT_SIGNATURE_HEADER, 2), (X_PAYMENT_HEADER, 1)):
        values = request.header_values(name)
        if values:
            try:
                payload = decode_payment_header(values[0], expected_version=version)
                return SignedGuarantee.from_json(payload.payload).claims.user_address
            except Exception:
                return None
    return None


class AlertChecker:
    """Calls ``core.check_alerts(rules)`` every ``rules.interval`` seconds in a daemon thread
    (:meth:`start`) until :meth:`stop`; :meth:`check` runs one check by hand."""

    def __init__(self, core: Core, rules: AlertRules) -> None:
        self.core, self.rules = core, rules
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> AlertChecker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fourmica-alerts", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def check(self) -> list[Alert]:
        """One check; a failure (the database away) is logged once until a check succeeds."""
        try:
            fired = self.core.check_alerts(self.rules)
        except Exception as exc:
            if not self._failing:
                log.error(
                    "checking the alert rules failed (retried every %ss): %s",
                    self.rules.interval,
                    exc,
                )
            self._failing = True
            return []
        self._failing = False
        return fired

    def _run(self) -> None:
        while not self._stop.wait(self.rules.interval):
            if getattr(self.core.store.deferred, "closed", False):
                return  # the Core was closed
            self.check()


class GateAlerts:
    """A gate's alerts: the invalid-payment hook chained before the seller's ``on_failure``
    (:attr:`config`: the gate's configuration with it), and the database rules' checker when
    the gate settles on the embedded Core."""

    def __init__(self, gate: Gate, rules: AlertRules) -> None:
        self.rules = rules
        config = gate.config
        self.hook: InvalidPaymentAlerts | None = None
        if rules.payment_rules:
            routes = gate.routes

            def route_of(request: RequestView) -> str | None:
                method = request.method.upper()
                if request.resolve is not None:
                    endpoint = request.resolve()
                    route = None if endpoint is None else routes.for_endpoint(method, endpoint)
                else:
                    route = routes.match(method, request.path)
                return None if route is None else route.key

            self.hook = InvalidPaymentAlerts(
                rules, core=gate.core, route_of=route_of, then=config.on_failure
            )
            config = replace(config, on_failure=self.hook)
        #: The gate's configuration, its ``on_failure`` chained after the alert hook.
        self.config = config
        self.checker: AlertChecker | None = None
        if rules.database_rules:
            if gate.core is None:
                log.warning(
                    "alerts: %s read the Core's database; this gate settles on a remote "
                    "facilitator, so set them on the service (fourmica-x402 serve --alerts)",
                    ", ".join(rules.database_rules),
                )
            else:
                self.checker = AlertChecker(gate.core, rules).start()

    def stop(self) -> None:
        """Stop the checker's thread (tests; a process's exit stops it anyway)."""
        if self.checker is not None:
            self.checker.stop()
