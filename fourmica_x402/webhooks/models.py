"""What webhooks are about: the event types, a subscription, a delivery (of the delivery log).

These are plain values read back from the Core's database; the rows they come from are written
by :mod:`.subscriptions` and :mod:`.outbox`. A subscription's secret is needed to sign, so it
is stored, but it is hidden from ``repr`` and left out of :meth:`Subscription.to_dict` unless
asked for, so it never reaches a log or an API answer by accident.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._urls import safe_url

__all__ = [
    "DELIVERY_COLUMNS",
    "EVENT_TYPES",
    "Delivery",
    "Subscription",
    "delivery_from_row",
    "subscription_from_row",
]

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
        "alert.fired",
    }
)

#: The columns :func:`delivery_from_row` reads, in its order (``d``: the delivery, ``e``: its event).
DELIVERY_COLUMNS = (
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
    #: Its failed answers in a row, and until when every worker leaves it alone (a failing
    #: receiver paused: docs/operations.md, "Webhooks"); 0 when it is not paused.
    failures: int = 0
    paused_until: float = 0.0

    def __repr__(self) -> str:  # a receiver's password in the URL is a secret too
        return (
            f"Subscription({self.subscription_id!r}, url={safe_url(self.url)!r}, "
            f"events={self.events!r}, active={self.active!r})"
        )

    def matches(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events

    def to_dict(self, *, include_secret: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["events"] = list(self.events)
        if not include_secret:
            del data["secret"]
            data["url"] = safe_url(self.url)  # a receiver's password is a secret too
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


def delivery_from_row(r: Sequence[Any]) -> Delivery:
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


def subscription_from_row(r: Sequence[Any]) -> Subscription:
    return Subscription(
        r[0], r[1], tuple(json.loads(r[2])), r[3], bool(r[4]), float(r[5]), int(r[6]), float(r[7])
    )
