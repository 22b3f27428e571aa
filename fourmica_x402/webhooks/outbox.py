"""The outbox: webhook tables, moving the Core's events into per-subscription deliveries, and
the delivery log read back from it.

The Core writes each event into ``fx_events`` in the transaction of the change itself.
:meth:`OutboxMixin.enqueue` reads the events after a cursor (``fx_webhook_cursor``) and, in ONE
transaction, inserts a ``pending`` row per matching active subscription into the outbox
(``fx_webhook_deliveries``, ``UNIQUE (subscription_id, event_id)``) and advances the cursor.
A crash before the commit leaves both untouched; after it, both are durable. Events that
happen while no worker runs are picked up from the cursor when one starts. Every write is a
transaction of its own, as the Core's are (docs/architecture.md, "The Core's transactions").

PostgreSQL hands out ``event_id`` values when rows are inserted, not when they commit: an event
with a lower id can become visible after one with a higher id. Before reading a batch there,
:meth:`OutboxMixin.enqueue` briefly takes a ``SHARE`` lock on ``fx_events`` (it waits for the
writing transactions in flight and is released at once) to learn an id up to which every event
has committed, and reads no further; so the cursor never skips an event. SQLite serialises
writers, so its ids commit in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._text import has_control
from .models import DELIVERY_COLUMNS, Delivery, delivery_from_row

if TYPE_CHECKING:
    from ..core.store import Store

__all__ = ["MIGRATIONS", "OutboxMixin"]

#: The webhook tables, migrated in the Core's database under ``webhooks_schema_version``.
MIGRATIONS: list[list[str]] = [
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
    # the delivery log by status, newest first (docs/operations.md, "Webhooks"): the few failed
    # or pending deliveries found without reading every delivered one
    ["CREATE INDEX fx_webhook_deliveries_status ON fx_webhook_deliveries (status, delivery_id)"],
    # a subscription's health (docs/operations.md, "Webhooks"): its failures in a row and the
    # pause they earned, shared by every worker; its due deliveries found by an index of its own
    [
        "ALTER TABLE fx_webhooks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE fx_webhooks ADD COLUMN paused_until {real} NOT NULL DEFAULT 0",
        """CREATE INDEX fx_webhook_deliveries_sub_due ON fx_webhook_deliveries
            (subscription_id, next_attempt_at) WHERE status = 'pending'""",
    ],
    # a backlog's age (docs/operations.md, "Webhooks"): the pending deliveries older than
    # ``max_age`` found oldest first, without reading a paused receiver's whole backlog
    [
        """CREATE INDEX fx_webhook_deliveries_age ON fx_webhook_deliveries
            (status, created_at) WHERE status = 'pending'""",
    ],
]

_BATCH = 500  # events read per enqueue transaction


class OutboxMixin:
    """The outbox and delivery-log methods of :class:`~fourmica_x402.webhooks.Webhooks`."""

    store: Store
    clock: Callable[[], float]

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

    def redeliver(self, delivery_id: int) -> bool:
        """Queue a delivery again (a failed one, or to replay a delivered one), attempts reset;
        queued now, so ``max_age`` counts from here."""
        return bool(self._requeue("delivery_id = ? AND status <> 'pending'", delivery_id))

    def redeliver_failed(self, subscription_id: str) -> int:
        """Queue every failed delivery of an active subscription again (a receiver back after
        an outage); returns how many."""
        if not isinstance(subscription_id, str) or has_control(subscription_id):
            return 0  # names no subscription (PostgreSQL refuses a U+0000 SQLite would take)
        return self._requeue("subscription_id = ? AND status = 'failed'", subscription_id)

    def _requeue(self, where: str, key: object) -> int:
        now = self.clock()
        with self.store.transaction() as tx:
            return tx.execute(
                "UPDATE fx_webhook_deliveries SET status = 'pending', attempts = 0, "
                f"created_at = ?, next_attempt_at = ?, lease = NULL WHERE {where} "
                "AND subscription_id IN (SELECT subscription_id FROM fx_webhooks WHERE active = 1)",
                (now, now, key),
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
            f"SELECT {DELIVERY_COLUMNS} FROM fx_webhook_deliveries d "
            "JOIN fx_events e ON e.event_id = d.event_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY d.delivery_id DESC LIMIT ?", (*params, int(limit)))
        return [delivery_from_row(r) for r in rows]
