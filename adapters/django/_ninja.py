"""What a Django Ninja route serves: the operations its ``PathView`` holds, one per method or
methods (docs/architecture.md, "Which route is priced")."""

import copy
import inspect
from typing import Any

from fourmica_x402.gate.guards import check_routed, one_marker
from fourmica_x402.gate.lifecycle import Marker
from fourmica_x402.templates import ClassMethods

__all__ = ["operations"]


def operations(view: Any) -> tuple[Marker | None, list[str]] | None:
    """A Ninja route's ``@paid`` (its operations', as the methods they serve) and its methods:
    its operations', HEAD with GET (the others are Ninja's own 405). None: the view is no
    Ninja route (its wrapper holds the ``PathView`` as ``self``)."""
    try:
        owner = inspect.getclosurevars(view).nonlocals.get("self")
    except (TypeError, ValueError):  # no function of Python's: no Ninja route
        return None
    found = getattr(owner, "operations", None)
    if not type(owner).__module__.startswith("ninja.") or not isinstance(found, list):
        return None
    check_routed(op.view_func for op in found)  # @paid above @api.get: the function runs
    served = {str(m).upper(): Marker.of(op.view_func) for op in found for m in op.methods}
    where = f"the Ninja operations at {getattr(found[0], 'path', '?')!r}" if found else "?"
    one = one_marker(served.values(), where)
    methods = [*served, *(["HEAD"] if "GET" in served and "HEAD" not in served else [])]
    if one is None:
        return None, methods
    one = copy.copy(one)  # priced for the methods marked, as far as their marker prices
    one.methods = ClassMethods(m for m, marker in served.items() if marker and one.prices(m))
    return one, methods
