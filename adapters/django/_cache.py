"""Django's page cache as the gate must see it: a middleware above ours that answers from the
cache (``FetchFromCacheMiddleware``, ``CacheMiddleware``) hands out, to anyone, a paid page
that a view below ours cached (``cache_page`` keeps its copy before ours marks the response
``private, no-store``; docs/protocol.md, "Paid responses")."""

from __future__ import annotations

from django.conf import settings

__all__ = ["cache_misplaced"]


def cache_misplaced() -> str | None:
    """Why the middleware order would serve cached paid pages unpaid, or None: a middleware
    fetching pages from the cache must come after ours, so that every request is priced."""
    names = [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    ours = [i for i, m in enumerate(names) if m.startswith(__package__ or "") and "Payment" in m]
    fetch = [i for i, m in enumerate(names) if _fetches(m)]  # Django's, or a subclass
    if not fetch or not ours or ours[0] < fetch[0]:
        return None
    return "FetchFromCacheMiddleware must come after PaymentMiddleware in MIDDLEWARE"


def _fetches(name: str) -> bool:
    from django.middleware.cache import FetchFromCacheMiddleware
    from django.utils.module_loading import import_string

    try:
        found = import_string(name)
    except ImportError:  # Django reports it when it loads the middleware
        return False
    return isinstance(found, type) and issubclass(found, FetchFromCacheMiddleware)
