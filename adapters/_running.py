"""Which of a route's endpoints a request reaches: one Starlette route mounted under several
prefixes (a FastAPI router included under several) is one endpoint per prefix, each at its own
price (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from fourmica_x402.gate import Endpoint, Gate
from fourmica_x402.gate.guards import RESOLVED_KEY

from ._starlette import StarletteRouter

__all__ = ["recorded", "running"]

Scope = MutableMapping[str, Any]
Resolve = Callable[[], Endpoint | None]
ROOTS_KEY = "fourmica_x402.roots"  # per gate: the root path it resolved the request under


def recorded(scope: Scope, resolve: Resolve, gate: Gate, seen: Scope | None = None) -> Resolve:
    """``resolve``, noting in ``scope`` what it resolved for ``gate``: ``(Endpoint, method)``,
    None the endpoint when it found none (the router will not serve it) or failed. One note
    per gate: a gate inside another (a mounted app's) notes what it sees, after any layer
    between them, and leaves the outer gate's note as it was. ``seen``: the scope it resolves
    (its root path, for :func:`running`)."""

    notes = scope.setdefault(RESOLVED_KEY, {})
    notes.setdefault(gate, None)  # passed this gate: a route it did not resolve is refused
    scope.setdefault(ROOTS_KEY, {}).setdefault(gate, (seen or scope).get("root_path", ""))

    def resolved() -> Endpoint | None:
        method = scope.get("method", "GET")  # a WebSocket handshake is seen as a GET
        notes[gate] = (None, method)
        endpoint = resolve()
        if endpoint is not None:
            notes[gate] = (endpoint, method)
        return endpoint

    return resolved


def running(
    gate: Gate, router: StarletteRouter | None, endpoints: list[Endpoint], scope: Scope
) -> list[Endpoint]:
    """Of ``endpoints`` (one route's, for ``gate``), those the router may be running for the
    ``scope`` it dispatched: the one ``gate``'s router resolves it to now, under the root path
    the gate resolved it under; every one when that is none of them, or unknown (each is then
    checked: failing closed). A route under one prefix: its only endpoint."""
    root = (scope.get(ROOTS_KEY) or {}).get(gate)
    if len(endpoints) < 2 or router is None or not isinstance(root, str):
        return endpoints
    try:  # the scope as the gate saw it, but for what the router dispatched
        found = router.resolver({**scope, "root_path": root})()
    except Exception:  # (the router would have raised before reaching the route)
        return endpoints
    return [each for each in endpoints if each is found] or endpoints
