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

Every ``PaymentConfig`` field is a setting: ``FOURMICA_X402_<FIELD>`` (``_ROUTES``, ``_CORE``,
``_SETTLE``…); keyword options given to the extension win. The extension wraps
``app.wsgi_app`` with the WSGI middleware, which prices the rule Flask's own router
resolves for the request (docs/architecture.md, "Which route is priced"): the view's
``@paid`` mark, else the ``FOURMICA_X402_ROUTES`` entry naming the rule's template.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

try:
    from flask import Flask, abort, g, jsonify, request
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import Rule
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fourmica_x402.adapters.flask needs Flask: pip install "fourmica-x402[flask]"'
    ) from exc

from fourmica_x402.config import PaymentConfig
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.gate import Endpoint, Gate
from fourmica_x402.routes import RouteConfig, validate_marker

from .wsgi import PAYMENT_KEY, PaymentMiddleware, answer

__all__ = ["FourmicaX402", "paid", "settings"]

log = logging.getLogger("fourmica_x402.flask")
PREFIX = "FOURMICA_X402_"
_FIELDS = {f.name: f.default for f in dataclasses.fields(PaymentConfig)}
View = TypeVar("View", bound=Callable[..., Any])


def paid(
    price: Any = None, *, methods: Iterable[str] | None = None, **route: Any
) -> Callable[[View], View]:
    """Price a view (``route``: any other RouteConfig field); the view reads ``g.payment``.

    ``methods``: the methods priced (default: every method the rule serves); the others
    are answered 405. The view never runs without a payment settled for its rule.
    """
    config = RouteConfig(price=price, **route)
    priced = None if methods is None else frozenset(m.upper() for m in methods)

    def refusal() -> Any:
        payment = request.environ.get(PAYMENT_KEY)
        refused = Gate.marker_refusal(payment, request.url_rule, request.method, priced)
        if refused is None:
            g.payment = payment
            return None
        status, reason, message = refused
        if status == 405 and priced is not None:
            served = (request.url_rule.methods if request.url_rule else None) or ()
            ok = priced | {"OPTIONS"} | ({"HEAD"} if "GET" in priced else set())
            abort(405, valid_methods=sorted(m for m in served if m in ok))
        response = jsonify(error=reason, message=message)
        response.status_code, response.headers["Cache-Control"] = status, "no-store"
        return response

    def mark(view: View) -> View:
        validate_marker(config, f"@paid on {getattr(view, '__qualname__', repr(view))}")
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                refused = refusal()
                return refused if refused is not None else await view(*args, **kwargs)
        else:

            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                refused = refusal()
                return refused if refused is not None else view(*args, **kwargs)

        wrapper.__fourmica_route__ = (config, priced)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

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
        app.before_request(_expose_payment)

    def check(self) -> None:
        """Check the prices against the app's routes (ConfigurationError: a route-table entry
        names no route, a ``@paid`` price or payTo is wrong). Call it once the routes are
        registered; the first request runs it otherwise, and answers 500 when it fails."""
        if not self._routed:
            raise ConfigurationError("FourmicaX402: call init_app(app) first")
        for middleware in self._routed:
            middleware.check()


def _expose_payment() -> None:
    g.payment = request.environ.get(PAYMENT_KEY)


class _Routed(PaymentMiddleware):
    """The WSGI middleware, pricing the rule Flask's router resolves (one Endpoint per rule)."""

    def __init__(self, app: Any, *, gate: Gate, flask_app: Flask) -> None:
        super().__init__(app, gate=gate)
        self._flask_app = flask_app
        self._endpoints: dict[int, Endpoint] = {}
        self._checked, self._error = False, ""
        self._lock = threading.RLock()  # check() runs under it too

    def endpoint(self, rule: Rule) -> Endpoint:
        found = self._endpoints.get(id(rule))  # the Endpoint keeps its rule (its id) alive
        if found is None:
            view = self._flask_app.view_functions.get(rule.endpoint)
            marker, priced = getattr(view, "__fourmica_route__", (None, None))
            methods = frozenset(rule.methods) if rule.methods else None
            made = Endpoint(rule, rule.rule, marker=marker, marker_methods=priced, methods=methods)
            found = self._endpoints.setdefault(id(rule), made)
        return found

    def check(self) -> None:
        with self._lock:
            if not self._checked:
                rules = list(self._flask_app.url_map.iter_rules())
                self.gate.check_routes((r.rule, frozenset(r.methods or ()) or None) for r in rules)
                for rule in rules:  # a marker's price on the app's network, its payTo
                    for method in rule.methods or ("GET",):
                        self.gate.routes.for_endpoint(method, self.endpoint(rule))
                self._checked = True

    def resolver(self, environ: dict[str, Any]) -> Callable[[], Endpoint | None]:
        app = self._flask_app

        def resolve() -> Endpoint | None:
            try:
                adapter = app.create_url_adapter(app.request_class(environ))
                rule, _ = adapter.match(return_rule=True)  # type: ignore[union-attr]
            except HTTPException:  # 404, 405, a redirect (strict slashes): Flask won't serve it
                return None
            return self.endpoint(rule)

        return resolve

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not (self._checked or self._error):  # at the latest now: views come after init_app
            with self._lock:
                try:
                    if not self._error:  # another request may have failed it meanwhile
                        self.check()
                except Exception as exc:
                    self._error = f"fourmica_x402: {exc}"
                    log.error("%s", self._error)
        if self._error:  # every request, until the seller fixes the prices
            error = Gate._error_response(500, "configuration_error", self._error)
            return answer(start_response, error)
        return super().__call__(environ, start_response)
