"""The methods a Starlette route serves, as the payment middleware prices it
(docs/architecture.md, "Which route is priced"): the route's own list, or, for an
``HTTPEndpoint`` class (Starlette lists no methods for it), the methods it has handlers for."""

from __future__ import annotations

from typing import Any

__all__ = ["served"]

#: The methods ``HTTPEndpoint.dispatch`` serves when the class has a handler for them.
VERBS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")


def served(route: Any) -> Any:
    """``route.methods``; for an ``HTTPEndpoint`` class its handlers' methods (HEAD with
    GET), as Starlette dispatches them; None (any method) for one with a ``dispatch()`` of
    its own, which may answer anything, like a view serving every method."""
    methods, endpoint = getattr(route, "methods", None), getattr(route, "endpoint", None)
    if methods or not isinstance(endpoint, type):
        return methods
    from starlette.endpoints import HTTPEndpoint

    if not issubclass(endpoint, HTTPEndpoint) or endpoint.dispatch is not HTTPEndpoint.dispatch:
        return methods
    has = {m for m in VERBS if getattr(endpoint, m.lower(), None) is not None}
    return (has | ({"HEAD"} if "GET" in has else set())) or methods
