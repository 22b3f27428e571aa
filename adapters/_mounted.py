"""The apps a Starlette router mounts that have a payment gate of their own, seen from the
gate outside them: a ``Paid`` route of an app whose gate receives at another payTo is that
gate's to sell, never the outer one's (docs/architecture.md, "What an adapter does")."""

from __future__ import annotations

from typing import Any

from fourmica_x402.gate import Gate

from ._chain import find_router
from ._fastapi_routes import included

__all__ = ["sold_elsewhere"]


def sold_elsewhere(router: Any, gate: Gate) -> set[int]:
    """The ids of the routes below ``router`` that a mounted app's own gate sells to another
    payTo than ``gate``'s (a fixed one on both sides: a payTo callable is anyone's); a route
    object this router also serves outside such an app (a shared ``APIRouter``) stays ours."""
    found: tuple[set[int], set[int]] = (set(), set())  # ours, theirs
    _walk(router, gate, False, 0, found)
    return found[1] - found[0]


def _walk(router: Any, gate: Gate, elsewhere: bool, depth: int, found: Any) -> None:
    from starlette.routing import Host, Mount

    for route in getattr(router, "routes", ()) if depth < 8 else ():
        if isinstance(route, (Mount, Host)):
            below = elsewhere or _payees(route.app) - {_fixed(gate.config.pay_to)} - {None}
            _walk(find_router(route.app), gate, bool(below), depth + 1, found)
        elif included(route):
            found[elsewhere].update(id(c.original_route) for c in route.effective_route_contexts())
        else:
            found[elsewhere].add(id(route))


def _payees(app: Any) -> set[str | None]:
    """The payTo of each gate down ``app``'s middleware chain (None: not a fixed one)."""
    from .asgi import PaymentMiddleware

    found: set[str | None] = set()
    for _ in range(64):
        if app is None:
            break
        if isinstance(app, PaymentMiddleware) and app.gate is not None:
            found.add(_fixed(app.gate.config.pay_to))
        for declared in getattr(app, "user_middleware", ()):
            cls, options = getattr(declared, "cls", None), getattr(declared, "kwargs", {})
            gate = getattr(options.get("dispatch"), "gate", None)  # the http middleware form
            if isinstance(cls, type) and issubclass(cls, PaymentMiddleware):
                gate = options.get("gate")
                config = options.get("config") if gate is None else gate.config
                found.add(_fixed(options.get("pay_to") if config is None else config.pay_to))
            elif isinstance(gate, Gate):
                found.add(_fixed(gate.config.pay_to))
        app = getattr(app, "app", None)
    return found


def _fixed(pay_to: Any) -> str | None:
    return pay_to.lower() if isinstance(pay_to, str) else None
