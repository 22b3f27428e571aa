"""The seller's discovery listing: ``GET /.well-known/x402`` (docs/protocol.md, "Discovery").

Every priced route of the app, once per method it is priced for, with the v2 payment
requirements its 402 challenge carries (:mod:`.challenge` builds both). The routes are those
the adapter found at start-up (:meth:`.lifecycle.Endpoints.check`: route-table entries and
per-handler markers, as the framework names them), or the route table itself for an app
without a router. A price, payTo or bundle's units that are a callable of the request are never
called here: the offer is listed without the fields they set, which ``perRequest`` names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..routes import Route
from ..templates import display_template
from .bundles import describe, extra
from .challenge import (
    described,
    is_static,
    offer_requirements,
    origin,
    requirements,
    v2_requirements,
)
from .types import PASS, Flow, RequestView, Response, error_response

if TYPE_CHECKING:
    from .flow import Gate

#: Where the listing is served.
PATH = "/.well-known/x402"
#: Shared caches may keep the listing briefly: a run-time price (docs/operations.md,
#: "Repricing") shows there within a minute, in every 402 at once.
CACHE_CONTROL = "public, max-age=60"
_VARY = "Host, Forwarded, X-Forwarded-Host, X-Forwarded-Proto, X-Forwarded-Port, X-Forwarded-Prefix"
#: The methods listed for a route that serves (or is priced for) any method, in this order.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def listing(gate: Gate, request: RequestView) -> Flow:
    """The answer to a request for :data:`PATH`: the listing (GET, HEAD), 405 otherwise.

    OPTIONS passes through to the app (its CORS middleware, if any, answers it)."""
    method = request.method.upper()
    if method == "OPTIONS":
        return PASS
    if method not in ("GET", "HEAD"):
        allow = [("allow", "GET, HEAD")]
        return error_response(405, "method_not_allowed", "use GET or HEAD", allow)
    base = origin(gate, request)
    resources = []
    accepts: dict[int, list[dict[str, Any]]] = {}  # per route, built once
    for route, template, method in priced(gate):
        if id(route) not in accepts:
            if is_static(route):  # exactly what its challenge carries
                built = yield from requirements(gate, route, request)
                accepts[id(route)] = [r.to_dict() for r in v2_requirements(built)]
            else:
                offers = range(len(route.offers))
                accepts[id(route)] = [_advertised(gate, route, i, base) for i in offers]
        config = route.config
        item: dict[str, Any] = {
            "resource": config.resource or base + display_template(template),
            "type": "http",
            "x402Version": 2,
            "method": method,
            "accepts": accepts[id(route)],
            "description": described(config)[0] if route.terms is None else describe(route),
            "mimeType": described(config)[1],
        }
        if config.extensions:
            item["extensions"] = dict(config.extensions)
        resources.append(item)
    body = {"x402Version": 2, "resources": resources}
    # Built from the request's host (and forwarded headers a proxy fix trusts): a shared cache
    # must not serve one host's listing for another.
    return Response.json(200, body, [("cache-control", CACHE_CONTROL), ("vary", _VARY)])


def priced(gate: Gate) -> Iterator[tuple[Route, str, str]]:
    """``(route, template, method)`` for every method of every priced route, in the app's order.

    With a router, each endpoint the adapter found, priced as a request for it would be
    (:meth:`~fourmica_x402.routes.RouteTable.for_endpoint`); WebSocket routes are left out
    (they are refused, never paid). Without one, the route table as written.
    """
    table = gate.routes
    if gate.endpoints is None:
        for route in table.routes:
            for method in METHODS if route.method == "*" else (route.method,):
                yield route, route.pattern, method
        return
    for endpoint in gate.endpoints:
        if endpoint.websocket:
            continue
        served = endpoint.methods
        methods = METHODS if served is None else _ordered(served)
        for method in methods:
            found = table.for_endpoint(method, endpoint)
            if found is not None:
                yield found, endpoint.template, method


def _ordered(served: frozenset[str]) -> list[str]:
    """The methods an endpoint serves, HEAD (priced as its GET) and OPTIONS left out."""
    rest = sorted(served - {*METHODS, "HEAD", "OPTIONS"})
    return [m for m in METHODS if m in served] + rest


def _advertised(gate: Gate, route: Route, i: int, base: str) -> dict[str, Any]:
    """The requirements of the route's offer ``i`` as far as they are known without a request.

    A price callable sets ``amount`` and ``asset`` (it may answer in any asset); a bundle's
    units set ``amount`` (``extra`` gives the unit price); a payTo callable sets ``payTo`` (and
    the delivery policy, which names it). Those fields are left out and named in
    ``perRequest``; a static offer is exactly what its challenge carries.
    """
    offer = route.offers[i]
    static_price = offer.amount is not None
    per_request = [] if static_price else ["amount", "asset"]
    if static_price and route.config.units is not None:
        per_request = ["amount"]
    amount, asset = (offer.amount.amount, offer.amount.asset) if offer.amount else (0, "")
    pay_to = None if callable(offer.pay_to) else offer.pay_to
    if pay_to is None:
        per_request.append("payTo")
    terms = None if route.terms is None else extra(route.config, route.terms[i], None)
    req = offer_requirements(gate, route, offer, base, amount, asset, pay_to, terms)
    data = v2_requirements([req])[0].to_dict()
    for name in per_request:
        data.pop(name)
    if per_request:
        data["perRequest"] = per_request
    return data
