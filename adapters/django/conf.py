"""Prices: ``settings.FOURMICA_X402`` (PaymentConfig options, upper-cased) and ``@paid``.

FOURMICA_X402 = {"PAY_TO": "0x…", "NETWORK": "eip155:84532", "ROUTES": {"GET /a": "$0.01"}}
@paid(price="$0.01")  # GET (and HEAD) of this view's URL: <int:id> → :id, <path:p> → *
FOURMICA_X402_CONFIG = PaymentConfig(...)  # or one built in code (a live Core, hooks)
"""

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from django.conf import settings
from django.urls.resolvers import RoutePattern, URLResolver, get_resolver

from fourmica_x402.config import PaymentConfig
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.routes import RouteConfig

_MARK = "fourmica_x402_route"  # (RouteConfig, methods) on a @paid view
KEYS = {f.name.upper(): f.name for f in dataclasses.fields(PaymentConfig)}
_SEGMENT = re.compile(r"<(?:(?:str|int|slug|uuid):)?(\w+)>")  # converters that never match "/"
_ANY = re.compile(r"<[^>]*>")  # path and custom converters: wider, never lets a URL through


def load() -> PaymentConfig:
    """The configured PaymentConfig, @paid views included; ConfigurationError says what to fix."""
    config = getattr(settings, "FOURMICA_X402_CONFIG", None)
    if config is None and isinstance(options := getattr(settings, "FOURMICA_X402", None), Mapping):
        if unknown := sorted(str(key) for key in options if key not in KEYS):
            raise ConfigurationError(f"FOURMICA_X402: unknown keys {unknown} (known: {list(KEYS)})")
        config = PaymentConfig(**{KEYS[key]: value for key, value in options.items()})
    if not isinstance(config, PaymentConfig):
        raise ConfigurationError("set FOURMICA_X402 to a dict (or FOURMICA_X402_CONFIG)")
    paid = {key: route for key, _, route in paid_patterns() if key and key not in config.routes}
    return dataclasses.replace(config, routes={**config.routes, **paid}) if paid else config


def paid(
    price: Any = None, *, methods: Iterable[str] = ("GET",), **route: Any
) -> Callable[[Any], Any]:
    """Mark a view as paid for ``methods`` (HEAD counts as GET); ``route``: RouteConfig fields."""
    config = RouteConfig(price=price, **route)

    def mark(view: Any) -> Any:  # functools.wraps copies the marks to the decorators above
        setattr(view, _MARK, (config, tuple(m.upper() for m in methods)))
        return view

    return mark


def paid_patterns(
    patterns: Iterable[Any] | None = None, prefix: str | None = ""
) -> Iterator[tuple[str | None, str, RouteConfig]]:
    """``(route key, view, config)`` for each @paid view in the URLconf; no key under a regex."""
    if patterns is None:
        patterns = get_resolver().url_patterns if getattr(settings, "ROOT_URLCONF", None) else ()
    for entry in patterns:
        path = None  # a re_path (or a locale prefix) cannot be written as a gate route
        if prefix is not None and isinstance(entry.pattern, RoutePattern):
            path = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from paid_patterns(entry.url_patterns, path)
            continue
        view, cls = entry.callback, getattr(entry.callback, "view_class", None)  # as_view()
        mark = getattr(view, _MARK, None) or getattr(cls, _MARK, None)
        if isinstance(mark, tuple):
            config, methods = mark
            key = None if path is None else "/" + _ANY.sub("*", _SEGMENT.sub(r":\1", path))
            for method in methods:
                yield key and f"{method} {key}", entry.lookup_str, config
