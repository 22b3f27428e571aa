"""Which handlers a marker guarded, so that a router serving one without its guard is caught
at start-up (docs/architecture.md, "Which route is priced").

A route decorator registers the function it is given: with ``@paid`` applied above it (Flask's
``@app.route``), the router serves the unpriced function and the price is never asked.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

from ..errors import ConfigurationError

__all__ = ["check_routed", "one_marker", "remember"]

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
