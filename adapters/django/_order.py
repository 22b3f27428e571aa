"""Where other middleware must stand beside ours in ``MIDDLEWARE`` (docs/architecture.md,
"Which route is priced"): Django's page cache as the gate must see it — a middleware above ours
that answers from the cache (``FetchFromCacheMiddleware``, ``CacheMiddleware``) hands out, to
anyone, a paid page that a view below ours cached (``cache_page`` keeps its copy before ours
marks the response ``private, no-store``; docs/protocol.md, "Paid responses"); and Django's
HTTPS and ``www.`` redirects, which must come before ours to redirect before the payment."""

from __future__ import annotations

from django.conf import settings

__all__ = ["cache_misplaced", "places", "redirects_after"]


def places(kind: type) -> tuple[int, int] | None:
    """The places in ``MIDDLEWARE`` of our middleware and of the first that is ``kind`` (or a
    subclass), or None when either is missing."""
    names = [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    ours = [i for i, m in enumerate(names) if m.startswith(__package__ or "") and "Payment" in m]
    theirs = [i for i, m in enumerate(names) if _is(m, kind)]
    return (ours[0], theirs[0]) if ours and theirs else None


def cache_misplaced() -> str | None:
    """Why the middleware order would serve cached paid pages unpaid, or None: a middleware
    fetching pages from the cache must come after ours, so that every request is priced."""
    from django.middleware.cache import FetchFromCacheMiddleware

    found = places(FetchFromCacheMiddleware)
    if found is None or found[0] < found[1]:
        return None
    return "FetchFromCacheMiddleware must come after PaymentMiddleware in MIDDLEWARE"


def redirects_after() -> list[str]:
    """Why a middleware listed after ours redirects requests it was paid for: Django's HTTPS
    and ``www.`` redirects: refunded, and the new URL asks the buyer to pay again
    (docs/architecture.md, "Django: redirects, CSRF, caches and hosts around the middleware")."""
    from django.middleware.common import CommonMiddleware
    from django.middleware.security import SecurityMiddleware

    return [
        f"{kind.__name__} after PaymentMiddleware in MIDDLEWARE redirects paid requests "
        f"({setting}): refunded, and the new URL asks for a payment again; list it before ours"
        for kind, setting in (
            (SecurityMiddleware, "SECURE_SSL_REDIRECT"),
            (CommonMiddleware, "PREPEND_WWW"),
        )
        if getattr(settings, setting, False) and (at := places(kind)) and at[0] < at[1]
    ]


def _is(name: str, kind: type) -> bool:
    from django.utils.module_loading import import_string

    try:
        found = import_string(name)
    except ImportError:  # Django reports it when it loads the middleware
        return False
    return isinstance(found, type) and issubclass(found, kind)
