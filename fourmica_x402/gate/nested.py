"""A request another gate settled: an app mounted in another, each with a gate of its own.

The outer gate prices and settles; the inner one must not charge the buyer again, nor let
the outer gate undersell a route it prices itself: a `GET /partner/*` entry at $0.001 to the
platform in front of a partner app that sells `GET /premium` at $1 to the partner. So the inner
gate decides on the request as on any other (:meth:`.flow.Gate.before`: the route its router
resolves, a method it does not sell, OPTIONS, an ambiguous path, its ``on_protected_request``
hook, its current prices) and, where it would ask for a payment, :func:`judged` lets the outer
one stand only if it meets one of the route's offers here: the same network, asset and payTo,
at least the amount (docs/architecture.md, "What an adapter does"). Otherwise 503
``payment_not_enforced``: the handler does not run, and the outer gate refunds the non-2xx. A
route whose terms are more than a price — staged work, a metered stream, a validation policy
of its own — and a route its handler's marker prices, unless the outer gate priced it by a
marker too, never run on another gate's payment.

An ASGI app mounting a WSGI one through a bridge (a2wsgi, Starlette's ``WSGIMiddleware``)
builds an environ of its own, without the scope's payment: :func:`settled` holds it in a
context variable the bridge's thread runs in a copy of, and :func:`outer` finds it there for
the request that carries the payment headers it was made with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from ..errors import Reason
from ..wire import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER, PaymentRequirements
from .types import PASS, PassThrough, Payment, RequestView, Response, error_response

if TYPE_CHECKING:
    from ..routes import Route

__all__ = ["judged", "outer", "settled"]

log = logging.getLogger("fourmica_x402.gate")

#: The payment an ASGI gate settled while its app serves the request, with its headers.
_SETTLED: ContextVar[tuple[Payment, tuple[list[str], ...]] | None] = ContextVar(
    "fourmica_x402.settled", default=None
)


def _headers(request: RequestView) -> tuple[list[str], ...]:
    return tuple(request.header_values(h) for h in (PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER))


@contextmanager
def settled(payment: Payment, request: RequestView) -> Iterator[None]:
    """While the app runs: ``payment`` settled for ``request``, for a bridged app's gate."""
    token = _SETTLED.set((payment, _headers(request)))
    try:
        yield
    finally:
        _SETTLED.reset(token)


def outer(found: Payment | None, request: RequestView) -> Payment | None:
    """The payment another gate settled for ``request``: ``found`` (the scope's, the
    environ's), or the one an ASGI gate settled for this very request (its payment headers)
    when a bridge to WSGI left it behind (docs/architecture.md, "What an adapter does")."""
    held = _SETTLED.get()
    if found is None and held is not None and any(held[1]) and held[1] == _headers(request):
        return held[0]
    return found


def judged(
    route: Route, offers: Sequence[PaymentRequirements], payment: Payment
) -> Response | PassThrough:
    """:data:`PASS`, or the 503 that answers instead of ``route``, which this gate prices at
    ``offers``, for the outer gate's ``payment``."""
    why = _beyond_a_price(route, payment)
    if why is None and any(offer.extra.get("_v1Policy") for offer in offers):
        # the policy the seller chose, the route's or its gate's or an offer's own
        # (gate/challenge.py marks it): the outer payment was not made under it
        why = "has a validation policy of its own here"
    if why is None:
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


def _beyond_a_price(route: Route, payment: Payment) -> str | None:
    """Why the outer gate's payment cannot stand for this route's, whatever its amount."""
    config = route.config
    if config.stage is not None or config.slices is not None:
        return "is staged work or a metered stream here, which another gate's payment is not"
    if route.marker and not payment.by_marker:
        return "is priced by its handler's marker here, and the outer gate by a table entry"
    return None


def _meets(payment: Payment, offer: PaymentRequirements) -> bool:
    return (
        offer.network == payment.network
        and offer.asset.lower() == payment.asset.lower()
        and offer.pay_to.lower() == payment.pay_to.lower()
        and payment.amount >= int(offer.amount)
    )
