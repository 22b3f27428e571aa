"""``/admin/webhooks``: webhook subscriptions and their delivery log.

A subscription makes the service call out to any URL, so only its operator may manage them:
the operator's key, or no key at all on a sandbox service. Seller keys are not enough.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fourmica_x402.webhooks import Webhooks

from .base import Call, Reply, error, refusal

#: The states of a webhook delivery (its log's ``?status=`` filter).
DELIVERY_STATES = ("pending", "delivered", "failed")

if TYPE_CHECKING:
    from .context import Service

__all__ = [
    "deliveries",
    "redeliver",
    "redeliver_failed",
    "subscribe",
    "subscriptions",
    "unsubscribe",
]

Action = Callable[[Webhooks, Call], Reply]
Handler = Callable[["Service", Call], Reply]


def _admin(action: Action) -> Handler:
    """The handler of an admin action: webhooks on, operator only; a ValueError (a bad URL,
    unknown events) answers 400 ``invalid_request`` (docs/protocol.md, "Reason codes")."""

    def handler(service: Service, call: Call) -> Reply:
        if service.hooks is None:
            return refusal(404, "webhooks are disabled", "webhooks_disabled")
        if service.keys.api_key is None and not service.sandbox:
            return refusal(403, "set an API key (--api-key) to manage webhooks", "api_key_required")
        if not service.keys.authorized(call):
            return refusal(401, "unauthorized", "unauthorized")
        try:
            return action(service.hooks, call)
        except ValueError as exc:
            return error(400, "invalid_request", str(exc))

    handler.__name__ = handler.__qualname__ = action.__name__
    handler.__doc__ = action.__doc__
    return handler


@_admin
def subscribe(hooks: Webhooks, call: Call) -> Reply:
    """``POST /admin/webhooks`` ``{url, events?, secret?}``."""
    body = call.body
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        return refusal(400, "give {url, events?, secret?}", "invalid_request")
    events = body.get("events")  # absent or null: all; an empty list is refused
    sub = hooks.subscribe(body["url"], ["*"] if events is None else events, body.get("secret"))
    return 200, sub.to_dict(include_secret=True)  # the secret is shown once, here


@_admin
def subscriptions(hooks: Webhooks, call: Call) -> Reply:
    return 200, [sub.to_dict() for sub in hooks.subscriptions()]


@_admin
def unsubscribe(hooks: Webhooks, call: Call) -> Reply:
    if not hooks.unsubscribe(call.path["sid"]):
        return error(404, "not_found", "no such subscription")
    return 200, {"removed": True}


@_admin
def deliveries(hooks: Webhooks, call: Call) -> Reply:
    """``?status=`` filters the log (``pending``, ``delivered``, ``failed``)."""
    status = call.query.get("status")
    if status is not None and status not in DELIVERY_STATES:  # a typo would read as "none"
        return error(400, "invalid_request", f"status must be one of {', '.join(DELIVERY_STATES)}")
    return 200, [d.to_dict() for d in hooks.deliveries(status=status)]


@_admin
def redeliver(hooks: Webhooks, call: Call) -> Reply:
    """``POST /admin/webhooks/deliveries/{did}/redeliver``: one failed (or delivered) delivery
    queued again."""
    did = call.path["did"]
    # digits only, and an id SQL can compare: anything else names no delivery
    if not (did.isascii() and did.isdigit() and len(did) <= 18) or not hooks.redeliver(int(did)):
        return error(404, "not_found", "no such delivery (or pending, or its subscription gone)")
    return 200, {"redelivered": 1}


@_admin
def redeliver_failed(hooks: Webhooks, call: Call) -> Reply:
    """``POST /admin/webhooks/{sid}/redeliver``: every failed delivery of a subscription queued
    again (its receiver is back)."""
    sub = hooks.subscription(call.path["sid"])
    if sub is None or not sub.active:
        return error(404, "not_found", "no such subscription")
    return 200, {"redelivered": hooks.redeliver_failed(sub.subscription_id)}


@_admin
def resume(hooks: Webhooks, call: Call) -> Reply:
    """``POST /admin/webhooks/{sid}/resume``: a paused subscription's pause ended now."""
    if not hooks.resume(call.path["sid"]):
        return error(404, "not_found", "no such subscription")
    return 200, {"resumed": True}
