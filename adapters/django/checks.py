"""System checks (fourmica_x402.E001 no FOURMICA_X402 dict, E002 invalid configuration or
@paid price, E003 a ROUTES entry naming no URL pattern, E004 a SQLite database in a directory
that does not exist, E005 LocaleMiddleware after ours with i18n_patterns, E006 a cache
middleware fetching pages before ours, W001 no PaymentMiddleware in MIDDLEWARE).

    INSTALLED_APPS = [..., "fourmica_x402.adapters.django"]  # then: manage.py check
"""

import os
from collections.abc import Mapping
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from fourmica_x402.config import PaymentConfig
from fourmica_x402.core.store.sqlite import _path_of as sqlite_path
from fourmica_x402.gate.lifecycle import Endpoints

from . import conf, i18n
from ._order import cache_misplaced


class FourmicaX402Config(AppConfig):
    name, label, verbose_name = "fourmica_x402.adapters.django", "fourmica_x402", "fourmica x402"


@register("fourmica_x402")
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    given = getattr(settings, "FOURMICA_X402_CONFIG", None) or getattr(settings, "FOURMICA_X402", 0)
    if not isinstance(given, Mapping | PaymentConfig):
        return [Error("FOURMICA_X402 is missing or not a dict", id="fourmica_x402.E001")]
    try:  # each @paid price too, with the settings' payTo and network
        missing = Endpoints(conf.describe, converter=conf.converter).unmatched(
            conf.load(), conf.patterns()
        )
    except (ValueError, TypeError) as exc:  # ConfigurationError is a ValueError
        said = str(exc) if str(exc).startswith("FOURMICA_X402") else f"FOURMICA_X402: {exc}"
        return [Error(said, id="fourmica_x402.E002")]
    msg = "FOURMICA_X402 ROUTES entry {!r} names no URL pattern: it prices nothing (a typo?)"
    return [Error(msg.format(key), id="fourmica_x402.E003") for key in missing]


@register("fourmica_x402")
def check_middleware(**kwargs: Any) -> list[CheckMessage]:
    ours = {f"{__package__}.PaymentMiddleware", f"{__package__}.middleware.PaymentMiddleware"}
    if ours.isdisjoint(getattr(settings, "MIDDLEWARE", None) or ()):
        return [Warning("PaymentMiddleware is not in MIDDLEWARE", id="fourmica_x402.W001")]
    found = [(i18n.locale_misplaced(), "E005"), (cache_misplaced(), "E006")]
    return [Error(why, id=f"fourmica_x402.{code}") for why, code in found if why is not None]


@register("fourmica_x402")
def check_database(**kwargs: Any) -> list[CheckMessage]:
    """A SQLite file the gate could not create (its directory is missing); PostgreSQL is left
    to start-up (a check makes no network call)."""
    try:
        config = conf.load()
    except (ValueError, TypeError):
        return []  # E002 says why
    urls = [u for u in (config.core, config.records) if isinstance(u, str)]
    if config.facilitator is not None and isinstance(config.core, str):
        urls.remove(config.core)
    return [
        Error(
            f"FOURMICA_X402 database {url!r}: the directory {parent} does not exist",
            id="fourmica_x402.E004",
        )
        for url in urls
        if not url.startswith(("postgresql://", "postgres://"))
        and (path := sqlite_path(url)) != ":memory:"
        and not os.path.isdir(parent := os.path.dirname(os.path.abspath(path)))
    ]
