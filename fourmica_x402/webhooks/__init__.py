"""Webhooks: the Core's events, POSTed to subscribers, signed, at least once.

    >>> hooks = Webhooks(core)                                              # doctest: +SKIP
    >>> sub = hooks.subscribe("https://example.com/hook", events=["debit.paid"])  # doctest: +SKIP
    >>> hooks.start()            # a daemon thread: enqueue + deliver, as events come  # doctest: +SKIP

How an event travels, and why none is lost:

1. The Core writes each event into ``fx_events`` in the transaction of the change itself.
2. :meth:`Webhooks.enqueue` moves new events into the outbox (``fx_webhook_deliveries``), one
   row per matching subscription, and advances a cursor in the same transaction
   (:mod:`.outbox`, which also says how PostgreSQL's out-of-order commits are handled).
3. :meth:`Webhooks.deliver_due` claims a due delivery under a lease, POSTs it, and records the
   outcome; failures are retried with backoff, then ``failed`` (:mod:`.delivery`).

Delivery is **at least once**: a receiver deduplicates on the body's ``id`` (the event id; the
``X-Fourmica-Delivery`` header is stable across retries too) and must not rely on ordering.

Each request carries ``X-Fourmica-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
with ``X-Fourmica-Timestamp: <unix seconds>``; receivers check it with :func:`verify_signature`,
which also rejects stale timestamps (replays). Secrets are stored in the Core's database (they
are needed to sign) but never logged, never written to the delivery log, and hidden from
``repr``.

The package: :mod:`.models` (event types, :class:`Subscription`, :class:`Delivery`),
:mod:`.signing` (HMAC), :mod:`.subscriptions` (subscription management), :mod:`.outbox` (tables,
enqueue, the delivery log), :mod:`.delivery` (claim, send, record) and :mod:`.worker` (the
:class:`Webhooks` facade and its thread). The event types are those of docs/protocol.md, "Events".
"""

from __future__ import annotations

from .models import EVENT_TYPES, Delivery, Subscription
from .signing import sign, verify_signature
from .worker import Webhooks

__all__ = [
    "EVENT_TYPES",
    "Delivery",
    "Subscription",
    "Webhooks",
    "sign",
    "verify_signature",
]
