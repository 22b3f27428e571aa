"""System checks (fourmica_x402.E001 no FOURMICA_X402 dict, E002 invalid configuration or
@paid price, E003 a ROUTES entry naming no URL pattern, E004 a SQLite database in a directory
that does not exist, E005 LocaleMiddleware after ours with i18n_patterns, E006 a cache
middleware fetching pages before ours, W001 no PaymentMiddleware in MIDDLEWARE, W002 a priced
POST, PUT, PATCH or DELETE that CsrfViewMiddleware refuses to every buyer, W003 an HTTPS or
``www.`` redirect after ours).

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
from fourmica_x402.routes import RouteTable

from . import conf, i18n
from ._order import cache_misplaced, places, redirects_after


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
    errors = [Error(why, id=f"fourmica_x402.{code}") for why, code in found if why is not None]
    return errors + [Warning(why, id="fourmica_x402.W003") for why in redirects_after()]


#: The methods Django's CSRF check covers.
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


@register("fourmica_x402")
def check_csrf(**kwargs: Any) -> list[CheckMessage]:
    """A view priced for a method Django's CSRF check covers, and not ``csrf_exempt``: a buyer
    (an agent, with no CSRF cookie) is refused 403 after paying, refunded, never served
    (docs/architecture.md, "Django: redirects, CSRF, caches and hosts around the middleware")."""
    from django.middleware.csrf import CsrfViewMiddleware

    if places(CsrfViewMiddleware) is None:
        return []
    try:
        config = conf.load()
        table = RouteTable(
            config.routes, network=config.network, pay_to=config.pay_to, asset=config.asset
        )
        found = Endpoints(conf.describe, converter=conf.converter).price(table, conf.patterns())
    except (ValueError, TypeError):
        return []  # E002 says why
    refused = {
        endpoint.template: ", ".join(methods)
        for endpoint in found
        if not getattr(endpoint.key, "csrf_exempt", False)
        and (methods := [m for m in _UNSAFE if table.for_endpoint(m, endpoint) is not None])
    }
    msg = "{} ({}): priced, and CsrfViewMiddleware refuses it to buyers (403, refunded): exempt it"
    hint = (  # a view serving GET only, priced for every method, is named too
        "csrf_exempt it, or price only the methods it serves: @paid(methods=[...]), or a route "
        "key naming its method ('GET /path')"
    )
    each = sorted(refused.items())
    return [Warning(msg.format(*e), hint=hint, id="fourmica_x402.W002") for e in each]


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
