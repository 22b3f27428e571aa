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

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

try:
    from flask import Flask, abort, current_app, g, request
    from werkzeug.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.flask needs Flask: pip install "fourmica-x402[flask]"'
    ) from exc

from fourmica_x402.config import PaymentConfig, config_options
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import Endpoint, Gate
from fourmica_x402.gate.guards import check_routed
from fourmica_x402.gate.lifecycle import Endpoints, Marker

from .wsgi import PAYMENT_KEY, PaymentMiddleware

__all__ = ["FourmicaX402", "paid", "settings"]

PREFIX = "FOURMICA_X402_"
_APPS: weakref.WeakSet[Flask] = weakref.WeakSet()  # the process's apps with the extension
View = TypeVar("View", bound=Callable[..., Any])


def paid(
    price: Any = None, *, methods: Iterable[str] | None = None, **route: Any
) -> Callable[[View], View]:
    """Price a view (``route``: any other RouteConfig field); the view reads ``g.payment``.

    ``methods``: the methods priced (default: every method the rule serves); the others
    are answered 405. The view never runs without a payment settled for its rule.
    """
    marker = Marker(price, methods, route)

    def refusal(*args: Any, **kwargs: Any) -> Any:  # g.payment: set by the extension
        rule = request.url_rule
        served = sorted((rule.methods if rule else None) or ())
        refused = marker.refusal(request.environ.get(PAYMENT_KEY), rule, request.method, served)
        if refused is None:
            return None
        if refused.status == 405:
            abort(405, valid_methods=marker.allow(served))
        return current_app.response_class(refused.body, refused.status, refused.headers)

    def mark(view: View) -> View:
        marker.validate(f"@paid on {getattr(view, '__qualname__', repr(view))}")
        return marker.attach(marker.guard(view, refusal))

    return mark


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
        self._routed: list[_Routed] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        found = settings(app.config)
        self.gate = Gate(self.config or PaymentConfig(**{**found, **self.options}))
        middleware = _Routed(app.wsgi_app, gate=self.gate, flask_app=app)
        self._routed.append(middleware)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["fourmica_x402"] = self
        _APPS.add(app)
        app.before_request(lambda: setattr(g, "payment", request.environ.get(PAYMENT_KEY)))

    def check(self) -> None:
        """Check prices against routes now (ConfigurationError); else the first request does (500)."""
        if not self._routed:
            raise ConfigurationError("FourmicaX402: call init_app(app) first")
        for middleware in self._routed:
            middleware.check()


def _served(rule: Any) -> set[str]:  # Flask answers an OPTIONS it added by itself
    auto = getattr(rule, "provide_automatic_options", False)  # not on rules added by hand
    return set(rule.methods or ()) - ({"OPTIONS"} if auto else set())


class _Routed(PaymentMiddleware):
    """The WSGI middleware, pricing the rule Flask's router resolves (one Endpoint per rule)."""

    def __init__(self, app: Any, *, gate: Gate, flask_app: Flask) -> None:
        super().__init__(app, gate=gate)
        self._flask_app, views = flask_app, flask_app.view_functions
        describe = lambda r: (Marker.of(views.get(r.endpoint)), _served(r))  # noqa: E731
        self._endpoint = Endpoints(describe, converter=flask_app.url_map.converters.get)

    def check(self) -> None:  # the first request runs it at the latest: views come after init_app
        everywhere = [view for app in _APPS for view in app.view_functions.values()]
        check_routed(self._flask_app.view_functions.values(), everywhere)  # @paid over @app.route?
        rules = ((rule, rule.rule) for rule in self._flask_app.url_map.iter_rules())
        self._endpoint.check(self.gate, rules)

    def resolver(self, environ: dict[str, Any]) -> Callable[[], Endpoint | None]:
        app = self._flask_app

        def resolve() -> Endpoint | None:
            try:
                adapter = app.create_url_adapter(app.request_class(environ))
                rule, _ = adapter.match(return_rule=True)  # type: ignore[union-attr]
            except HTTPException:  # 404, 405, a redirect (strict slashes): Flask won't serve it
                return None
            return self._endpoint(rule, rule.rule)

        return resolve
