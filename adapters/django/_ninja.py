"""What a Django Ninja route serves: the operations its ``PathView`` holds, one per method or
methods (docs/architecture.md, "Which route is priced")."""

import inspect
from typing import Any

from fourmica_x402.gate.lifecycle import Marker

__all__ = ["operations"]


def operations(view: Any) -> tuple[Marker | None, list[str]] | None:
    """A Ninja route's methods: its operations', HEAD with GET (the others are Ninja's own
    405), and no marker of its own. None: the view is no Ninja route (its wrapper holds the
    ``PathView`` as ``self``)."""
    try:
        owner = inspect.getclosurevars(view).nonlocals.get("self")
    except (TypeError, ValueError):  # no function of Python's: no Ninja route
        return None
    found = getattr(owner, "operations", None)
    if not type(owner).__module__.startswith("ninja.") or not isinstance(found, list):
        return None
    served = [str(m).upper() for op in found for m in op.methods]
    return None, [*served, *(["HEAD"] if "GET" in served and "HEAD" not in served else [])]
