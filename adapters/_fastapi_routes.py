"""FastAPI's route objects as the Starlette resolver sees them: frontends and included routers
(docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["effective", "frontends", "included", "tree"]


def tree(front: Any, prefix: str = "") -> str:
    """The template of a FastAPI frontend (under an inclusion's ``prefix``): its path and
    everything below it."""
    path = str(front.path)
    return (prefix + ("" if prefix and path == "/" else path)).rstrip("/") + "/{path:path}"


def frontends(router: Any) -> Iterator[tuple[Any, str]]:
    """``(front, template)`` of every ``frontend()`` a FastAPI router serves: its own, then
    those of its included routers, under their prefixes, as FastAPI tries them."""
    groups = getattr(router, "_iter_low_priority_routes", None)
    for group in groups() if groups else getattr(router, "_low_priority_routes", ()):
        prefix = getattr(group, "frontend_prefix", "")  # an included router's: its context
        for front in getattr(getattr(group, "original_route", group), "routes", ()):
            yield front, tree(front, prefix)


def included(route: Any) -> bool:
    """FastAPI's ``include_router`` (0.16x on): one entry standing for a whole router."""
    return hasattr(route, "effective_route_contexts") and hasattr(route, "_match")


def effective(context: Any) -> tuple[Any, str, Any]:
    """The route an included router's entry serves, its template there, and what describes
    it: an APIRoute stays itself (``scope["route"]`` names it), described by the entry, which
    adds ``include_router(dependencies=...)`` (a ``Paid`` may be there); others are rebuilt."""
    route = context.starlette_route
    if route is None:
        return context.original_route, context.path_format, context
    return route, getattr(route, "path", ""), None
