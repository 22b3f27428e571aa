"""Django's localized URLs (``i18n_patterns``) as the gate must see them: the language
prefix of the active language, and the middleware order that resolves them as the handler
will (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls.resolvers import LocalePrefixPattern

from .conf import _top

__all__ = ["language_prefix", "locale_misplaced"]


def language_prefix(urlconf: Any = None) -> str | None:
    """The language prefix ``i18n_patterns`` adds for the active language ("de/", or "" for
    an unprefixed default), None when ``urlconf`` (None: ROOT_URLCONF) has none."""
    for entry in _top(urlconf):
        if isinstance(entry.pattern, LocalePrefixPattern):
            return str(entry.pattern.language_prefix)
    return None


def locale_misplaced() -> str | None:
    """Why the middleware order would resolve localized URLs unlike the handler, or None:
    with ``i18n_patterns``, ``LocaleMiddleware`` must come before ours (it activates the
    language the URL patterns match under; docs/architecture.md, "Which route is priced")."""
    names = [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    ours = [i for i, m in enumerate(names) if m.startswith(__package__ or "") and "Payment" in m]
    locale = [i for i, m in enumerate(names) if _is_locale(m)]  # Django's, or a subclass
    if not locale or not ours or locale[0] < ours[0]:
        return None
    if language_prefix() is None:
        return None
    return "LocaleMiddleware must come before PaymentMiddleware in MIDDLEWARE (i18n_patterns)"


def _is_locale(name: str) -> bool:
    from django.middleware.locale import LocaleMiddleware
    from django.utils.module_loading import import_string

    try:
        found = import_string(name)
    except ImportError:  # Django reports it when it loads the middleware
        return False
    return isinstance(found, type) and issubclass(found, LocaleMiddleware)
