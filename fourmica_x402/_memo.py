"""What is derived from an object that does not change, computed once per object.

A route's payment requirements are built once and reused for every request (see
docs/architecture.md, "A paid request"); what the gate and the embedded facilitator read
from them (the wire form, the validation policy, what the Core must see) is the same every
time. :class:`ByIdentity` keeps it beside the object it came from. Objects built per request
(a dynamic price, a remote seller's body) simply miss and age out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

__all__ = ["ByIdentity"]


class ByIdentity(Generic[K, V]):
    """``fn(obj)`` per object identity, for objects never mutated after they are built.

    The object is held beside its value, so its id cannot be reused while it is remembered;
    at most ``size`` are kept (all forgotten at once when full: a miss only costs ``fn``).
    """

    __slots__ = ("_fn", "_items", "_lock", "_size")

    def __init__(self, fn: Callable[[K], V], size: int = 256) -> None:
        self._fn = fn
        self._size = size
        self._items: dict[int, tuple[K, V]] = {}
        self._lock = threading.Lock()

    def __call__(self, obj: K) -> V:
        found = self._items.get(id(obj))
        if found is not None and found[0] is obj:
            return found[1]
        value = self._fn(obj)  # may raise: nothing is remembered then
        with self._lock:
            if len(self._items) >= self._size:
                self._items = {}
            self._items[id(obj)] = (obj, value)
        return value
