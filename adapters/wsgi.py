"""Pure WSGI payment middleware: Flask, Django (WSGI), or any WSGI app.

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    config = PaymentConfig(pay_to="0xYourAddress", routes={"GET /premium": "$0.01"})
    app = PaymentMiddleware(app, config=config)
    # in a handler: environ["fourmica_x402.payment"].payer, .amount, .guarantee_id

Bodies stream through, hashed on the way; ``start_response`` gets the result header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from http.client import responses
from typing import Any
from urllib.parse import quote

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import Endpoint, Gate, Granted, PassThrough, RequestView, Response, nested
from fourmica_x402.gate.guards import RESOLVED_KEY
from fourmica_x402.gate.lifecycle import BODY_LIMIT, PAYMENT_KEY, Meter, Startup
from fourmica_x402.gate.types import Headers, unshared
from fourmica_x402.templates import check_raw_paths

from ._chain import forwarded
from ._wsgi_body import WsgiBody

__all__ = ["PAYMENT_KEY", "PaymentMiddleware", "request_view"]

_CONTENT = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}


def request_view(
    environ: dict[str, Any], resolve: Callable[[], Endpoint | None] | None = None
) -> RequestView:
    """The neutral view of a WSGI request (PEP 3333); ``resolve``: the framework's router."""
    headers = [(k[5:].replace("_", "-").lower(), v) for k, v in environ.items() if k[:5] == "HTTP_"]
    headers += [(_CONTENT[k], v) for k, v in environ.items() if k in _CONTENT and v]
    # PATH_INFO holds latin-1 decoded bytes; routers decode UTF-8 and collapse leading slashes.
    info = environ.get("PATH_INFO", "").encode("latin-1")
    path = "/" + info.decode("utf-8", "replace").lstrip("/")
    raw = (environ.get("REQUEST_URI") or environ.get("RAW_URI") or "").partition("?")[0]
    script = quote(environ.get("SCRIPT_NAME", "").encode("latin-1"))
    raw = (raw[len(script) :] if script and raw.startswith(script) else raw) or quote(info)

    return RequestView(
        method=environ["REQUEST_METHOD"],
        path=path,
        raw_path=raw,
        root=script.rstrip("/"),
        query=environ.get("QUERY_STRING", ""),
        headers=Headers(headers),
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "localhost",
        client=environ.get("REMOTE_ADDR") or None,
        read_body=WsgiBody(environ, BODY_LIMIT),  # read for pricing: handed back to the app
        resolve=resolve,
    )


def answer(start_response: Callable[..., Any], response: Response) -> list[bytes]:
    status = f"{response.status} {responses.get(response.status, 'Unknown')}"
    headers = [h for h in response.headers if h[0].lower() != "content-length"]  # one: ours
    start_response(status, [*headers, ("content-length", str(len(response.body)))])
    return [response.body]


class PaymentMiddleware:
    """Charges for the routes of ``config``; everything else passes through."""

    def __init__(
        self,
        app: Any,
        config: PaymentConfig | None = None,
        *,
        gate: Gate | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        #: A ``ProxyFix`` inside (installed before this middleware): the environ the app sees.
        self._seen = forwarded(app)
        self.gate = gate or Gate(config or PaymentConfig(**options))
        self.startup = Startup()

    def check(self) -> None:
        """Start-up checks against the app's routes, for subclasses that have a router (Flask);
        run once, by the first request at the latest (a failure answers every request 500).
        Here, none: the raw paths are priced, where a key's ``?`` is a query (refused)."""
        check_raw_paths(self.gate.routes.routes)

    def resolver(self, environ: dict[str, Any]) -> Callable[[], Endpoint | None] | None:
        """The framework's router for this request, for subclasses that have one (Flask):
        it returns the endpoint the app will serve, or None. None here: the raw path is
        priced (docs/architecture.md, "Which route is priced")."""
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self.startup.run(self.check) is not None:
            return answer(start_response, self.startup.refusal)
        seen = environ if self._seen is None else self._seen(environ)  # host, scheme, client
        view = request_view(seen, self.resolver(seen))
        outer = nested.outer(environ.get(PAYMENT_KEY), view)  # an outer gate's: on our terms
        outcome = Gate.run_sync(self.gate.before(view, outer))
        for key in [k for k in (RESOLVED_KEY, "wsgi.input", "CONTENT_LENGTH") if k in seen]:
            environ[key] = seen[key]  # what the gate resolved, the body it read (``seen``: a copy)
        if isinstance(outcome, Response):
            return answer(start_response, outcome)
        environ[PAYMENT_KEY] = getattr(outcome, "payment", outer)  # paid, granted (docs/)
        if isinstance(outcome, Granted):  # a grant's answer stays private (docs/operations.md)
            granted = lambda status, headers, *exc: start_response(status, unshared(headers), *exc)  # noqa: E731
            return self.app(environ, granted)  # type: ignore[no-any-return]
        if isinstance(outcome, PassThrough):
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        meter = Meter(self.gate, outcome)

        def metered_start(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            first = meter.extra is None  # a later call (with exc_info) re-renders
            # an error page after a whole body: the server raises, a bridge to ASGI ignores it
            if meter.whole() and callable(start_response(status, headers, exc_info)):  # (no
                meter.out = 0  # write()); a layer outside took it: it held the body back
            started = Gate.run_sync(meter.start(int(status[:3]), headers))
            if not isinstance(started, Response):
                write = start_response(status, started, exc_info)
                return partial(_written, write, meter)
            if first:  # settle-after failed: its 402 goes out instead
                answer(start_response, started)
            if exc_info:  # our 402 is already out: PEP 3333 says re-raise
                raise exc_info[1].with_traceback(exc_info[2])
            return lambda data: None

        try:  # from here on, whatever fails is refunded (meter.finish)
            if "wsgi.input" in environ:  # the body hashed as the handler reads it (operations.md)
                length = str(environ.get("CONTENT_LENGTH") or "").strip(" \t")  # as Werkzeug
                size = int(length) if length.isascii() and length.isdigit() else None
                environ["wsgi.input"] = meter.input(environ["wsgi.input"], size)
            body = self.app(environ, metered_start)
        except BaseException as exc:  # after the whole body written: delivered (Meter.whole)
            Gate.run_sync(meter.finish(None if meter.whole() else exc))
            raise  # the server renders it (500), or closes a response already sent
        return meter.stream(body)


def _written(write: Callable[[bytes], Any], meter: Meter, data: bytes) -> None:
    """PEP 3333's ``write()``: the server took ``data`` once it returned (docs/protocol.md,
    "Delivery")."""
    write(meter.feed(data))
    meter.out = meter.sent
