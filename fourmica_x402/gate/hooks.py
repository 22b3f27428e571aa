"""The seller's hooks around a priced request (docs/operations.md, "Seller options and
hooks").

``on_protected_request`` decides before any payment is read: go on, grant, deny or answer.
A hook that raises, or answers with something the gate cannot send (a framework's own
response object), fails closed: the request is answered 503 ``seller_hook_failed`` and the
error is logged; no payment was read, so nothing is charged. ``on_failure`` is told of a
refused payment; what it raises is only logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import FourmicaError
from ..routes import Endpoint, Route
from . import bundles
from .sse import Unmetered
from .types import (
    DENY,
    GRANT,
    BodyTooLarge,
    Call,
    Flow,
    Granted,
    Payment,
    RequestView,
    Response,
    body_refused,
    error_response,
)

if TYPE_CHECKING:
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")


def seller_failed() -> Response:
    """The answer when a seller's hook failed before or around a payment."""
    return error_response(503, "seller_hook_failed", "the seller failed; nothing was charged")


def protected(
    gate: Gate, request: RequestView, route: Route, endpoint: Endpoint | None = None
) -> Flow:
    """What the ``on_protected_request`` hook says of a priced request: None (go on),
    :class:`Granted` (``GRANT``: served without a payment, for this route only), or the
    :class:`Response` to answer."""
    if gate.config.on_protected_request is None:
        return None
    try:
        verdict = yield Call(gate.config.on_protected_request, (request, route), blocking=False)
        if refused := body_refused(request.read_body):  # it caught that, and answered
            raise refused  # on an unread body: never (docs/protocol.md)
    except BodyTooLarge as exc:  # the buyer's body, too long to judge: as when pricing it
        return error_response(exc.status, exc.reason, exc.message)
    except Exception:
        if refused := body_refused(request.read_body):  # it caught that, then raised its own
            return error_response(refused.status, refused.reason, refused.message)
        log.exception("on_protected_request raised for %s", route.key)
        return seller_failed()
    if verdict is GRANT:
        payment = granted(route, endpoint)
        try:  # the handler reads how many units it serves (docs/protocol.md), as a buyer's
            if route.config.units is not None:
                payment.units = yield from bundles.count(route, request)
        except (bundles.InvalidUnits, BodyTooLarge) as exc:  # the request's own fault, as unpaid
            return error_response(exc.status, exc.reason, exc.message)
        except Exception:  # the seller's callable failed: as when pricing a paid request
            log.exception("could not price %s", route.key)
            return error_response(500, "pricing_failed", "could not price this request")
        return Granted(payment)
    if verdict is DENY:
        return error_response(403, "denied", "access denied")
    if verdict is None or isinstance(verdict, Response):
        return verdict
    # a Starlette/Flask/Django response, True, a status code…: the seller meant something the
    # gate cannot tell; going on to the 402 would sell what the hook may have meant to refuse
    log.error(
        "on_protected_request returned a %s for %s; return None, GRANT, DENY or a "
        "fourmica_x402.gate.Response",
        type(verdict).__name__,
        route.key,
    )
    return seller_failed()


def granted(route: Route, endpoint: Endpoint | None) -> Payment:
    """The :class:`Payment` a granted request's handler reads: nothing paid, nothing recorded;
    bound to ``endpoint`` as a payment is, so that only this route's marker runs for it."""
    return Payment(
        payer="",
        amount=0,
        asset="",
        network="",
        pay_to="",
        guarantee_id=None,
        request_id=None,
        tab_id=None,
        x402_version=2,
        guarantee_version=0,
        route=route.key,
        settled=False,
        endpoint=endpoint,
        by_marker=route.marker,
        granted=True,
        stream=None if route.config.slices is None else Unmetered(),  # sent free
    )


def failure(gate: Gate, request: RequestView, error: FourmicaError) -> Flow:
    """The ``on_failure`` hook; what it raises is logged, never answered."""
    if gate.config.on_failure is not None:
        try:
            yield Call(gate.config.on_failure, (request, error), blocking=False)
        except Exception:
            log.exception("on_failure hook raised")
