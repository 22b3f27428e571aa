"""FastAPI's route objects as the Starlette resolver sees them: frontends and included routers
(docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from ._chain import applied_root_path

__all__ = ["check_files", "effective", "frontends", "included", "rooted", "tree"]


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


def rooted(scope: dict[str, Any], app: Any) -> dict[str, Any]:
    """``scope`` as the mounted (or ``Host``'s) ``app`` routes it: a ``FastAPI(root_path=...)``
    sets its root path when called, so it serves ``/api/report`` as ``/report``
    (docs/architecture.md, "Which route is priced")."""
    root = applied_root_path(app)
    return {**scope, "root_path": root} if root else scope


def effective(context: Any) -> tuple[Any, str, Any]:
    """The route an included router's entry serves, its template there, and what describes
    it: an APIRoute stays itself (``scope["route"]`` names it), described by the entry, which
    adds ``include_router(dependencies=...)`` (a ``Paid`` may be there); others are rebuilt."""
    route = context.starlette_route
    if route is None:
        return context.original_route, context.path_format, context
    return route, getattr(route, "path", ""), None


def check_files(front: Any) -> None:
    """A ``frontend()`` route's files checked as its ``handle`` is (a ``Guarded``): its group
    serves them without it when it has dependencies (docs/architecture.md, "Which route is
    priced"). Anything else is left alone."""
    files: Any = getattr(front, "app", None)
    own = getattr(files, "get_response_for_scope", None)
    if not inspect.ismethod(own):
        return  # not a frontend, or checked already (its own method replaced)

    async def response_for(scope: Any) -> Any:
        guarded = front.handle
        refused = None if guarded.passes(scope) else guarded.refusal(scope)
        if refused is None:
            return await own(scope)
        from starlette.responses import Response

        return Response(refused.body, refused.status, headers=dict(refused.headers))

    files.get_response_for_scope = response_for
