"""The methods a Starlette route serves, as the payment middleware prices it
(docs/architecture.md, "Which route is priced"): the route's own list, or, for an
``HTTPEndpoint`` class (Starlette lists no methods for it), the methods it has handlers for."""

from __future__ import annotations

from typing import Any

__all__ = ["served"]


def served(route: Any) -> Any:
    """``route.methods``; for an ``HTTPEndpoint`` class its handlers' methods (HEAD with
    GET), as Starlette dispatches them: any method to the handler named like it, so every
    public callable of the class counts (``purge`` serves PURGE); None (any method) for one
    with a ``dispatch()`` of its own, which may answer anything, like a view serving every
    method."""
    methods, endpoint = getattr(route, "methods", None), getattr(route, "endpoint", None)
    if methods or not isinstance(endpoint, type):
        return methods
    from starlette.endpoints import HTTPEndpoint

    if not issubclass(endpoint, HTTPEndpoint) or endpoint.dispatch is not HTTPEndpoint.dispatch:
        return methods
    base = set(dir(HTTPEndpoint))
    has = {
        name.upper()
        for name in dir(endpoint)
        if name not in base and not name.startswith("_") and callable(getattr(endpoint, name))
    }
    return (has | ({"HEAD"} if "GET" in has else set())) or methods
