"""Webhooks: the Core's events, POSTed to subscribers, signed, at least once.

    >>> hooks = Webhooks(core)                                              # doctest: +SKIP
    >>> sub = hooks.subscribe("https://example.com/hook", events=["debit.paid"])  # doctest: +SKIP
    >>> hooks.start()            # a daemon thread: enqueue + deliver, every second  # doctest: +SKIP

How an event travels, and why none is lost:

1. The Core writes each event into ``fx_events`` in the transaction of the change itself.
2. :meth:`Webhooks.enqueue` reads the events after a cursor (``fx_webhook_cursor``) and, in ONE
   transaction, inserts a ``pending`` row per matching active subscription into the outbox
   (``fx_webhook_deliveries``, ``UNIQUE (subscription_id, event_id)``) and advances the cursor.
   A crash before the commit leaves both untouched; after it, both are durable. Events that
   happen while no :class:`Webhooks` runs are picked up from the cursor when one starts.
3. :meth:`Webhooks.deliver_due` claims a due delivery with a conditional ``UPDATE`` that pushes
   ``next_attempt_at`` one lease into the future (so two workers never send it at the same
   time), POSTs it, and records the outcome: 2xx → ``delivered``; anything else → retried with
   exponential backoff and jitter (capped at ``max_delay``), ``failed`` after ``max_attempts``.
   A worker that dies mid-send leaves the delivery to be retried when its lease runs out.

Delivery is **at least once**: a receiver deduplicates on the body's ``id`` (the event id; the
``X-Fourmica-Delivery`` header is stable across retries too) and must not rely on ordering.

Each request carries ``X-Fourmica-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
with ``X-Fourmica-Timestamp: <unix seconds>``; receivers check it with :func:`verify_signature`,
which also rejects stale timestamps (replays). Secrets are stored in the Core's database (they
are needed to sign) but never logged, never written to the delivery log, and hidden from
``repr``.

PostgreSQL hands out ``event_id`` values when rows are inserted, not when they commit: an event
with a lower id can become visible after one with a higher id. Before reading a batch there,
:meth:`Webhooks.enqueue` briefly takes a ``SHARE`` lock on ``fx_events`` (it waits for the writing
transactions in flight and is released at once) to learn an id up to which every event has
committed, and reads no further; so the cursor never skips an event. SQLite serialises writers,
so its ids commit in order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from .core.schema import migrate
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .core import Core

__all__ = [
    "EVENT_TYPES",
    "Delivery",
    "Subscription",
    "Webhooks",
    "sign",
    "verify_signature",
]

log = logging.getLogger("fourmica_x402.webhooks")

#: Every event type the Core emits (docs/protocol.md, "Events"); ``"*"`` subscribes to all, future ones too.
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "collateral.deposited",
        "guarantee.accepted",
        "guarantee.voided",
        "guarantee.validated",
        "guarantee.cancelled",
        "cycle.closed",
        "cycle.resolved",
        "debit.paid",
        "position.defaulted",
        "credit.claimed",
        "withdrawal.requested",
        "withdrawal.finalized",
    }
)

_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE fx_webhooks (
            subscription_id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL,
            secret TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 1, created_at {real} NOT NULL,
            from_event_id {int} NOT NULL)""",
        """CREATE TABLE fx_webhook_deliveries (
            delivery_id {autoid},
            subscription_id TEXT NOT NULL REFERENCES fx_webhooks (subscription_id),
            event_id {int} NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            created_at {real} NOT NULL, next_attempt_at {real} NOT NULL, lease TEXT,
            last_attempt_at {real}, last_status_code INTEGER, last_error TEXT,
            delivered_at {real},
            UNIQUE (subscription_id, event_id))""",
        """CREATE INDEX fx_webhook_deliveries_due ON fx_webhook_deliveries (next_attempt_at)
            WHERE status = 'pending'""",
        """CREATE INDEX fx_webhook_deliveries_sub ON fx_webhook_deliveries
            (subscription_id, delivery_id)""",
        """CREATE TABLE fx_webhook_cursor (
            cursor_id INTEGER PRIMARY KEY CHECK (cursor_id = 1),
            last_event_id {int} NOT NULL)""",
        # No subscription exists before this migration, so older events concern nobody.
        """INSERT INTO fx_webhook_cursor (cursor_id, last_event_id)
            SELECT 1, COALESCE(MAX(event_id), 0) FROM fx_events""",
    ],
]

_BATCH = 500  # events read per enqueue transaction
_MIN_GAP = 0.05  # seconds between two rounds of the worker, however busy the Core is
_MAX_ERROR = 500  # characters of an error message kept in the delivery log

_DELIVERY_COLUMNS = (
    "d.delivery_id, d.subscription_id, d.event_id, e.type, d.status, d.attempts, d.created_at, "
    "d.next_attempt_at, d.last_attempt_at, d.last_status_code, d.last_error, d.delivered_at"
)


@dataclass(frozen=True)
class Subscription:
    """Where to POST which events, and the secret that signs them (hidden from ``repr``)."""

    subscription_id: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)
    active: bool
    created_at: float

    def matches(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events

    def to_dict(self, *, include_secret: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["events"] = list(self.events)
        if not include_secret:
            del data["secret"]
        return data


@dataclass(frozen=True)
class Delivery:
    """One event for one subscription: an entry of the outbox and of the delivery log."""

    delivery_id: int
    subscription_id: str
    event_id: int
    event_type: str
    status: str  # pending | delivered | failed
    attempts: int
    created_at: float
    next_attempt_at: float
    last_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _delivery(r: Sequence[Any]) -> Delivery:
    return Delivery(
        int(r[0]),
        r[1],
        int(r[2]),
        r[3],
        r[4],
        int(r[5]),
        float(r[6]),
        float(r[7]),
        None if r[8] is None else float(r[8]),
        None if r[9] is None else int(r[9]),
        r[10],
        None if r[11] is None else float(r[11]),
    )


def _subscription(r: Sequence[Any]) -> Subscription:
    return Subscription(r[0], r[1], tuple(json.loads(r[2])), r[3], bool(r[4]), float(r[5]))


def _signed_payload(timestamp: int | str, body: bytes | str) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return f"{timestamp}.".encode() + raw


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """The ``X-Fourmica-Signature`` value: ``v1=`` + hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    digest = hmac.new(secret.encode(), _signed_payload(timestamp, body), hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify_signature(
    secret: str,
    timestamp: int | str | None,
    body: bytes | str,
    header: str | None,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """For receivers: is ``header`` (``X-Fourmica-Signature``) a valid signature of ``body``?

    ``timestamp`` is the ``X-Fourmica-Timestamp`` header; one more than ``tolerance`` seconds
    away from ``now`` (default: the current time) is refused, so a captured request cannot be
    replayed later. ``header`` may hold several comma-separated ``v1=`` values (secret
    rotation); one match is enough. The comparison is constant-time.
    """
    if not header or timestamp is None:
        return False
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign(secret, ts, body)
    ok = False
    for candidate in header.split(","):
        ok |= hmac.compare_digest(candidate.strip().encode(), expected.encode())
    return ok


def _check_url(url: str) -> str:
    if not isinstance(url, str):
        raise ConfigurationError("webhook url must be a string")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(f"webhook url must be http:// or https://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigurationError("webhook url has no host")
    if any(c.isspace() or ord(c) < 32 for c in url.strip()):
        raise ConfigurationError("webhook url contains whitespace or control characters")
    return url.strip()


def _check_events(events: Iterable[str] | str) -> tuple[str, ...]:
    names = [events] if isinstance(events, str) else list(events)
    if not names:
        raise ConfigurationError('subscribe to at least one event type (or "*" for all)')
    unknown = sorted({n for n in names if n != "*" and n not in EVENT_TYPES})
    if unknown:
        raise ConfigurationError(
            f"unknown event type(s) {', '.join(map(repr, unknown))}; "
            f'known: {", ".join(sorted(EVENT_TYPES))} (or "*")'
        )
    return ("*",) if "*" in names else tuple(sorted(set(names)))


class Webhooks:
    """Webhook subscriptions, their outbox and delivery log, in the Core's database.

    ``client`` is the ``httpx.Client`` requests go through (default: one of our own, closed by
    :meth:`close`); ``timeout`` applies to each request. A failed attempt ``n`` is retried after
    ``min(max_delay, base_delay × 2ⁿ⁻¹)`` seconds, less up to half of that as jitter; after
    ``max_attempts`` attempts the delivery is ``failed`` (see :meth:`redeliver`). ``clock``
    gives the time of attempts and of the signature timestamp.

    Thread-safe; any number of processes may run workers on one database.
    """

    def __init__(
        self,
        core: Core,
        *,
        client: httpx.Client | None = None,
        max_attempts: int = 8,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if int(max_attempts) < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if not 0 < base_delay <= max_delay:
            raise ConfigurationError("need 0 < base_delay <= max_delay")
        if not timeout > 0:
            raise ConfigurationError("timeout must be positive")
        self.core = core
        self.store = core.store
        self.max_attempts = int(max_attempts)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.timeout = float(timeout)
        # A claim outlives the slowest attempt (connect + write + read, each up to ``timeout``).
        self.lease = max(60.0, 4 * self.timeout)
        self.clock = clock
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        self._rng = random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        migrate(self.store, migrations=_MIGRATIONS, key="webhooks_schema_version")

    # -- subscriptions --------------------------------------------------------------------------

    def subscribe(
        self, url: str, events: Iterable[str] | str = ("*",), secret: str | None = None
    ) -> Subscription:
        """Subscribe ``url`` to ``events`` (names of :data:`EVENT_TYPES`, or ``"*"``).

        The subscription receives the events that happen after it is created. ``secret`` signs
        its requests; a random one is made when none is given (read it from the result).
        Raises :class:`~fourmica_x402.errors.ConfigurationError` (a ``ValueError``) for a URL
        that is not http(s), an unknown event type or an empty secret.
        """
        url = _check_url(url)
        names = _check_events(events)
        if secret is None:
            secret = "whsec_" + secrets.token_hex(32)
        elif not isinstance(secret, str) or not secret:
            raise ConfigurationError("webhook secret must be a non-empty string")
        sub_id = "wh_" + secrets.token_hex(12)
        now = self.clock()
        with self.store.transaction() as tx:
            row = tx.one("SELECT COALESCE(MAX(event_id), 0) FROM fx_events")
            tx.execute(
                "INSERT INTO fx_webhooks (subscription_id, url, events, secret, active, "
                "created_at, from_event_id) VALUES (?, ?, ?, ?, 1, ?, ?)",
                (sub_id, url, json.dumps(list(names)), secret, now, int(row[0]) if row else 0),
            )
        log.info("webhook %s subscribed to %s", sub_id, ",".join(names))
        return Subscription(sub_id, url, names, secret, True, now)

    def unsubscribe(self, subscription_id: str) -> bool:
        """Deactivate a subscription; its pending deliveries fail. False if it was not active."""
        now = self.clock()
        with self.store.transaction() as tx:
            changed = tx.execute(
                "UPDATE fx_webhooks SET active = 0 WHERE subscription_id = ? AND active = 1",
                (subscription_id,),
            )
            if changed:
                tx.execute(
                    "UPDATE fx_webhook_deliveries SET status = 'failed', lease = NULL, "
                    "last_error = 'unsubscribed', last_attempt_at = COALESCE(last_attempt_at, ?) "
                    "WHERE subscription_id = ? AND status = 'pending'",
                    (now, subscription_id),
                )
        return bool(changed)

    def subscription(self, subscription_id: str) -> Subscription | None:
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                "SELECT subscription_id, url, events, secret, active, created_at FROM fx_webhooks "
                "WHERE subscription_id = ?",
                (subscription_id,),
            )
        return None if row is None else _subscription(row)

    def subscriptions(self, *, include_inactive: bool = False) -> list[Subscription]:
        """The subscriptions, oldest first (active ones only unless ``include_inactive``)."""
        sql = "SELECT subscription_id, url, events, secret, active, created_at FROM fx_webhooks"
        if not include_inactive:
            sql += " WHERE active = 1"
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY created_at, subscription_id")
        return [_subscription(r) for r in rows]

    # -- the outbox -----------------------------------------------------------------------------

    def _committed_high(self) -> int | None:
        """An event id up to which every event has committed; None when nothing is new."""
        with self.store.transaction(write=False) as tx:
            cursor = tx.one("SELECT last_event_id FROM fx_webhook_cursor WHERE cursor_id = 1")
            high = tx.one("SELECT MAX(event_id) FROM fx_events")
        if cursor is None or high is None or high[0] is None or int(high[0]) <= int(cursor[0]):
            return None
        if self.store.dialect != "postgres":
            return int(high[0])
        with self.store.transaction() as tx:
            # Waits for the transactions that have inserted events to finish; any later one
            # takes its ids after this lock is released. Held for this one statement only.
            tx.execute("LOCK TABLE fx_events IN SHARE MODE")
            high = tx.one("SELECT MAX(event_id) FROM fx_events")
        return None if high is None or high[0] is None else int(high[0])

    def enqueue(self) -> int:
        """Move the Core's new events into the outbox; returns how many deliveries were added.

        Each batch is one transaction: outbox rows and the cursor commit together, so a crash
        neither loses nor doubles an event.
        """
        high = self._committed_high()
        if high is None:
            return 0
        added = 0
        while True:
            with self.store.transaction() as tx:
                # A no-op UPDATE locks the cursor row: concurrent enqueuers take turns.
                tx.execute(
                    "UPDATE fx_webhook_cursor SET last_event_id = last_event_id WHERE cursor_id = 1"
                )
                row = tx.one("SELECT last_event_id FROM fx_webhook_cursor WHERE cursor_id = 1")
                cursor = int(row[0]) if row else 0
                if cursor >= high:
                    return added
                events = tx.all(
                    "SELECT event_id, type FROM fx_events WHERE event_id > ? AND event_id <= ? "
                    "ORDER BY event_id LIMIT ?",
                    (cursor, high, _BATCH),
                )
                subs = [
                    (sub_id, set(json.loads(names)), int(start))
                    for sub_id, names, start in tx.all(
                        "SELECT subscription_id, events, from_event_id FROM fx_webhooks "
                        "WHERE active = 1"
                    )
                ]
                now = self.clock()
                rows = [
                    (sub_id, int(event_id), now, now)
                    for event_id, type_ in events
                    for sub_id, names, start in subs
                    if int(event_id) > start and ("*" in names or type_ in names)
                ]
                if rows:
                    tx.many(
                        "INSERT INTO fx_webhook_deliveries (subscription_id, event_id, status, "
                        "attempts, created_at, next_attempt_at) VALUES (?, ?, 'pending', 0, ?, ?) "
                        "ON CONFLICT (subscription_id, event_id) DO NOTHING",
                        rows,
                    )
                last = int(events[-1][0]) if events else high
                tx.execute(
                    "UPDATE fx_webhook_cursor SET last_event_id = ? WHERE cursor_id = 1", (last,)
                )
            added += len(rows)

    # -- delivery -------------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(attempts - 1, 62))
        return delay * (0.5 + self._rng.random() / 2)

    def _claim(self, delivery_id: int, lease: str) -> tuple[Any, ...] | None:
        now = self.clock()
        with self.store.transaction() as tx:
            if not tx.execute(
                "UPDATE fx_webhook_deliveries SET attempts = attempts + 1, lease = ?, "
                "next_attempt_at = ?, last_attempt_at = ? WHERE delivery_id = ? "
                "AND status = 'pending' AND next_attempt_at <= ? AND attempts < ?",
                (lease, now + self.lease, now, delivery_id, now, self.max_attempts),
            ):
                return None  # another worker has it, or it is no longer due
            return tx.one(
                "SELECT d.attempts, w.url, w.secret, e.event_id, e.type, e.at, e.network, "
                "e.asset, e.address, e.data FROM fx_webhook_deliveries d "
                "JOIN fx_webhooks w ON w.subscription_id = d.subscription_id "
                "JOIN fx_events e ON e.event_id = d.event_id WHERE d.delivery_id = ?",
                (delivery_id,),
            )

    def _send(self, delivery_id: int, row: Sequence[Any]) -> tuple[int | None, str | None]:
        _, url, secret, event_id, type_, at, network, asset, address, data = row
        body = json.dumps(
            {
                "id": int(event_id),
                "type": type_,
                "at": float(at),
                "network": network,
                "asset": asset,
                "address": address,
                "data": json.loads(data),
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fourmica-x402-webhooks",
            "X-Fourmica-Event": type_,
            "X-Fourmica-Delivery": str(delivery_id),
            "X-Fourmica-Timestamp": str(timestamp),
            "X-Fourmica-Signature": sign(secret, timestamp, body),
        }
        try:
            # Streamed and never read: a receiver's response body is of no interest, whatever size.
            with self._client.stream(
                "POST", url, content=body, headers=headers, timeout=self.timeout
            ) as response:
                code = response.status_code
        except Exception as exc:  # network, TLS, a URL httpx refuses: all recorded, retried
            return None, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        return code, None if 200 <= code < 300 else f"HTTP {code}"

    def _record(
        self, delivery_id: int, lease: str, attempts: int, code: int | None, error: str | None
    ) -> str:
        now = self.clock()
        with self.store.transaction() as tx:
            if error is None:
                # Whoever holds the lease now: the receiver has it, so it is delivered.
                tx.execute(
                    "UPDATE fx_webhook_deliveries SET status = 'delivered', delivered_at = ?, "
                    "last_status_code = ?, last_error = NULL, lease = NULL "
                    "WHERE delivery_id = ? AND status = 'pending'",
                    (now, code, delivery_id),
                )
                return "delivered"
            status = "failed" if attempts >= self.max_attempts else "pending"
            tx.execute(
                "UPDATE fx_webhook_deliveries SET status = ?, next_attempt_at = ?, "
                "last_status_code = ?, last_error = ?, lease = NULL "
                "WHERE delivery_id = ? AND status = 'pending' AND lease = ?",
                (status, now + self._backoff(attempts), code, error, delivery_id, lease),
            )
            return status

    def deliver_due(self, limit: int = 100) -> int:
        """Attempt up to ``limit`` due deliveries; returns how many attempts were made.

        After an attempt to a subscription fails with a network error, a 429 or a 5xx, its
        other deliveries wait for the next round: a dead receiver costs one timeout per round,
        not one per queued event.
        """
        now = self.clock()
        with self.store.transaction() as tx:
            # Claimed by a worker that died during its last attempt: nothing left to try.
            tx.execute(
                "UPDATE fx_webhook_deliveries SET status = 'failed', lease = NULL, "
                "last_error = 'worker lost during the last attempt' "
                "WHERE status = 'pending' AND attempts >= ? AND next_attempt_at <= ?",
                (self.max_attempts, now),
            )
            due = tx.all(
                "SELECT delivery_id, subscription_id FROM fx_webhook_deliveries "
                "WHERE status = 'pending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, delivery_id LIMIT ?",
                (now, int(limit)),
            )
        attempted = 0
        down: set[str] = set()
        for delivery_id, sub_id in due:
            if sub_id in down:
                continue
            lease = secrets.token_hex(8)
            row = self._claim(int(delivery_id), lease)
            if row is None:
                continue
            attempted += 1
            code, error = self._send(int(delivery_id), row)
            status = self._record(int(delivery_id), lease, int(row[0]), code, error)
            if error is not None:
                log.warning(
                    "webhook delivery %s (subscription %s, attempt %s) %s: %s",
                    delivery_id,
                    sub_id,
                    row[0],
                    "failed for good" if status == "failed" else "will be retried",
                    error,
                )
                if code is None or code == 429 or code >= 500:
                    down.add(sub_id)
        return attempted

    def redeliver(self, delivery_id: int) -> bool:
        """Queue a delivery again (a failed one, or to replay a delivered one), attempts reset."""
        with self.store.transaction() as tx:
            return bool(
                tx.execute(
                    "UPDATE fx_webhook_deliveries SET status = 'pending', attempts = 0, "
                    "next_attempt_at = ?, lease = NULL WHERE delivery_id = ? "
                    "AND status <> 'pending' AND subscription_id IN "
                    "(SELECT subscription_id FROM fx_webhooks WHERE active = 1)",
                    (self.clock(), delivery_id),
                )
            )

    def deliveries(
        self, subscription_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """The delivery log, newest first, by subscription and/or status."""
        where, params = [], []
        for column, value in (("d.subscription_id", subscription_id), ("d.status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM fx_webhook_deliveries d "
            "JOIN fx_events e ON e.event_id = d.event_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY d.delivery_id DESC LIMIT ?", (*params, int(limit)))
        return [_delivery(r) for r in rows]

    # -- the worker -----------------------------------------------------------------------------

    def run_once(self, limit: int = 100) -> int:
        """One round: enqueue new events, then deliver what is due. Returns attempts made."""
        self.enqueue()
        return self.deliver_due(limit)

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Run rounds until ``stop`` is set: every ``interval`` seconds, or sooner when this
        process's Core commits an event. Errors (a database away) are logged, not raised."""
        while not stop.is_set():
            try:
                while self.run_once() >= 100 and not stop.is_set():
                    pass  # a backlog: keep going
            except Exception:
                log.exception("webhook round failed; retrying in %s s", interval)
            if stop.wait(_MIN_GAP):
                return
            self._wake.wait(max(0.0, interval - _MIN_GAP))
            self._wake.clear()

    def start(self, interval: float = 1.0) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (once; a second call returns the same thread)."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
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
