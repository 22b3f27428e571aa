"""System checks (fourmica_x402.E001 no FOURMICA_X402 dict, E002 invalid configuration or
@paid price, E003 a ROUTES entry naming no URL pattern, W001 no PaymentMiddleware in MIDDLEWARE).

    INSTALLED_APPS = [..., "fourmica_x402.adapters.django"]  # then: manage.py check
"""

from collections.abc import Mapping
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate.lifecycle import Endpoints

from . import conf


class FourmicaX402Config(AppConfig):
    name, label, verbose_name = "fourmica_x402.adapters.django", "fourmica_x402", "fourmica x402"


@register("fourmica_x402")
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    given = getattr(settings, "FOURMICA_X402_CONFIG", None) or getattr(settings, "FOURMICA_X402", 0)
    if not isinstance(given, Mapping | PaymentConfig):
        return [Error("FOURMICA_X402 is missing or not a dict", id="fourmica_x402.E001")]
    try:  # each @paid price too, with the settings' payTo and network
        missing = Endpoints(conf.describe).unmatched(conf.load(), conf.patterns())
    except (ValueError, TypeError) as exc:  # ConfigurationError is a ValueError
        return [Error(f"FOURMICA_X402: {exc}", id="fourmica_x402.E002")]
    msg = "FOURMICA_X402 ROUTES entry {!r} names no URL pattern: it prices nothing (a typo?)"
    return [Error(msg.format(key), id="fourmica_x402.E003") for key in missing]


@register("fourmica_x402")
def check_middleware(**kwargs: Any) -> list[CheckMessage]:
    ours = {f"{__package__}.PaymentMiddleware", f"{__package__}.middleware.PaymentMiddleware"}
    if ours.isdisjoint(getattr(settings, "MIDDLEWARE", None) or ()):
        return [Warning("PaymentMiddleware is not in MIDDLEWARE", id="fourmica_x402.W001")]
    return []
