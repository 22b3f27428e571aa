"""Delivering the outbox: claim a due delivery, POST it signed, record the outcome.

:meth:`DeliveryMixin.deliver_due` claims a due delivery with a conditional ``UPDATE`` that
pushes ``next_attempt_at`` one lease into the future (so two workers never send it at the same
time), POSTs it, and records the outcome: 2xx → ``delivered``; anything else → retried with
exponential backoff and jitter (capped at ``max_delay``), ``failed`` after ``max_attempts``.
A worker that dies mid-send leaves the delivery to be retried when its lease runs out.

A failure also counts against the subscription (``fx_webhooks.failures``, reset by a 2xx):
after ``_STREAK`` failed answers in a row, at once after a 429 or no answer (refused, cut off
at the timeout), the subscription pauses (``paused_until``, read by every worker) for a backoff
growing with the streak, or for the 429's ``Retry-After``. A flaky receiver thus keeps getting
the other due deliveries while its failed ones wait their own backoff; a dead one gets one
attempt per pause, not one per queued event (docs/operations.md, "Webhooks").

Delivery is **at least once**: a receiver deduplicates on the body's ``id`` (the event id; the
``X-Fourmica-Delivery`` header is stable across retries too) and must not rely on ordering.
The secret signs the request (:mod:`.signing`) but is never logged nor written to the log.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from .signing import sign

if TYPE_CHECKING:
    from ..core.store import Store

__all__ = ["DeliveryMixin"]

# One logger name for the whole package: the one log configurations filter on.
log = logging.getLogger("fourmica_x402.webhooks")

_MAX_ERROR = 500  # characters of an error message kept in the delivery log
_STREAK = 5  # failed answers (5xx, 4xx) in a row before a subscription pauses


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", a digit float() refuses
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@``, and that pair as basic auth: httpx logs every
    request's URL (at INFO), which would write a receiver's password to the log."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), (user, password)


class _Cutoff:
    """Ends an attempt still going after ``seconds``, whole: shuts its socket down, which wakes
    the read blocked on it. httpx's timeout bounds each read, so a receiver sending a byte now
    and then held the worker, and every other subscription's deliveries, as long as it liked."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's ``trace`` extension: the socket, once connected (and after TLS)."""
        # Connected, and again after each TLS wrapping (to the receiver, or to a proxy and
        # then through its tunnel): the last socket is the one the answer comes on.
        if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            stream = info.get("return_value")
            with self._lock:
                self._sock = None if stream is None else stream.get_extra_info("socket")
                if self.fired:
                    self._shut()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Cutoff:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class DeliveryMixin:
    """The sending methods of :class:`~fourmica_x402.webhooks.Webhooks`."""

    store: Store
    clock: Callable[[], float]
    max_attempts: int
    max_age: float
    base_delay: float
    max_delay: float
    timeout: float
    lease: float
    _client: httpx.Client
    _rng: random.Random

    def _backoff(self, attempts: int) -> float:
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(attempts - 1, 62))
        return delay * (0.5 + self._rng.random() / 2)

    def _claim(self, delivery_id: int, lease: str) -> tuple[Any, ...] | None:
        now = self.clock()
        with self.store.transaction() as tx:
            if not tx.execute(
                "UPDATE fx_webhook_deliveries SET attempts = attempts + 1, lease = ?, "
                "next_attempt_at = ?, last_attempt_at = ? WHERE delivery_id = ? "
                "AND status = 'pending' AND next_attempt_at <= ? AND attempts < ? "
                "AND subscription_id IN (SELECT subscription_id FROM fx_webhooks "
                "WHERE paused_until <= ?)",  # paused by another worker meanwhile: not now
                (lease, now + self.lease, now, delivery_id, now, self.max_attempts, now),
            ):
                return None  # another worker has it, or it is no longer due
            return tx.one(
                "SELECT d.attempts, w.url, w.secret, e.event_id, e.type, e.at, e.network, "
                "e.asset, e.address, e.data FROM fx_webhook_deliveries d "
                "JOIN fx_webhooks w ON w.subscription_id = d.subscription_id "
                "JOIN fx_events e ON e.event_id = d.event_id WHERE d.delivery_id = ?",
                (delivery_id,),
            )

    def _send(
        self, delivery_id: int, row: Sequence[Any]
    ) -> tuple[int | None, str | None, float | None]:
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
        url, auth = _credentials(url)
        # One connection per attempt ("close"): the cutoff finds its socket as it connects.
        headers["Connection"] = "close"
        cutoff = _Cutoff(self.timeout)
        try:
            # Streamed and never read: a receiver's response body is of no interest, whatever size.
            with (
                cutoff,
                self._client.stream(
                    "POST",
                    url,
                    content=body,
                    headers=headers,
                    auth=auth or httpx.USE_CLIENT_DEFAULT,
                    timeout=self.timeout,
                    extensions={"trace": cutoff.trace},
                ) as response,
            ):
                code = response.status_code
                wait = _retry_after(response.headers.get("Retry-After")) if code == 429 else None
        except Exception as exc:  # network, TLS, a URL httpx refuses: all recorded, retried
            if cutoff.fired:
                return None, f"no answer within {self.timeout:g} s", None
            return None, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR], None
        return code, None if 200 <= code < 300 else f"HTTP {code}", wait

    def _record(
        self,
        delivery_id: int,
        sub_id: str,
        lease: str,
        attempts: int,
        outcome: tuple[int | None, str | None, float | None],
    ) -> tuple[str, float]:
        """Record an attempt and the subscription's health, in one transaction: the delivery's
        status, and until when the subscription is paused (0: it is not)."""
        code, error, wait = outcome
        now = self.clock()
        with self.store.transaction() as tx:
            if error is None:
                # Whoever holds the lease now, and failed or not meanwhile (for max_age, under
                # an attempt that outlived its lease): the receiver has it, so it is delivered.
                tx.execute(
                    "UPDATE fx_webhook_deliveries SET status = 'delivered', delivered_at = ?, "
                    "last_status_code = ?, last_error = NULL, lease = NULL "
                    "WHERE delivery_id = ? AND status <> 'delivered'",
                    (now, code, delivery_id),
                )
                tx.execute(
                    "UPDATE fx_webhooks SET failures = 0 WHERE subscription_id = ? "
                    "AND failures <> 0",
                    (sub_id,),
                )
                return "delivered", 0.0
            row = tx.one(
                "UPDATE fx_webhooks SET failures = failures + 1 WHERE subscription_id = ? "
                "RETURNING failures, paused_until",
                (sub_id,),
            )
            streak, paused = (int(row[0]), float(row[1])) if row else (1, 0.0)
            if code == 429 and wait:  # 0 or a date past: no wait asked, the backoff then
                pause = min(self.max_delay, wait)
            elif code is None or code == 429:  # no answer at all, or asked to slow down
                pause = self._backoff(streak)
            elif streak >= _STREAK:  # an answer, but a string of 5xx (or 4xx)
                pause = self._backoff(streak - _STREAK + 1)
            else:
                pause = 0.0
            if pause:
                paused = max(paused, now + pause)
                tx.execute(
                    "UPDATE fx_webhooks SET paused_until = ? WHERE subscription_id = ?",
                    (paused, sub_id),
                )
            status = "failed" if attempts >= self.max_attempts else "pending"
            tx.execute(
                "UPDATE fx_webhook_deliveries SET status = ?, next_attempt_at = ?, "
                "last_status_code = ?, last_error = ?, lease = NULL "
                "WHERE delivery_id = ? AND status = 'pending' AND lease = ?",
                (
                    status,
                    max(now + self._backoff(attempts), paused),
                    code,
                    error,
                    delivery_id,
                    lease,
                ),
            )
            return status, paused if paused > now else 0.0

    def _due(self, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` due deliveries of the subscriptions not paused, taken in turn from
        each (oldest due first within one), so no subscription's backlog starves another's."""
        now = self.clock()
        queues = []
        with self.store.transaction() as tx:
            # Pending past ``max_age`` (a receiver dead, or paused, that long): given up,
            # redeliverable. Not one in flight: its attempt records what the receiver said.
            # Found through the outbox's age index, never by reading the whole backlog.
            tx.execute(
                "UPDATE fx_webhook_deliveries SET status = 'failed', lease = NULL, "
                "last_error = ? WHERE status = 'pending' AND created_at <= ? "
                "AND (lease IS NULL OR next_attempt_at <= ?)",
                (f"not delivered within max_age ({self.max_age:g} s)", now - self.max_age, now),
            )
            for (sub_id,) in tx.all(
                "SELECT subscription_id FROM fx_webhooks WHERE active = 1 "
                "AND paused_until <= ? ORDER BY subscription_id",
                (now,),
            ):
                rows = tx.all(
                    "SELECT delivery_id, attempts FROM fx_webhook_deliveries "
                    "WHERE subscription_id = ? AND status = 'pending' AND next_attempt_at <= ? "
                    "ORDER BY next_attempt_at, delivery_id LIMIT ?",
                    (sub_id, now, int(limit)),
                )
                for delivery_id, attempts in rows:
                    if int(attempts) >= self.max_attempts:
                        # Claimed by a worker that died during its last attempt, its lease
                        # over: nothing left to try.
                        tx.execute(
                            "UPDATE fx_webhook_deliveries SET status = 'failed', lease = NULL, "
                            "last_error = 'worker lost during the last attempt' "
                            "WHERE delivery_id = ? AND status = 'pending'",
                            (delivery_id,),
                        )
                queues.append(
                    [(d, sub_id) for d, attempts in rows if int(attempts) < self.max_attempts]
                )
        turns = [row for rows in itertools.zip_longest(*queues) for row in rows if row]
        return [(int(d), str(s)) for d, s in turns[: int(limit)]]

    def next_due(self) -> float | None:
        """When a delivery is next due (its subscription's pause included), or None."""
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT w.paused_until, (SELECT MIN(d.next_attempt_at) FROM "
                "fx_webhook_deliveries d WHERE d.subscription_id = w.subscription_id "
                "AND d.status = 'pending') FROM fx_webhooks w WHERE w.active = 1"
            )
        due = [max(float(paused), float(at)) for paused, at in rows if at is not None]
        return min(due, default=None)

    def deliver_due(self, limit: int = 100) -> int:
        """Attempt up to ``limit`` due deliveries; returns how many attempts were made.

        A failed attempt retries that delivery after its backoff; the subscription's other
        deliveries go on, unless the failure paused it (see the module's docstring): then they
        wait for the pause to end.
        """
        attempted = 0
        paused: set[str] = set()
        for delivery_id, sub_id in self._due(limit):
            if sub_id in paused:
                continue
            lease = secrets.token_hex(8)
            row = self._claim(delivery_id, lease)
            if row is None:
                continue
            attempted += 1
            outcome = self._send(delivery_id, row)
            status, until = self._record(delivery_id, sub_id, lease, int(row[0]), outcome)
            if outcome[1] is not None:
                log.warning(
                    "webhook delivery %s (subscription %s, attempt %s) %s: %s%s",
                    delivery_id,
                    sub_id,
                    row[0],
                    "failed for good" if status == "failed" else "will be retried",
                    outcome[1],
                    f"; subscription paused {until - self.clock():.1f} s" if until else "",
                )
                if until:
                    paused.add(sub_id)
        return attempted
