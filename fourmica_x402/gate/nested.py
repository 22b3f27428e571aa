"""A request another gate settled: an app mounted in another, each with a gate of its own.

The outer gate prices and settles; the inner one must not charge the buyer again, nor let
the outer gate undersell a route it prices itself: a `GET /partner/*` entry at $0.001 to the
platform in front of a partner app that sells `GET /premium` at $1 to the partner. So the inner
gate lets the request through only when what it resolves is free here (or its
``on_protected_request`` hook grants it), or the payment meets one of the route's offers here:
the same network, asset and payTo, at least the amount (docs/architecture.md, "What an adapter
does"). Otherwise 503 ``payment_not_enforced``: the handler does not run, and the outer gate
refunds the non-2xx. A route whose terms are more than a price — staged work, a metered
stream, a validation policy of its own — and a route its handler's marker prices, unless the
outer gate priced it by that marker too, are never run on another gate's payment.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import FourmicaError, Reason
from ..templates import RouterFailed
from .challenge import requirements
from .pay import protected
from .types import PASS, Flow, RequestView, error_response

if TYPE_CHECKING:
    from ..routes import Route
    from .flow import Gate

__all__ = ["settled_outside"]

log = logging.getLogger("fourmica_x402.gate")


def settled_outside(gate: Gate, request: RequestView, payment: Any) -> Flow:
    """:data:`PASS`, or the :class:`Response` that answers instead of a route this gate
    prices on other terms than the outer gate's ``payment`` met. A router's failure here is
    left to the router's own check (a priced route it reaches is refused there)."""
    method = request.method.upper()
    if method == "OPTIONS":
        return PASS
    if request.resolve is None:  # a router-less app: its raw path, as the gate prices it
        route = gate.routes.match(method, request.path)
    else:
        try:
            endpoint = request.resolve()  # noted: the route this gate lets the payment run
        except (RouterFailed, FourmicaError):
            return PASS
        route = None if endpoint is None else gate.routes.for_endpoint(method, endpoint)
    if route is None:
        return PASS
    decided = yield from protected(gate, request, route)  # its on_protected_request hook
    if decided is not None:
        return decided
    why = _beyond_a_price(route, payment)
    if why is None:
        try:
            offers = yield from requirements(gate, route, request)
        except Exception:  # a price this gate cannot tell: nothing to hold the payment against
            log.exception("could not price %s for a payment an outer gate settled", route.key)
            offers = []
        if any(_meets(payment, offer) for offer in offers):
            return PASS
        why = "is priced here on other terms than the outer gate's payment met"
    log.error(
        "%s %s (%s of %s to %s on %s): not served; price the route in one gate only",
        route.key,
        why,
        payment.amount,
        payment.asset,
        payment.pay_to,
        payment.network,
    )
    return error_response(503, Reason.PAYMENT_NOT_ENFORCED, "payments are not enforced here")


def _beyond_a_price(route: Route, payment: Any) -> str | None:
    """Why the outer gate's payment cannot stand for this route's, whatever its amount."""
    config = route.config
    if config.stage is not None or config.slices is not None:
        return "is staged work or a metered stream here, which another gate's payment is not"
    if config.validation_policy is not None:
        return "has a validation policy of its own here"
    if route.marker and not getattr(payment, "by_marker", False):
        return "is priced by its handler's marker here, and the outer gate by a table entry"
    return None


def _meets(payment: Any, offer: Any) -> bool:
    return (
        offer.network == payment.network
        and str(offer.asset).lower() == str(payment.asset).lower()
        and str(offer.pay_to).lower() == str(payment.pay_to).lower()
        and payment.amount >= int(offer.amount)
    )
