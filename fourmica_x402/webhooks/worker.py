"""The :class:`Webhooks` facade and its worker: one round enqueues then delivers, in a thread.

:class:`Webhooks` holds the settings, the HTTP client and the worker thread; its methods come
from :mod:`.subscriptions`, :mod:`.outbox` and :mod:`.delivery`, which share its store and
clock. The thread wakes when the next delivery is due (at most ``interval`` seconds later),
when this process's Core commits an event, or when it sees an event another process wrote (it
looks every ``_POLL``, 100 ms: one indexed read of the newest event id), but leaves at least
``_MIN_GAP`` (50 ms) between rounds, so a busy Core cannot turn it into a busy loop.
Any number of processes may run workers on one database: enqueuers take turns on the cursor
row and a delivery is claimed by a conditional ``UPDATE`` (:mod:`.outbox`, :mod:`.delivery`).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from ..core.common import INT64_MAX
from ..core.schema import migrate
from ..errors import ConfigurationError
from .delivery import DeliveryMixin
from .outbox import MIGRATIONS, OutboxMixin
from .subscriptions import SubscriptionsMixin, _subscription_id

if TYPE_CHECKING:
    from ..core import Core

__all__ = ["Webhooks"]

# One logger name for the whole package: the one log configurations filter on.
log = logging.getLogger("fourmica_x402.webhooks")

_MIN_GAP = 0.05  # seconds between two rounds of the worker, however busy the Core is
_POLL = 0.1  # seconds between two looks for events written by other processes


def _check_interval(interval: float) -> None:
    """A wait the thread can make: an infinite one (or past ``threading.TIMEOUT_MAX``) raised
    OverflowError in the worker's thread, which ended it after its first round."""
    if isinstance(interval, bool) or not 0 < interval <= threading.TIMEOUT_MAX:
        raise ConfigurationError(
            f"interval must be positive seconds, at most {threading.TIMEOUT_MAX:g}"
        )


class Webhooks(SubscriptionsMixin, OutboxMixin, DeliveryMixin):
    """Webhook subscriptions, their outbox and delivery log, in the Core's database.

    ``client`` is the ``httpx.Client`` requests go through (default: one of our own, closed by
    :meth:`close`); an attempt ends within ``timeout`` seconds, whole (a receiver sending
    its answer a byte at a time is cut off, not waited for) — on a connection the attempt
    opens, as every attempt does on the default client; a client of your own that holds a
    kept-alive connection to the receiver bounds each read of it only. A failed attempt ``n`` is retried after
    ``min(max_delay, base_delay × 2ⁿ⁻¹)`` seconds, less up to half of that as jitter; after
    ``max_attempts`` attempts the delivery is ``failed`` (see :meth:`redeliver`); a string of
    failures, a 429 or no answer also pauses the subscription (:mod:`.delivery`), and a delivery
    still pending ``max_age`` seconds after its event was queued (three days by default: a
    receiver dead or paused that long) is ``failed`` too: a dead receiver's backlog holds at
    most ``max_age`` of events, and an operator redelivers them once it is back. ``clock``
    gives the time of attempts and of the signature timestamp.

    Thread-safe; any number of processes may run workers on one database.
    """

    def __init__(
        self,
        core: Core,
        *,
        client: httpx.Client | None = None,
        max_attempts: int = 8,
        max_age: float = 3 * 86400.0,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= int(max_attempts) <= INT64_MAX:  # compared in SQL: a 64-bit integer
            raise ConfigurationError(f"max_attempts must be 1..{INT64_MAX}")
        # Finite: an infinite delay parks a delivery for good, an infinite timeout overflows
        # the timer that ends an attempt, so every attempt failed
        if not 0 < base_delay <= max_delay < math.inf:
            raise ConfigurationError("need 0 < base_delay <= max_delay, in seconds")
        if not 0 < timeout < math.inf:
            raise ConfigurationError("timeout must be positive seconds")
        if not 0 < max_age < math.inf:
            raise ConfigurationError("max_age must be positive seconds")
        self.core = core
        self.store = core.store
        self.max_attempts = int(max_attempts)
        self.max_age = float(max_age)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.timeout = float(timeout)
        # A claim outlives the slowest attempt (``timeout``, whole), with room to record it.
        self.lease = max(60.0, 4 * self.timeout)
        self.clock = clock
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        self._rng = random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        migrate(self.store, migrations=MIGRATIONS, key="webhooks_schema_version")

    def run_once(self, limit: int = 100) -> int:
        """One round: enqueue new events, then deliver what is due. Returns attempts made."""
        self.enqueue()
        return self.deliver_due(limit)

    def resume(self, subscription_id: str) -> bool:
        """End a subscription's pause (its receiver is back): its failures in a row are
        forgotten and its waiting deliveries are due now. False if it is not active."""
        if not _subscription_id(subscription_id):
            return False
        now = self.clock()
        with self.store.transaction() as tx:
            if not tx.execute(
                "UPDATE fx_webhooks SET failures = 0, paused_until = 0 "
                "WHERE subscription_id = ? AND active = 1",
                (subscription_id,),
            ):
                return False
            tx.execute(  # not one in flight: its attempt records what the receiver said
                "UPDATE fx_webhook_deliveries SET next_attempt_at = ? WHERE subscription_id = ? "
                "AND status = 'pending' AND next_attempt_at > ? AND lease IS NULL",
                (now, subscription_id, now),
            )
        self._wake.set()
        return True

    def _events_waiting(self) -> bool:
        """Whether an event has committed past the outbox's cursor (in any process)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT (SELECT MAX(event_id) FROM fx_events), "
                "(SELECT last_event_id FROM fx_webhook_cursor WHERE cursor_id = 1)"
            )
        return row is not None and row[0] is not None and int(row[0]) > int(row[1] or 0)

    def _idle(self, stop: threading.Event, seconds: float, poll: bool) -> None:
        """Wait up to ``seconds``: less if woken, stopped, or (``poll``) an event is waiting."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(_POLL, left) if poll else left):
                break
            try:
                if poll and self._events_waiting():
                    break
            except Exception:  # the database away: the round after the wait logs it
                poll = False
        self._wake.clear()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Run rounds until ``stop`` is set: when the next delivery is due, at most every
        ``interval`` seconds, or sooner when an event is committed (this process's at once,
        another's within ``_POLL``). Errors (a database away) are logged, not raised."""
        _check_interval(interval)
        while not stop.is_set():
            wait, poll = interval, True
            try:
                while self.run_once() >= 100 and not stop.is_set():
                    pass  # a backlog: keep going
                due = self.next_due()
                if due is not None:
                    wait = min(interval, max(0.0, due - self.clock()))
            except Exception:
                log.exception("webhook round failed; retrying in %s s", interval)
                poll = False  # no look every 100 ms at a database that just failed
            if stop.wait(_MIN_GAP):
                return
            self._idle(stop, max(0.0, wait - _MIN_GAP), poll)

    def start(self, interval: float = 1.0) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (once; a second call returns the same thread)."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        _check_interval(interval)  # here: in the thread, it would end it unseen
        self._stop.clear()
        self._unsubscribe = self.core.subscribe(lambda _event: self._wake.set())
        self._thread = threading.Thread(
            target=self.run, args=(self._stop, interval), name="fourmica-webhooks", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread of :meth:`start` after its current round."""
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the worker and close our HTTP client (not the Core, not a client passed in)."""
        self.stop()
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Webhooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Webhooks({self.store!r}, max_attempts={self.max_attempts})"
