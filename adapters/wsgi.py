"""Pure WSGI payment middleware: Flask, Django (WSGI), or any WSGI app.

    from fourmica_x402 import PaymentConfig
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    config = PaymentConfig(pay_to="0xYourAddress", routes={"GET /premium": "$0.01"})
    app = PaymentMiddleware(app, config=config)
    # in a handler: environ["fourmica_x402.payment"].payer, .amount, .guarantee_id

Bodies stream through, hashed on the way; ``start_response`` gets the result header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http.client import responses
from typing import Any
from urllib.parse import quote

from fourmica_x402.config import PaymentConfig
from fourmica_x402.gate import PASS, Endpoint, Gate, RequestView, Response

__all__ = ["PAYMENT_KEY", "PaymentMiddleware", "request_view"]

PAYMENT_KEY = "fourmica_x402.payment"
_BODY_LIMIT = 64 * 1024
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

    def read_body() -> bytes:
        length = str(environ.get("CONTENT_LENGTH") or "")
        size = int(length) if length.isdigit() else 0
        return environ["wsgi.input"].read(size) if 0 < size <= _BODY_LIMIT else b""

    return RequestView(
        method=environ["REQUEST_METHOD"],
        path=path,
        raw_path=raw,
        query=environ.get("QUERY_STRING", ""),
        headers=tuple(headers),
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "localhost",
        client=environ.get("REMOTE_ADDR") or None,
        read_body=read_body,
        resolve=resolve,
    )


def answer(start_response: Callable[..., Any], response: Response) -> list[bytes]:
    status = f"{response.status} {responses.get(response.status, 'Unknown')}"
    start_response(status, [*response.headers, ("content-length", str(len(response.body)))])
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
        self.gate = gate or Gate(config or PaymentConfig(**options))

    def resolver(self, environ: dict[str, Any]) -> Callable[[], Endpoint | None] | None:
        """The framework's router for this request, for subclasses that have one (Flask):
        it returns the endpoint the app will serve, or None. None here: the raw path is
        priced (docs/architecture.md, "Which route is priced")."""
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        view = request_view(environ, self.resolver(environ))
        outcome = Gate.run_sync(self.gate.before(view))
        if outcome is PASS:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        if isinstance(outcome, Response):
            return answer(start_response, outcome)
        environ[PAYMENT_KEY] = outcome.payment
        return _Metered(self.gate, outcome, start_response, self.app, environ)


class _Metered:
    """The app's response on its way out: headers added, body hashed, the gate told once."""

    def __init__(self, gate: Gate, state: Any, start_response: Any, app: Any, environ: Any) -> None:
        self.gate, self.state, self._start = gate, state, start_response
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.extra: list[tuple[str, str]] | None = None  # set once the gate saw the status
        self.replacement: Response | None = None
        self.tap, self.finished = gate.tap(), False  # hashes the body, keeps it for replay
        try:
            self.body: Iterable[bytes] = app(environ, self.start_response)
        except BaseException as exc:
            self.finish(exc)
            raise  # the server renders it (500)

    def start_response(self, status: str, headers: list[Any], exc_info: Any = None) -> Any:
        if self.extra is None:  # the first call decides; a later one (with exc_info) re-renders
            cache = next((v for k, v in headers if k.lower() == "cache-control"), None)
            got = Gate.run_sync(self.gate.response_start(self.state, int(status[:3]), cache))
            self.replacement, self.extra = (got, []) if isinstance(got, Response) else (None, got)
            if self.replacement:  # settle-after failed: its 402 goes out instead
                answer(self._start, self.replacement)
        if self.replacement is not None:
            if exc_info:  # our 402 is already out: PEP 3333 says re-raise
                raise exc_info[1].with_traceback(exc_info[2])
            return lambda data: None
        if any(k == "cache-control" for k, _ in self.extra):  # ours replaces the app's
            headers = [(k, v) for k, v in headers if k.lower() != "cache-control"]
        self._send = self._start(status, [*headers, *self.extra], exc_info)
        self.status, self.headers = int(status[:3]), list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        self.tap.feed(data)
        self._send(data)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.body:
                if self.replacement is not None:
                    break  # settle-after failed once the app started its response lazily
                self.tap.feed(chunk)
                yield chunk
        except Exception as exc:
            self.finish(exc)
            raise
        if self.replacement is not None:
            yield self.replacement.body
        self.finish(None)

    def close(self) -> None:
        try:
            getattr(self.body, "close", lambda: None)()
        finally:  # closed before the body was exhausted: the buyer did not get it all
            self.finish(None if self.finished else ConnectionAbortedError("response not sent"))

    def finish(self, error: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        tap = self.tap
        Gate.run_sync(
            self.gate.finish(self.state, self.status, tap.digest, error, tap.body, self.headers)
        )
