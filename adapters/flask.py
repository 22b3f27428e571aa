"""Flask: an extension configured from ``app.config``, and a ``@paid`` view decorator.

    from flask import Flask, g
    from fourmica_x402.adapters.flask import FourmicaX402, paid

    app = Flask(__name__)
    app.config["FOURMICA_X402_PAY_TO"] = "0xYourAddress"
    FourmicaX402(app)

    @app.get("/premium")
    @paid(price="$0.01")
    def premium():
        return {"payer": g.payment.payer}

Every ``PaymentConfig`` field is a setting: ``FOURMICA_X402_<FIELD>`` (``_ROUTES``, ``_CORE``,
``_SETTLE``…); keyword options given to the extension win. The extension wraps
``app.wsgi_app`` with the WSGI middleware, which finds the ``@paid`` views on the first
request; ``routes=`` can price views as with any adapter.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

try:
    from flask import Flask, g, request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.flask needs Flask: pip install "fourmica-x402[flask]"'
    ) from exc

from fourmica_x402.config import PaymentConfig
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import Gate
from fourmica_x402.routes import RouteConfig

from .wsgi import PAYMENT_KEY, PaymentMiddleware

__all__ = ["FourmicaX402", "paid", "settings"]

PREFIX = "FOURMICA_X402_"
_FIELDS = frozenset(f.name for f in dataclasses.fields(PaymentConfig))
#: A rule argument: ``<name>``, ``<int:name>``, ``<path:name>``, ``<int(signed=True):name>``.
_ARG = re.compile(r"<(?:([A-Za-z_]\w*)(?:\([^)]*\))?:)?([A-Za-z_]\w*)>")
View = TypeVar("View", bound=Callable[..., Any])


def paid(price: Any = None, **route: Any) -> Callable[[View], View]:
    """Price a view (``route``: any other RouteConfig field); the view reads ``g.payment``."""
    config = RouteConfig(price=price, **route)

    def mark(view: View) -> View:
        view.__fourmica_route__ = config  # type: ignore[attr-defined]
        return view

    return mark


def settings(app_config: Mapping[str, Any]) -> dict[str, Any]:
    """The PaymentConfig options held in ``app.config`` as ``FOURMICA_X402_*``."""
    found = {k[len(PREFIX) :].lower(): v for k, v in app_config.items() if k.startswith(PREFIX)}
    unknown = sorted(PREFIX + name.upper() for name in found if name not in _FIELDS)
    if unknown:  # a typo would otherwise silently leave a default (a route unpriced, say)
        raise ConfigurationError(f"unknown Flask settings: {', '.join(unknown)}")
    return found


class FourmicaX402:
    """Payments for a Flask app: ``FourmicaX402(app)`` or ``ext.init_app(app)`` in a factory.

    A ``config`` (PaymentConfig) is used as given; otherwise the ``FOURMICA_X402_*``
    settings are, with keyword ``options`` winning over them.
    """

    def __init__(
        self, app: Flask | None = None, config: PaymentConfig | None = None, **options: Any
    ) -> None:
        self.config, self.options = config, options
        self.gate: Gate | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        found = settings(app.config)
        self.gate = Gate(self.config or PaymentConfig(**{**found, **self.options}))
        middleware = _Discovering(app.wsgi_app, gate=self.gate, flask_app=app)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["fourmica_x402"] = self
        app.before_request(_expose_payment)


def _expose_payment() -> None:
    g.payment = request.environ.get(PAYMENT_KEY)


class _Discovering(PaymentMiddleware):
    """The WSGI middleware, plus a one-time scan of the app's views for ``@paid`` marks."""

    def __init__(self, app: Any, *, gate: Gate, flask_app: Flask) -> None:
        super().__init__(app, gate=gate)
        self._flask_app = flask_app
        self._scanned = False
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not self._scanned:  # Flask refuses new routes once it served a request
            with self._lock:
                if not self._scanned:
                    self._scan()
                    self._scanned = True
        return super().__call__(environ, start_response)

    def _scan(self) -> None:
        app = self._flask_app
        for rule in app.url_map.iter_rules():
            view = app.view_functions.get(rule.endpoint)
            config = getattr(view, "__fourmica_route__", None)
            if config is None:
                continue
            path = _ARG.sub(lambda m: "*" if m[1] == "path" else f":{m[2]}", rule.rule)
            for method in sorted(rule.methods or ()):
                if method not in ("HEAD", "OPTIONS"):  # HEAD is priced as GET by the gate
                    self.gate.add_route(f"{method} {path}", config)
