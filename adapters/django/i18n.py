"""Django's localized URLs (``i18n_patterns``) as the gate must see them: the language
prefix of the active language, and the middleware order that resolves them as the handler
will (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

from typing import Any

from django.urls.resolvers import LocalePrefixPattern

from ._order import places
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
    from django.middleware.locale import LocaleMiddleware

    found = places(LocaleMiddleware)  # Django's, or a subclass
    if found is None or found[1] < found[0] or language_prefix() is None:
        return None
    return "LocaleMiddleware must come before PaymentMiddleware in MIDDLEWARE (i18n_patterns)"
