"""What a Django Ninja route serves: the operations its ``PathView`` holds, one per method or
methods (docs/architecture.md, "Which route is priced")."""

import contextlib
import copy
import inspect
import weakref
from collections.abc import Iterable
from typing import Any

from fourmica_x402.gate.guards import check_routed, one_marker
from fourmica_x402.gate.lifecycle import Marker
from fourmica_x402.templates import ClassMethods

__all__ = ["operations", "routed"]

#: The views and Ninja operations of the URLconfs :func:`routed` saw: a ``@paid`` guard served
#: there is served (one function free at one path, priced at another).
_SERVED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def operations(view: Any) -> tuple[Marker | None, list[str]] | None:
    """A Ninja route's ``@paid`` (its operations', as the methods they serve) and its methods:
    its operations', HEAD with GET (the others are Ninja's own 405). None: the view is no
    Ninja route."""
    found = _operations(view)
    if found is None:
        return None
    check_routed((op.view_func for op in found), _SERVED)  # @paid above @api.get: unpriced
    served = {str(m).upper(): Marker.of(op.view_func) for op in found for m in op.methods}
    where = f"the Ninja operations at {getattr(found[0], 'path', '?')!r}" if found else "?"
    one = one_marker(served.values(), where)
    methods = [*served, *(["HEAD"] if "GET" in served and "HEAD" not in served else [])]
    if one is None:
        return None, methods
    one = copy.copy(one)  # priced for the methods marked, as far as their marker prices
    one.methods = ClassMethods(m for m, marker in served.items() if marker and one.prices(m))
    return one, methods


def routed(found: Iterable[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """``found`` (``(view, route)`` of the URL patterns), its views and Ninja operations noted
    as served before :func:`operations` reads them."""
    found = list(found)
    for view, _ in found:
        for each in (view, *(op.view_func for op in _operations(view) or ())):
            with contextlib.suppress(TypeError):  # no weak reference can hold it
                _SERVED.add(each)
    return found


def _operations(view: Any) -> list[Any] | None:
    """The operations of a Ninja route (its wrapper holds the ``PathView`` as ``self``)."""
    try:
        owner = inspect.getclosurevars(view).nonlocals.get("self")
    except (TypeError, ValueError):  # no function of Python's: no Ninja route
        return None
    found = getattr(owner, "operations", None)
    if not type(owner).__module__.startswith("ninja.") or not isinstance(found, list):
        return None
    return found
