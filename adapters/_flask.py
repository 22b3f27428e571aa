"""The Flask extension's WSGI middleware: the rule Flask's router resolves is the one priced,
and the one it dispatches must be it (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException

from fourmica_x402.gate import Endpoint, Gate
from fourmica_x402.gate.guards import RESOLVED_KEY, check_routed, rerouted
from fourmica_x402.gate.lifecycle import Endpoints, Marker

from .wsgi import PAYMENT_KEY, PaymentMiddleware

__all__ = ["Routed"]

_APPS: weakref.WeakSet[Flask] = weakref.WeakSet()  # the process's apps with the extension


def _served(rule: Any) -> set[str]:  # Flask answers an OPTIONS it added by itself
    auto = getattr(rule, "provide_automatic_options", False)  # not on rules added by hand
    return set(rule.methods or ()) - ({"OPTIONS"} if auto else set())


class Routed(PaymentMiddleware):
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
            environ[RESOLVED_KEY] = (None, environ.get("REQUEST_METHOD", "GET").upper())
            try:
                adapter = app.create_url_adapter(app.request_class(environ))
                rule, _ = adapter.match(return_rule=True)  # type: ignore[union-attr]
            except HTTPException:  # 404, 405, a redirect (strict slashes): Flask won't serve it
                return None
            endpoint = self._endpoint(rule, rule.rule)
            environ[RESOLVED_KEY] = (endpoint, environ[RESOLVED_KEY][1])
            return endpoint

        return resolve

    def before_view(self) -> Any:  # the rule Flask dispatches: the one the gate priced?
        g.payment, rule = request.environ.get(PAYMENT_KEY), request.url_rule
        endpoint = None if rule is None else self._endpoint(rule, rule.rule)
        seen = request.environ.get(RESOLVED_KEY)
        refused = rerouted(self.gate.routes, endpoint, request.method, g.payment, seen)
        if refused is not None:
            return current_app.response_class(refused.body, refused.status, refused.headers)
        return None
