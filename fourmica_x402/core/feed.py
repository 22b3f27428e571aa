"""The event feed (docs/protocol.md, "Events"): queued by a write transaction, stored
in ``fx_events`` before it commits, handed to in-process subscribers after.

Stored events are durable (``Core.events``); in-process delivery is best effort and
never blocks or fails a Core operation.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from .._json import dumps
from .models import Event
from .store import Tx

__all__ = ["EventFeed", "Events", "emit"]

log = logging.getLogger("fourmica_x402.core")

#: The events one write transaction queued, as ``fx_events`` rows.
Events = list[tuple[Any, ...]]


def emit(
    events: Events,
    type_: str,
    at: float,
    network: str | None,
    asset: str | None,
    address: str | None,
    **data: Any,
) -> None:
    """Queue an event for the transaction that owns ``events``."""
    events.append((type_, at, network, asset, address, dumps(data, sort_keys=True)))


class EventFeed:
    """The subscribers of one Core, and the storing and delivery of its events."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    @staticmethod
    def store(tx: Tx, events: Events) -> None:
        """Store the queued events in their transaction (so they commit with its changes)."""
        for item in events:
            tx.execute(
                "INSERT INTO fx_events (type, at, network, asset, address, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                item,
            )

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def deliver(self, events: Events) -> None:
        """Hand committed events to the subscribers."""
        if events and self._subscribers:
            for type_, at, network, asset, address, data in events:
                self._dispatch(Event(0, type_, at, network, asset, address, json.loads(data)))

    def _dispatch(self, event: Event) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not undo a committed payment
                log.exception("event subscriber failed on %s", event.type)
