"""Which handlers a marker guarded, so that a router serving one without its guard is caught
at start-up (docs/architecture.md, "Which route is priced").

A route decorator registers the function it is given: with ``@paid`` applied above it (Flask's
``@app.route``), the router serves the unpriced function and the price is never asked.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import ConfigurationError
from ..templates import ClassMethods

if TYPE_CHECKING:
    from ..routes import Endpoint, RouteTable
    from .types import Response

__all__ = [
    "RESOLVED_KEY",
    "check_routed",
    "method_marker",
    "view_marker",
    "one_marker",
    "partly_priced",
    "remember",
    "rerouted",
    "sells_socket",
]

log = logging.getLogger("fourmica_x402.gate")

T = TypeVar("T")

#: Each handler a marker guarded, with its guards (weakly held).
_GUARDS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def remember(view: Any, guard: T) -> T:
    """``guard``, noted as the priced form of ``view``."""
    with contextlib.suppress(TypeError):  # no weak reference can hold it: left unchecked
        _GUARDS.setdefault(view, weakref.WeakSet()).add(guard)
    return guard


def check_routed(served: Iterable[Any], elsewhere: Iterable[Any] = ()) -> None:
    """ConfigurationError when a router serves a handler none of whose guards is served (by it,
    or ``elsewhere``: the other apps a process runs). Serving one function unpriced on a route
    and its guard on another is allowed."""
    served = list(served)
    routed = [*served, *elsewhere]
    for view in served:
        guards: list[Any] = []
        with contextlib.suppress(TypeError):  # unhashable: never remembered
            guards = list(_GUARDS.get(view, ()))
        if guards and not any(guard in routed for guard in guards):
            name = getattr(view, "__qualname__", repr(view))
            raise ConfigurationError(
                f"{name} is routed without its @paid price: put @paid below the route "
                "decorator (the route decorator registers the function it is given)"
            )


#: The methods a class-based view (Flask's ``MethodView``, Django's ``View``) dispatches to.
_VERBS = ("get", "post", "put", "patch", "delete", "query")


def method_marker(cls: Any) -> Any:
    """The price a class-based view's methods carry (``@paid`` on ``get``, Django's
    ``method_decorator(paid(...))``), as one marker pricing just those methods: the class's
    route is priced for them, the others are the class's own. Two prices: ConfigurationError."""
    if cls is None:
        return None
    found = {v.upper(): m for v in _VERBS if (m := _method_price(cls, v)) is not None}
    one = one_marker(found.values(), f"the methods of {getattr(cls, '__qualname__', cls)}")
    if one is None:
        return None
    marker = copy.copy(one)  # priced for the methods marked, as far as their marker prices
    marker.methods = ClassMethods(m for m in found if one.prices(m))
    return marker


def _method_price(cls: Any, verb: str) -> Any:
    """The price on ``cls``'s handler for ``verb``: its own ``@paid``, or one among the
    ``method_decorators`` Flask-RESTful applies to it (its dict form, naming methods)."""
    from .lifecycle import Marker

    handler = getattr(cls, verb, None)
    named = getattr(cls, "method_decorators", None)
    named = named.get(verb, ()) if isinstance(named, Mapping) and handler is not None else ()
    where = f"{getattr(cls, '__qualname__', cls)}.{verb}"
    return one_marker([Marker.of(handler), *map(Marker.of, named)], where)


def _decorators_price(cls: Any) -> Any:
    """The price among the ``method_decorators`` a Flask-RESTful or flask-restx ``Resource``
    applies to each of its handlers (a list): it prices the class whole."""
    from .lifecycle import Marker

    every = getattr(cls, "method_decorators", None)
    if not isinstance(every, list | tuple):
        return None
    where = f"the method_decorators of {getattr(cls, '__qualname__', cls)}"
    return one_marker(map(Marker.of, every), where)


def view_marker(view: Any) -> Any:
    """The price on a view: its own ``@paid`` (or its class's), else its methods'
    (:func:`method_marker`). Priced at both levels, at two prices: ConfigurationError (the
    view's would sell the dearer method at the cheaper price)."""
    from .lifecycle import Marker

    cls = getattr(view, "view_class", None)
    # A class priced whole: its own @paid, or one on the one handler it dispatches to (Flask's
    # View.dispatch_request, as Django's method_decorator(paid(...), name="dispatch"))
    whole = Marker.of(getattr(cls, "dispatch_request", None)) or _decorators_price(cls)
    own, methods = Marker.of(view) or Marker.of(cls) or whole, method_marker(cls)
    if own is not None and methods is not None and own.config != methods.config:
        one_marker([own, methods], getattr(cls, "__qualname__", repr(cls)))
    return own or methods


class _Priced(Protocol):
    config: Any
    methods: Any


P = TypeVar("P", bound=_Priced)


def one_marker(found: Iterable[P | None], where: str) -> P | None:
    """The one per-handler price among ``found`` (Nones skipped, the same price counted once),
    or None. Two prices on one handler or route — a router's default ``Paid`` and the
    route's own, ``@paid`` twice — would sell it at one and let the other's handler accept
    that payment: a ConfigurationError instead."""
    markers = [m for m in found if m is not None]
    if any((m.config, m.methods) != (markers[0].config, markers[0].methods) for m in markers):
        shown = ", ".join(sorted(repr(str(m.config.price)) for m in markers))
        raise ConfigurationError(f"{where} has more than one price ({shown}): keep one")
    return markers[0] if markers else None


def partly_priced(
    table: RouteTable, endpoints: Iterable[Endpoint], served_by: Callable[[Any], Any] | None = None
) -> list[tuple[str, str]]:
    """``(priced, free)`` templates of routes the app serves with one handler (a Flask
    endpoint with a ``defaults=`` sibling rule, a view under two URL patterns or endpoint
    names, a router included twice) where the table prices a method on some that others
    serve unpriced: the handler is reachable free there. Best effort: a handler is known by
    its object; ``served_by(key)``: what serves a route whose key does not say (a Flask rule
    names its view)."""
    groups: dict[object, list[Endpoint]] = {}
    for each in endpoints:
        handler = _handler(each.key if served_by is None else served_by(each.key))
        if handler is not None and each.marker is None:  # a marker prices every route
            groups.setdefault(handler, []).append(each)
    pairs = []
    for group in groups.values():
        priced = {id(e): table.other_methods(e) for e in group}
        sold = frozenset().union(*priced.values())
        for free in (e for e in group if not priced[id(e)]):
            served = free.methods
            if sold and ("*" in sold or served is None or sold & served):
                first = next(e for e in group if priced[id(e)])
                pairs.append((first.template, free.template))
                break
    return pairs


def _handler(key: Any) -> object | None:
    """What serves a route, comparable across routes: a Flask endpoint's name, a Starlette
    route's endpoint or a mount's app, a Django view (its class for ``as_view()``), a bound
    method by its function and object."""
    handler = getattr(key, "endpoint", None)
    if handler is None:
        handler = getattr(key, "app", None)
    if handler is None and callable(key):
        handler = key
    if handler is None or isinstance(handler, str):
        return handler
    handler = getattr(handler, "view_class", handler)
    bound = getattr(handler, "__self__", None)
    return (
        (id(handler.__func__), id(bound))
        if bound is not None and hasattr(handler, "__func__")
        else id(handler)
    )


#: Where an adapter notes what the gate resolved for a request: ``(Endpoint, method)``.
RESOLVED_KEY = "fourmica_x402.resolved"


def sells_socket(routes: RouteTable, endpoint: Endpoint) -> bool:
    """Whether a WebSocket handshake resolved to ``endpoint`` reaches something priced: what
    prices a GET there, or, on a WebSocket route (nothing but a WebSocket reaches it), any
    table entry naming it, whatever its method (docs/architecture.md, "Which route is
    priced")."""
    if routes.for_endpoint("GET", endpoint) is not None:
        return True
    return endpoint.websocket and bool(routes.other_methods(endpoint))


def rerouted(
    table: RouteTable, endpoint: Endpoint | None, method: str, payment: Any, seen: Any
) -> Response | None:
    """What to answer instead of the handler the router is about to run on ``endpoint`` for
    a request the gate decided on as another route or method (``seen``: the ``(Endpoint,
    method)`` it resolved, None: none) and that did not pay for it: a layer between the gate
    and the router changed the method or the path (a method override, a path rewrite). Routes
    are compared, not handlers: one Django view serves each of its URL patterns, each at its
    own price (docs/architecture.md, "Which route is priced"). A payment the gate took for the
    route it resolved is not kept for another route or method, free ones too. 503
    ``payment_not_enforced`` (a payment is then refunded); None: run it. A marker's handler
    checks its own payment, by its handler: here, that it was not made on another route of it,
    and that a request the gate decided on as another route is not left to it unpaid (FastAPI
    runs a route's other dependencies first)."""
    if endpoint is None:
        return None
    paid_here = payment is not None and payment.endpoint is endpoint
    alias = "GET" if method.upper() == "HEAD" else method.upper()
    route = None if alias == "OPTIONS" else table.for_endpoint(alias, endpoint)
    same = isinstance(seen, tuple) and seen[0] is endpoint and seen[1] == method.upper()
    if route is not None and route.marker:  # (a method the marker leaves out: the table's)
        return None if paid_here or (payment is None and same) else _refused(method, endpoint)
    if same:
        return None  # the gate's own decision on this very route stands
    if alias == "OPTIONS" or route is None:  # never priced, or free; but a payment this gate
        # took for the route it resolved is not kept for another that runs instead
        taken = isinstance(seen, tuple) and seen[0] is not None
        moved = taken and payment is not None and payment.endpoint is seen[0]
        moved = moved and not payment.granted  # a grant is free: nothing paid to lose
        return _refused(method, endpoint, payment.route) if moved else None
    if paid_here and payment.route == route.key:
        return None
    return _refused(method, endpoint)


def _refused(method: str, endpoint: Endpoint, paid_for: str | None = None) -> Response:
    from ..errors import Reason
    from .types import error_response

    log.error(
        "%s (%s %s) was reached %s: a layer between the payment middleware and the router "
        "changed the request's method or path; not served",
        "a route" if paid_for else "a priced route",
        method,
        endpoint.template,
        f"with a payment made for {paid_for}" if paid_for else "without a payment for it",
    )
    return error_response(503, Reason.PAYMENT_NOT_ENFORCED, "payments are not enforced here")
