"""What a class-based view answers by itself, whatever the methods it implements, and what a
Django REST Framework ViewSet serves."""

import inspect
from types import SimpleNamespace
from typing import Any

from fourmica_x402.gate.guards import method_marker, one_marker
from fourmica_x402.gate.lifecycle import Marker

__all__ = ["answers_itself", "api_view_marker", "bound_view", "viewset"]

#: Packages whose views' ``dispatch()`` hands on to the method's handler (or answers 405):
#: Django's, and Django REST Framework's ``APIView`` (docs/architecture.md, "Which route is
#: priced").
_HANDING_ON = ("django", "rest_framework")


def answers_itself(cls: type) -> bool:
    """Whether a class-based view may answer any method itself: its ``dispatch()`` (a proxy,
    GraphQL) or ``http_method_not_allowed()`` (other verbs served like GET) does more than
    ``return super()…`` (decorated or not; Django's own mixins only hand on too)."""
    return any(_own(cls, name) for name in ("dispatch", "http_method_not_allowed"))


def _own(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if (method := klass.__dict__.get(name)) is None:
            continue
        module = getattr(method := inspect.unwrap(method), "__module__", None) or ""
        if module.partition(".")[0] in _HANDING_ON:
            continue  # Django's own (an access mixin's, View's), DRF's: a later one may not
        code = getattr(method, "__code__", None)
        if code is None or not set(code.co_names) <= {"super", name}:
            return True  # its own logic: any method may be answered there
    return False


def bound_view(handler: Any) -> Any:
    """The class-based view a handler is bound to, through the decorators between: what a
    decorator given to ``method_decorator(..., name="dispatch")`` gets, per request, is the
    view's bound method (a ``partial``), maybe already wrapped by the decorators listed after
    it. None: a function view."""
    for _ in range(64):  # a decorator chain, not a cycle
        owner = getattr(getattr(handler, "func", None), "__self__", None)
        if hasattr(owner, "http_method_names"):
            return owner
        handler = getattr(handler, "__wrapped__", None)
        if handler is None:
            break
    return None


def viewset(view: Any) -> tuple[Marker | None, list[str] | None] | None:
    """A DRF ViewSet's route (``as_view({"get": "list", "post": "create"})``, as its routers
    make them): its ``@paid`` (the class's, or its actions' as the methods they serve) and
    the methods it serves (the route's actions, HEAD with GET, OPTIONS). None: no ViewSet."""
    cls, actions = getattr(view, "cls", None), getattr(view, "actions", None)
    if not isinstance(cls, type) or not isinstance(actions, dict):
        return None
    own = one_marker([Marker.of(view), Marker.of(cls)], cls.__qualname__)  # not two prices
    handlers = {verb: getattr(cls, name, None) for verb, name in actions.items()}
    methods = method_marker(SimpleNamespace(__qualname__=cls.__qualname__, **handlers))
    if own is not None and methods is not None and own.config != methods.config:
        one_marker([own, methods], cls.__qualname__)
    if answers_itself(cls):
        return own or methods, None
    given: Any = getattr(view, "initkwargs", {})
    names = given.get("http_method_names", getattr(cls, "http_method_names", ()))
    served = [*actions, *(["head"] if "get" in actions else []), "options"]  # APIView's own
    return own or methods, [m.upper() for m in dict.fromkeys(served) if m in names]


def api_view_marker(cls: type) -> Marker | None:
    """The ``@paid`` of a function DRF's ``@api_view`` made a view of, the marker below it (as
    DRF's own decorators go): its class's handlers call the function marked."""
    for name in ("get", "post", "put", "patch", "delete"):
        handler = cls.__dict__.get(name)
        if callable(handler) and handler.__module__ == "rest_framework.decorators":
            return Marker.of(inspect.getclosurevars(handler).nonlocals.get("func"))
    return None
