"""Subscription management: validate, create, deactivate and list webhook subscriptions.

A subscription starts at the newest event when it is created (``from_event_id``): it receives
what happens after, never a backlog of history it did not ask for. Unsubscribing deactivates
rather than deletes, so the delivery log keeps its rows, and fails the pending deliveries at
once instead of leaving them to be retried against a receiver that no longer wants them.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._text import has_control
from .._urls import check_http_url
from ..errors import ConfigurationError
from .models import EVENT_TYPES, Subscription, subscription_from_row

if TYPE_CHECKING:
    from ..core.store import Store

__all__ = ["SubscriptionsMixin", "check_events", "check_url"]

#: What :func:`~.models.subscription_from_row` reads, in its order.
_COLUMNS = (
    "subscription_id, url, events, secret, active, created_at, failures, paused_until "
    "FROM fx_webhooks"
)

# One logger name for the whole package: the one log configurations filter on.
log = logging.getLogger("fourmica_x402.webhooks")


def check_url(url: str) -> str:
    """``url`` stripped; anything but an http(s) URL with a host is a configuration error."""
    if not isinstance(url, str):
        raise ConfigurationError("webhook url must be a string")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(f"webhook url must be http:// or https://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigurationError("webhook url has no host")
    if has_control(url) or any(c.isspace() for c in url.strip()):
        raise ConfigurationError("webhook url contains whitespace or control characters")
    try:  # a port past 65535 would reach another port, another service (httpx wraps it)
        check_http_url(url.strip())
    except ValueError as exc:
        raise ConfigurationError(f"webhook url {exc}") from None
    return url.strip()


def check_events(events: Iterable[str] | str) -> tuple[str, ...]:
    """Known event names, sorted and deduplicated; ``("*",)`` when ``"*"`` is among them."""
    names: list[str] | None = None
    if isinstance(events, str):
        names = [events]
    elif isinstance(events, Iterable):
        names = list(events)
    # Names come from JSON too (``/admin/webhooks``): ``true`` or ``[["a"]]`` is refused here.
    if names is None or not all(isinstance(n, str) for n in names):
        raise ConfigurationError("webhook events must be a list of event type names")
    if not names:
        raise ConfigurationError('subscribe to at least one event type (or "*" for all)')
    unknown = sorted({n for n in names if n != "*" and n not in EVENT_TYPES})
    if unknown:
        raise ConfigurationError(
            f"unknown event type(s) {', '.join(map(repr, unknown))}; "
            f'known: {", ".join(sorted(EVENT_TYPES))} (or "*")'
        )
    return ("*",) if "*" in names else tuple(sorted(set(names)))


def _subscription_id(value: object) -> bool:
    """Whether ``value`` may name a subscription: text without control characters (others
    name none and are not looked up; PostgreSQL refuses a U+0000 that SQLite would take)."""
    return isinstance(value, str) and not has_control(value)


class SubscriptionsMixin:
    """The subscription methods of :class:`~fourmica_x402.webhooks.Webhooks`."""

    store: Store
    clock: Callable[[], float]

    def subscribe(
        self, url: str, events: Iterable[str] | str = ("*",), secret: str | None = None
    ) -> Subscription:
        """Subscribe ``url`` to ``events`` (names of :data:`EVENT_TYPES`, or ``"*"``).

        The subscription receives the events that happen after it is created. ``secret`` signs
        its requests; a random one is made when none is given (read it from the result).
        Raises :class:`~fourmica_x402.errors.ConfigurationError` (a ``ValueError``) for a URL
        that is not http(s), an unknown event type or an empty secret.
        """
        url = check_url(url)
        names = check_events(events)
        if secret is None:
            secret = "whsec_" + secrets.token_hex(32)
        elif not isinstance(secret, str) or not secret or has_control(secret):
            raise ConfigurationError(
                "webhook secret must be a non-empty string without control characters"
            )
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
        if not _subscription_id(subscription_id):
            return False
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
        if not _subscription_id(subscription_id):
            return None
        with self.store.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} WHERE subscription_id = ?", (subscription_id,))
        return None if row is None else subscription_from_row(row)

    def subscriptions(self, *, include_inactive: bool = False) -> list[Subscription]:
        """The subscriptions, oldest first (active ones only unless ``include_inactive``)."""
        sql = f"SELECT {_COLUMNS}"
        if not include_inactive:
            sql += " WHERE active = 1"
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY created_at, subscription_id COLLATE BINARY")
        return [subscription_from_row(r) for r in rows]
