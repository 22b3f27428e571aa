"""What a class-based view answers by itself, whatever the methods it implements."""

import inspect

__all__ = ["answers_itself"]


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
        if module == "django" or module.startswith("django."):
            return False
        code = getattr(method, "__code__", None)
        if code is None or not set(code.co_names) <= {"super", name}:
            return True  # its own logic: any method may be answered there
    return False
