"""What every adapter does around a request, written once (docs/architecture.md, "What an
adapter does"): :class:`Meter` (one paid response on its way out, the gate told once it ended
or did not), :class:`Startup` (start-up checks, fail closed), :class:`Marker` (a per-handler
price) and :class:`Endpoints` (the app's routes as the gate prices them, checked at start-up).
A framework's settings become PaymentConfig options with :func:`..config.config_options`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

from ..config import PaymentConfig
from ..core.store.deferred import commit_queued, serving, stopping
from ..evidence.request import BodyHasher
from ..routes import Endpoint, RouteConfig, RouteTable, validate_marker
from ..templates import converters_in, method_names, spans
from . import drive, guards
from .flow import Gate
from .startup import Startup as Startup  # the adapters take it from here
from .types import Call, Flow, Paid, Payment, Response, error_response, for_shared_caches

T = TypeVar("T")

#: Where adapters keep a request's :class:`~.types.Payment` (WSGI environ, ASGI scope).
PAYMENT_KEY = "fourmica_x402.payment"
#: The most of a request body the gate reads (its own endpoints, a price read from the body).
BODY_LIMIT = 64 * 1024
#: The gate's response headers that replace a handler's of the same name (not add to it).
OWN_HEADERS = frozenset(
    {"cache-control", "job-id", "job-stage", "payment-response", "x-payment-response"}
)
FRONT_SENT = frozenset({"x-sendfile", "x-accel-redirect", "x-lighttpd-send-file"})


class Meter:
    """One paid response on its way out: :meth:`start`, :meth:`feed` each chunk, :meth:`finish`.
    ``error``: one the framework caught making the response (Django: a 500, reported apart)."""

    def __init__(self, gate: Gate, state: Paid, error: BaseException | None = None) -> None:
        self.gate, self.state, self.tap, self.error = gate, state, gate.tap(), error
        #: The request body as the handler reads it (docs/operations.md, "Evidence…").
        self.body_in = BodyHasher()
        self.status: int | None = None
        #: The handler's headers as it sent them (kept with the body for idempotent replay).
        self.headers: list[tuple[str, str]] = []
        #: The gate's headers, once the response started ([] when it was replaced).
        self.extra: list[tuple[str, str]] | None = None
        #: What goes out instead of the handler's response (settle-after: the settle failed).
        self.replacement: Response | None = None
        self.finished = False  # the gate was told
        #: The body's bytes handed on, those the server took (a send that returned; a WSGI
        #: chunk whose next was asked for), and the ``Content-Length`` the handler declared.
        self.sent = self.out = 0
        self.length: int | None = None
        serving(1)  # an exit lets it end first (docs/operations.md)

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> Flow:
        """The response starts: the headers to send, or the :class:`Response` to send instead.
        The gate is asked (:meth:`Gate.response_start`) once, and again when a later call (WSGI's
        ``exc_info``) makes a 2xx not yet taken whole an error (refunded: our header says so,
        docs/protocol.md). A replaced response is over for the gate: told (:meth:`finish`) now."""
        if self.whole():  # delivered, whatever follows: an error page after it goes nowhere
            return list(headers)
        erred = 200 <= (self.status or 0) < 300 and not 200 <= status < 300
        self.status, self.headers = status, list(headers)
        declared = next((v for k, v in self.headers if k.lower() == "content-length"), "").strip()
        if any(k.lower() in FRONT_SENT for k, _ in self.headers):  # X-Sendfile: the front
            declared = ""  # server sends the body, not measured here (docs/protocol.md)
        self.length = int(declared) if declared.isascii() and declared.isdigit() else None
        if self.extra is None or (erred and self.replacement is None):
            cache = next((v for k, v in self.headers if k.lower() == "cache-control"), None)
            try:
                got = yield from self.gate.response_start(self.state, status, cache)
            except BaseException as exc:  # async Django cancelled it mid-settle: told once
                yield from self.finish(exc)
                raise
            self.replacement, self.extra = (got, []) if isinstance(got, Response) else (None, got)
            if self.replacement is not None:
                yield from self.finish()
        if self.replacement is not None:
            return self.replacement
        # ours replace the handler's: a relayed upstream Job-Id beside ours broke the job
        drop = {k for k, _ in self.extra} & OWN_HEADERS  # (docs/protocol.md, "Staged work")
        kept = (h for h in self.headers if h[0].lower() not in drop and not for_shared_caches(h[0]))
        return [*kept, *self.extra]

    def received(self, chunk: bytes, last: bool) -> None:
        """A chunk of the request body on its way to the handler (``last``: the body ends)."""
        self.body_in.feed(chunk, last)

    def input(self, stream: Any, length: int | None) -> HashedInput:
        """A WSGI ``wsgi.input`` that hashes what the handler reads of ``length`` bytes."""
        return HashedInput(stream, self.body_in, length)

    def feed(self, chunk: bytes) -> bytes:
        """A chunk of the body on its way out: hashed (kept for replay when asked); returned."""
        self.sent += len(chunk)
        return self.tap.feed(chunk)

    def whole(self) -> bool:
        """A 2xx body the server took whole (its ``Content-Length``): delivered, whatever next."""
        done = self.length is not None and 0 < self.length <= self.out and not self.replacement
        return done and 200 <= (self.status or 0) < 300

    def short(self) -> BaseException | None:
        """A 2xx body that ended short of its ``Content-Length`` (WSGI servers do not check)."""
        if self.length is None or self.sent >= self.length or not 200 <= (self.status or 0) < 300:
            return None
        return ConnectionError(f"the body ended after {self.sent} of its {self.length} bytes")

    def finish(self, error: BaseException | None = None) -> Flow:
        """The response ended, or failed with ``error``: the gate is told once (:meth:`Gate.finish`).

        Only a response of the handler's that started carries a status and a body hash.
        """
        if self.finished:
            return None
        self.finished, error, tap = True, error or self.error, self.tap
        try:  # its completion queued, an exit may go on (see __init__)
            if self.replacement is not None or self.status is None:
                yield from self.gate.finish(self.state, None, None, error)
            else:
                yield from self.gate.finish(
                    self.state,
                    self.status,
                    tap.digest,
                    error,
                    tap.body,
                    self.headers,
                    request_body=self.body_in.digest(),
                )
        finally:
            serving(-1)
        if stopping():  # committed before it returns, off the loop (docs/operations.md)
            yield Call(commit_queued)

    @overload
    def stream(self, chunks: AsyncIterable[bytes]) -> AsyncBody: ...
    @overload
    def stream(self, chunks: Iterable[bytes]) -> SyncBody: ...
    def stream(self, chunks: Any) -> SyncBody | AsyncBody:
        """``chunks`` (sync or async) metered as they are read, with ``close()``: a WSGI body,
        a Django or Starlette streaming response's content."""
        return AsyncBody(self, chunks) if hasattr(chunks, "__aiter__") else SyncBody(self, chunks)


class HashedInput:
    """``wsgi.input`` as the handler reads it, hashed; the body ends at EOF or ``length``."""

    def __init__(self, stream: Any, hasher: BodyHasher, length: int | None) -> None:
        self._stream, self._hasher, self._left = stream, hasher, length
        if length == 0:
            hasher.feed(b"", True)

    def _seen(self, data: bytes, asked: int | None) -> bytes:
        if self._left is not None:
            self._left -= len(data)
        ended = (self._left is not None and self._left <= 0) or (
            not data and (asked is None or asked != 0)
        )
        self._hasher.feed(data, ended)
        return data

    def read(self, size: int | None = -1) -> bytes:
        asked = None if size is None or size < 0 else size
        return self._seen(self._stream.read(*(() if asked is None else (asked,))), asked)

    def readinto(self, buffer: Any) -> int:  # werkzeug reads this way when it can
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        asked = None if size is None or size < 0 else size
        return self._seen(self._stream.readline(*(() if asked is None else (asked,))), asked)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:  # anything else the server's stream offers
        return getattr(self._stream, name)


class _Body:
    """A paid body streaming out: hashed as it passes, the gate told once it ends.

    "Ends" includes the server or the framework closing it before it was all read (the client
    left): a generator that never started would never run its cleanup, so this is a class.
    """

    _LEFT = "the client left before the response ended"

    def __init__(self, meter: Meter, chunks: Any) -> None:
        self._meter, self._source = meter, chunks

    def close(self) -> None:  # WSGI servers and Django call it once the response is done
        try:
            getattr(self._source, "close", lambda: None)()
        finally:
            if not self._meter.finished:
                left = None if self._meter.whole() else ConnectionAbortedError(self._LEFT)
                drive.run_sync(self._meter.finish(left))


class SyncBody(_Body):
    def __init__(self, meter: Meter, chunks: Iterable[bytes]) -> None:
        super().__init__(meter, chunks)
        self._chunks, self._replaced = iter(chunks), False

    def __iter__(self) -> SyncBody:
        return self

    def __next__(self) -> bytes:
        meter = self._meter
        meter.out = meter.sent  # asked for the next chunk: the server wrote the last one
        if meter.replacement is None and not meter.finished:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                drive.run_sync(meter.finish(meter.short()))
                raise
            except BaseException as exc:  # after the whole body: delivered (Meter.whole)
                drive.run_sync(meter.finish(None if meter.whole() else exc))
                raise
            if meter.replacement is None:
                return meter.feed(chunk)
        # A WSGI app may start its response lazily, in its first chunk: when its settle failed,
        # the 402's body goes out instead of the app's.
        if meter.replacement is None or self._replaced:
            raise StopIteration
        self._replaced = True
        return meter.replacement.body


class AsyncBody(_Body):
    def __init__(self, meter: Meter, chunks: AsyncIterable[bytes]) -> None:
        super().__init__(meter, chunks)
        self._chunks = aiter(chunks)

    def __aiter__(self) -> AsyncBody:
        return self

    async def __anext__(self) -> bytes:
        self._meter.out = self._meter.sent  # as in SyncBody
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            await drive.run_async(self._meter.finish(self._meter.short()))
            raise
        except BaseException as exc:
            await drive.run_async(self._meter.finish(None if self._meter.whole() else exc))
            raise
        return self._meter.feed(chunk)


_MARK = "__fourmica_marker__"


class Marker:
    """A per-handler price: ``@paid`` (Flask, Django), ``Paid(...)`` (FastAPI).

    It prices its endpoint for every method it serves, or only ``methods`` (HEAD counts as
    GET), and refuses to run its handler without a payment settled for that endpoint
    (docs/architecture.md, "Which route is priced").
    """

    def __init__(self, price: Any, methods: Iterable[str] | None, route: dict[str, Any]) -> None:
        self.config = RouteConfig(price=price, **route)
        self.methods = None if methods is None else method_names(methods)

    @staticmethod
    def of(handler: Any) -> Marker | None:
        """The marker on ``handler`` (a view, a class, a dependency), if any."""
        found = getattr(handler, _MARK, None)
        return found if isinstance(found, Marker) else None

    def validate(self, where: str) -> Marker:
        """A bad static price or payTo fails here, where the handler is defined."""
        validate_marker(self.config, where)
        return self

    def attach(self, handler: T) -> T:
        """Mark ``handler``: one price per handler (a second, other one fails here)."""
        own = getattr(handler, "__dict__", {}).get(_MARK)  # a subclass may set its own
        guards.one_marker([own, self], repr(handler))
        setattr(handler, _MARK, self)  # functools.wraps copies it
        return handler

    def prices(self, method: str) -> bool:
        method = method.upper()
        return self.methods is None or ("GET" if method == "HEAD" else method) in self.methods

    def allow(self, served: Iterable[str] | None = None) -> list[str]:
        """``Allow`` for a method it refuses: those of ``served`` it prices, and OPTIONS
        (``served`` None: the methods it prices, HEAD with GET)."""
        if served is None:
            served = sorted((self.methods or frozenset()) | {"HEAD"})
        return [m for m in served if m == "OPTIONS" or self.prices(m)]

    def refusal(
        self, payment: Payment | None, key: Any, method: str, served: Iterable[str] | None = None
    ) -> Response | None:
        """What to answer instead of running the handler, or None: ``payment`` was settled for
        this request on this endpoint (``key``). OPTIONS (which the gate never prices): 200
        with ``Allow``. A method it does not price: 405 with ``Allow``; no payment for it: 503
        ``payment_not_enforced`` (see :meth:`Gate.marker_refusal`)."""
        if method.upper() == "OPTIONS":  # never priced: answered here, the handler never runs
            allowed = self.allow(served)
            allowed += [] if "OPTIONS" in allowed else ["OPTIONS"]
            return Response(200, [("allow", ", ".join(allowed)), ("content-length", "0")])
        why = Gate.marker_refusal(payment, key, method, self.methods)
        if why is None:
            return None
        status, reason, message = why
        allow = [("allow", ", ".join(self.allow(served)))] if status == 405 else []
        return error_response(status, reason, message, allow)

    @staticmethod
    def guard(handler: T, refusal: Callable[..., Any], is_async: bool | None = None) -> T:
        """``handler`` (sync or async) that first asks ``refusal(*args, **kwargs)``: what it
        returns, when not None, is answered instead."""
        view: Any = handler
        if inspect.iscoroutinefunction(view) if is_async is None else is_async:

            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                refused = refusal(*args, **kwargs)
                return refused if refused is not None else await view(*args, **kwargs)

            return guards.remember(view, functools.wraps(view)(guarded_async))  # type: ignore[return-value]

        def guarded(*args: Any, **kwargs: Any) -> Any:
            refused = refusal(*args, **kwargs)
            return refused if refused is not None else view(*args, **kwargs)

        return guards.remember(view, functools.wraps(view)(guarded))  # type: ignore[return-value]


#: What an adapter says of one of its routes: the marker on its handler, the methods it serves.
Describe = Callable[[Any], tuple[Marker | None, Iterable[str] | None]]


class Endpoints:
    """The app's endpoints, one per route: made when first seen, then kept for the app's
    lifetime (the gate caches what it priced on each).

    ``describe(route)``: the marker on the route's handler, if any, and the methods the
    route serves (None or empty: any). ``websocket(route)``: whether it is a WebSocket route.
    ``converter(name)``: the framework's path converter of that name (None: unknown); one
    that matches ``/`` makes its parameter span path segments, like ``path`` (see
    :func:`spans`; docs/architecture.md, "Which route is priced")."""

    def __init__(
        self,
        describe: Describe,
        websocket: Callable[[Any], bool] = lambda route: False,
        converter: Callable[[str], Any] = lambda name: None,
    ) -> None:
        self._describe, self._websocket, self._converter = describe, websocket, converter
        self._found: dict[tuple[int, str], Endpoint] = {}

    def __call__(self, route: Any, template: str, source: Any = None) -> Endpoint:
        """The endpoint of ``route`` (the framework's object), written ``template``;
        ``source``: what describes it when not the route itself (FastAPI's included routes)."""
        key = (id(route), template)  # the Endpoint holds its route: the id stays the route's
        found = self._found.get(key)
        if found is None:  # two first sights at once: setdefault keeps one
            marker, methods = self._describe(route if source is None else source)
            named = converters_in(template) - {"path"}
            made = Endpoint(
                route,
                template,
                marker=marker.config if marker else None,
                marker_methods=marker.methods if marker else None,
                methods=frozenset(methods) if methods else None,
                websocket=self._websocket(route),
                spanning=frozenset(c for c in named if spans(self._converter(c.partition("(")[0]))),
            )
            found = self._found.setdefault(key, made)
        return found

    def price(self, table: RouteTable, routes: Iterable[tuple[Any, ...]]) -> list[Endpoint]:
        """The endpoint of every ``(route, template[, source])`` of the app, each marker priced
        now on ``table``: a price or payTo these settings make invalid is a ConfigurationError."""
        found = [self(*each) for each in routes]
        for each in found:
            table.prepare(each)
        return found

    def unmatched(self, config: PaymentConfig, routes: Iterable[tuple[Any, ...]]) -> list[str]:
        """The route-table entries of ``config`` naming no route of the app, every marker
        priced with its defaults first (ConfigurationError): :meth:`check` with no gate built,
        for a framework's own checks."""
        table = RouteTable(
            config.routes, network=config.network, pay_to=config.pay_to, asset=config.asset
        )
        return table.unmatched(self.price(table, routes))

    def check(
        self, gate: Gate, routes: Iterable[tuple[Any, ...]], served_by: Any = None
    ) -> list[Endpoint]:
        """:meth:`price` on the gate's table, which must name routes of the app (an entry naming
        none fails at start-up, never leaves a route free); the gate keeps them for discovery
        (docs/protocol.md). ``served_by``: as in :func:`.guards.partly_priced`."""
        found = self.price(gate.routes, routes)
        gate.check_routes(found, served_by)
        gate.endpoints = found
        return found
