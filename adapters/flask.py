"""Flask: an extension configured from ``app.config``, and a ``@paid`` view decorator.

    from flask import Flask, g
    from fourmica_x402.adapters.flask import FourmicaX402, paid

    app = Flask(__name__)
    app.config["FOURMICA_X402_PAY_TO"] = "0xYourAddress"
    payments = FourmicaX402(app)

    @app.get("/premium")
    @paid(price="$0.01")
    def premium():
        return {"payer": g.payment.payer}

    payments.check()  # once the routes exist: a route-table entry naming no route fails here

Every ``PaymentConfig`` field is a setting ``FOURMICA_X402_<FIELD>`` (keyword options win). The
rule Flask resolves is priced: its ``@paid``, else its entry (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

try:
    from flask import Flask, request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.flask needs Flask: pip install "fourmica-x402[flask]"'
    ) from exc

from fourmica_x402.config import PaymentConfig, config_options
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import Gate
from fourmica_x402.gate.lifecycle import Marker

from ._flask import _APPS, Routed, answer
from .wsgi import PAYMENT_KEY

__all__ = ["FourmicaX402", "paid", "settings"]

PREFIX = "FOURMICA_X402_"
View = TypeVar("View", bound=Callable[..., Any])


def paid(
    price: Any = None, *, methods: Iterable[str] | None = None, **route: Any
) -> Callable[[View], View]:
    """Price a view (``route``: any other RouteConfig field); the view reads ``g.payment``.

    ``methods``: the methods priced (default: every method the rule serves); the others
    are answered 405. The view never runs without a payment settled for its rule. In a
    Flask-RESTful or flask-restx ``Resource``'s ``method_decorators``, it prices the methods
    they decorate (docs/architecture.md, "Which route is priced").
    """
    marker = Marker(price, methods, route)

    def refusal(*args: Any, **kwargs: Any) -> Any:  # g.payment: set by the extension
        return answer(marker, request.environ.get(PAYMENT_KEY))

    def mark(view: View) -> View:
        marker.validate(f"@paid on {getattr(view, '__qualname__', repr(view))}")
        return marker.attach(marker.guard(view, refusal))

    return marker.attach(mark)  # read where it decorates (a Resource's method_decorators)


def settings(app_config: Mapping[str, Any]) -> dict[str, Any]:
    """The PaymentConfig options held in ``app.config`` as ``FOURMICA_X402_*``."""
    given = {k: v for k, v in app_config.items() if k.startswith(PREFIX)}
    options, unknown = config_options(given, lambda field: PREFIX + field.upper())
    if unknown:
        raise ConfigurationError(f"unknown Flask settings: {', '.join(unknown)}")
    return options


class FourmicaX402:
    """Payments for a Flask app: ``FourmicaX402(app)`` or ``ext.init_app(app)`` in a factory; a
    ``config`` as given, else the ``FOURMICA_X402_*`` settings, keyword ``options`` winning."""

    def __init__(
        self, app: Flask | None = None, config: PaymentConfig | None = None, **options: Any
    ) -> None:
        self.config, self.options = config, options
        self.gate: Gate | None = None
        self._routed: list[Routed] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        found = settings(app.config)
        self.gate = Gate(self.config or PaymentConfig(**{**found, **self.options}))
        middleware = Routed(app.wsgi_app, gate=self.gate, flask_app=app)
        self._routed.append(middleware)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["fourmica_x402"] = self
        _APPS.add(app)
        app.before_request(middleware.before_view)
        app.after_request(middleware.after_view)

    def check(self) -> None:
        """Check prices against routes now (ConfigurationError); else the first request does (500)."""
        if not self._routed:
            raise ConfigurationError("FourmicaX402: call init_app(app) first")
        for middleware in self._routed:
            middleware.check()
