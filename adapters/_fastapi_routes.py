"""FastAPI's route objects as the Starlette resolver sees them: frontends and included routers
(docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

from typing import Any

__all__ = ["effective", "included", "tree"]


def tree(front: Any) -> str:
    """The template of a FastAPI frontend: its path and everything below it."""
    return str(front.path).rstrip("/") + "/{path:path}"


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
