"""Drop-in names for sellers migrating from the official 4Mica package.

    from fourmica_x402.http import fastapi_payment_middleware_from_config

    app.middleware("http")(
        fastapi_payment_middleware_from_config(routes, tab_endpoint="http://localhost:8000/payment/tab")
    )

The arguments are the official ones. Differences, on purpose:

- with no ``facilitator_client`` the payments settle on the embedded Core
  (SQLite file ``fourmica_x402.db``), not on a hosted facilitator;
- ``facilitator_client`` may be any of our facilitators (``HttpFacilitator``
  for a remote one);
- ``paywall_config``/``paywall_provider`` are accepted and ignored (the gate
  has its own paywall page); ``sync_facilitator_on_start`` is not needed.

These functions import the web framework only when called (the core never
imports one on its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import PaymentConfig
from .errors import ConfigurationError

__all__ = [
    "compat_config",
    "fastapi_payment_middleware_from_config",
    "flask_payment_middleware_from_config",
]


def compat_config(
    routes: Mapping[str, Any],
    tab_endpoint: str,
    facilitator_client: Any = None,
    ttl_seconds: int | None = None,
) -> PaymentConfig:
    """The PaymentConfig equivalent of the official package's arguments."""
    facilitator = None
    if isinstance(facilitator_client, list | tuple):
        facilitator_client = facilitator_client[0] if facilitator_client else None
    if facilitator_client is not None:
        if not all(hasattr(facilitator_client, n) for n in ("settle", "verify", "open_tab")):
            raise ConfigurationError(
                "facilitator_client must be a fourmica_x402 facilitator (e.g. HttpFacilitator(url)); "
                "the official client objects cannot be reused"
            )
        facilitator = facilitator_client
    return PaymentConfig(
        routes=routes,
        tab_endpoint=tab_endpoint,
        facilitator=facilitator,
        tab_ttl_seconds=ttl_seconds,
        records=None if facilitator is None else "sqlite:///fourmica_x402_records.db",
    )


def fastapi_payment_middleware_from_config(
    routes: Mapping[str, Any],
    tab_endpoint: str,
    facilitator_client: Any = None,
    paywall_config: Any = None,
    paywall_provider: Any = None,
    sync_facilitator_on_start: bool = True,
    ttl_seconds: int | None = None,
) -> Any:
    """An ``async def middleware(request, call_next)`` for ``app.middleware("http")``."""
    from .adapters.fastapi import http_middleware

    return http_middleware(compat_config(routes, tab_endpoint, facilitator_client, ttl_seconds))


def flask_payment_middleware_from_config(
    app: Any,
    routes: Mapping[str, Any],
    tab_endpoint: str,
    facilitator_client: Any = None,
    paywall_config: Any = None,
    paywall_provider: Any = None,
    sync_facilitator_on_start: bool = True,
    ttl_seconds: int | None = None,
) -> Any:
    """Install payments on a Flask app (wraps ``app.wsgi_app``); returns the middleware.

    The routes are priced as Flask routes them (docs/architecture.md): their keys name rules.
    """
    from .adapters.flask import FourmicaX402

    config = compat_config(routes, tab_endpoint, facilitator_client, ttl_seconds)
    FourmicaX402(app, config=config)
    return app.wsgi_app
