"""One paid ASGI request: the app's ``send`` and ``receive`` metered for the gate.

The gate is told the response's outcome once, when the app returned or raised
(docs/architecture.md, "A paid request"):

- a response whose last body message went out is delivered (or, for a route whose price
  judges its answers, whatever the judge says): what the app does afterwards — a background
  task, a dependency's cleanup — cannot undo a delivery, even if it raises;
- a response the server reported the client gone from (``http.disconnect``) before its end
  was not received whole: the payment is voided. Servers on ASGI 2.3 report it only this way
  (a ``send`` after the client left does nothing, and Starlette's streaming response stops).
  An app that never reads ``receive`` after the request body (a handler computing its whole
  answer) is not told, so the exchange listens itself once the body is read (or at once,
  for a request without one) and hands the app what it heard;
- an app that returns without its last body message (or without any response) did not
  deliver: the client gets a cut body or the server's 500, so the payment is voided. The
  file-sending extensions end a response too: ``http.response.pathsend``, and a
  ``http.response.zerocopysend`` without ``more_body``;
- otherwise, an exception voids it, and a 2xx is delivered; the Starlette app's own
  ``500`` (or ``Exception``) handler answers an exception here first.

The gate is told after the app, never inside a ``send``: a streaming response's task may be
cancelled as soon as its last message went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
from typing import Any

from fourmica_x402.gate import PASS, Gate, Granted, PassThrough, Response, nested
from fourmica_x402.gate.lifecycle import BODY_LIMIT, Meter
from fourmica_x402.gate.types import unshared

from ._body import BufferedBody, Judge
from ._chain import copying_layer

__all__ = ["Delegated", "PaidExchange", "app_below", "send_response", "warn_copying_layers"]

_LEFT = "the client left before the response ended"
_UNFINISHED = "the app returned before its response ended"
_WARNED: set[int] = set()  # the dispatches already warned about (by id)
#: ASGI extensions that send a file's bytes for the app (Starlette's FileResponse uses them).
_FILE_SENDS = ("http.response.pathsend", "http.response.zerocopysend")
#: Seconds an app runs, its request body read, before the exchange listens for the client
#: leaving itself (docs/protocol.md, "Delivery").
LISTEN_AFTER = 0.5


async def send_response(send: Any, response: Response) -> None:
    own = [h for h in response.headers if h[0].lower() != "content-length"]  # one: ours
    headers = [*_encode(own), (b"content-length", str(len(response.body)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


def unshared_send(send: Any, outcome: Any) -> Any:
    """``send`` for a free answer: a granted one's headers marked as a paid answer's are
    (:func:`unshared`), any other's (:data:`PASS`) as they are."""
    if not isinstance(outcome, Granted):
        return send

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = _encode(unshared(_decode(list(message.get("headers", ())))))
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _ends(message: dict[str, Any]) -> bool:
    return message["type"] == "http.response.pathsend" or not message.get("more_body", False)


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _decode(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


class PaidExchange:
    """``await PaidExchange(gate, paid, receive, send).run(app, scope)``."""

    __slots__ = (
        "_complete",
        "_due",
        "_ending",
        "_heard",
        "_left",
        "_listener",
        "_paid",
        "_read",
        "_receive",
        "_receiving",
        "_send",
        "_timer",
        "judge",
        "meter",
    )

    def __init__(self, gate: Gate, paid: Any, receive: Any, send: Any) -> None:
        self.meter = Meter(gate, paid)
        self.judge = Judge.of(paid.route, paid.request)  # None but for a route judging answers
        self._paid = paid
        self._receive, self._send = receive, send
        self._ending = False  # the last body message is on its way: a disconnect now is late
        self._complete = self._left = False
        #: Once the body is read, the exchange listens for the client leaving: what it heard,
        #: in order, for the app's own later ``receive`` calls.
        self._listener: asyncio.Task[None] | None = None
        self._heard: asyncio.Queue[dict[str, Any]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read = False  # the request body was read whole
        self._receiving = False  # the app waits on the server's receive: none beside it
        self._due = False  # the listener is due once the app's receive returns

    async def run(self, app: Any, scope: Any) -> None:
        self._listen()  # a body the app leaves unread is heard too (a FastAPI POST without one)
        outer = scope.get("app")  # the Starlette app whose error handler may answer
        try:  # a WSGI app it mounts through a bridge finds the payment here (gate/nested.py)
            with nested.settled(self._paid.payment, self._paid.request):
                await app(scope, self.receive, self.send)
        except BaseException as exc:  # told with it (and it goes on), unless already delivered
            answered = False
            if isinstance(exc, Exception) and self.meter.status is None:
                answered = await self._error_answer(outer, scope, exc)
                if not answered and not getattr(outer, "debug", False):
                    await self._server_error()
            self._stop_listening()
            await self._close()  # delivered only if that goes out
            await self._ended()
            out = self._complete and not self._left
            await self._done(None if out else exc)
            if not answered:
                raise
            return
        self._stop_listening()
        await self._close()
        await self._ended()
        error: BaseException | None = None
        if self._left:  # before the last body message went out: not received whole
            error = ConnectionAbortedError(_LEFT)
        elif not self._complete and self.meter.replacement is None and not self.meter.whole():
            error = RuntimeError(_UNFINISHED)  # the server answers the rest (a 500, a cut body)
        await self._done(error)

    async def _close(self) -> None:
        """Every declared byte went out, but not the closing message: the app failed or
        returned first. End the response here, so that a layer outside (GZip) closes its
        framing too (docs/protocol.md, "Delivery")."""
        if not self._complete and self.meter.whole() and not self._left:
            with contextlib.suppress(Exception):
                await self._last({"type": "http.response.body", "body": b"", "more_body": False})

    async def _server_error(self) -> None:
        """The server's plain 500 for an error no handler answered, sent here so that it
        carries the payment's result header (refunded); the error still goes on, to the
        server's log and any monitor outside (a debug page is left to the app)."""
        body = b"Internal Server Error"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({"type": "http.response.start", "status": 500, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def _error_answer(self, outer: Any, scope: Any, exc: Exception) -> bool:
        """Starlette answers an error with its app's 500 (or ``Exception``) handler outside
        every middleware: the gate would see the error and refund, the client the handler's
        200. That handler answers here instead, through the meter (docs/architecture.md,
        "A paid request"), and the error is logged here rather than passed on (the outer
        layer would call the handler again). Whether it answered."""
        handlers = getattr(outer, "exception_handlers", None)
        if not isinstance(handlers, dict) or getattr(outer, "debug", True):
            return False
        handler = next((h for k, h in reversed(handlers.items()) if k in (500, Exception)), None)
        if handler is None:
            return False
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        log, request = logging.getLogger("fourmica_x402.gate"), Request(scope)
        log.error("the app raised; its error handler answers", exc_info=exc)
        try:
            callers = (handler, type(handler).__call__)  # a function; an object's method
            if any(inspect.iscoroutinefunction(c) for c in callers):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        except Exception:  # its own failure: answered as Starlette would, never called twice
            log.exception("the app's error handler failed")
            response = PlainTextResponse("Internal Server Error", status_code=500)
        try:  # the meter knows what went out (a client gone meanwhile, a cut body)
            await response(scope, self.receive, self.send)
        except Exception:  # e.g. its background task: logged, as the server would
            log.exception("the app's error handler's answer failed")
        return True

    async def _done(self, error: BaseException | None) -> None:
        meter = self.meter
        if error is None and self.judge is not None and meter.replacement is None:
            error = self.judge.verdict(meter.status, meter.headers)  # e.g. a JSON-RPC error
        await Gate.run_async(meter.finish(error))

    async def send(self, message: dict[str, Any]) -> None:
        meter = self.meter
        if message["type"] == "http.response.start":
            started = await Gate.run_async(
                meter.start(message["status"], _decode(message.get("headers", [])))
            )
            if isinstance(started, Response):  # settle-after failed: answer 402 instead
                return await send_response(self._send, started)
            message = {**message, "headers": _encode(started)}
        elif meter.replacement is not None:  # the 402 went out instead: the rest is the app's
            return None  # (a file it would have the server send, trailers: docs/operations.md)
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            meter.feed(chunk)
            if self.judge is not None:
                self.judge.feed(chunk)
            if not message.get("more_body", False):
                return await self._last(message)
            await self._send(message)
            meter.out = meter.sent  # the server took it (see Meter.whole)
            return None
        elif message["type"] in _FILE_SENDS and _ends(message):
            return await self._last(message)  # a file the server sends for the app: its end
        await self._send(message)
        return None

    async def _last(self, message: dict[str, Any]) -> None:
        short = self.meter.short() if message["type"] == "http.response.body" else None
        if short is not None:  # a 2xx short of its Content-Length: never framed as complete
            raise short  # (the server would refuse it; a layer outside, GZip, would not)
        self._ending = True
        await self._send(message)
        self._complete, self.meter.out = True, self.meter.sent  # the whole response went out

    async def receive(self) -> dict[str, Any]:
        heard, listener = self._heard, self._listener
        if heard is not None and listener is not None:  # the exchange listens: what it heard
            stopped = heard.empty() and listener.done()
            ended = stopped and not listener.cancelled() and listener.exception() is None
            if ended and not self._read:  # at its limit (see _hear): the body's next part
                self._listener = None
                self._start()
                return await self.receive()
            if stopped:  # it stopped (see _hear): ask the server
                return self._note(await self._receive())
            message = await heard.get()
            if message["type"] == "http.disconnect":
                heard.put_nowait(message)  # said again to any later call
            return message
        self._receiving = True
        try:
            message = self._note(await self._receive())
        finally:
            self._receiving = False
            if self._due:  # it came due while the app read (or waited, and gave up)
                self._due = False
                self._start()  # runs once this returns: after ``_read`` is set
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._read = True  # from now on only a disconnect can come
        return message

    def _note(self, message: dict[str, Any]) -> dict[str, Any]:
        kind = message["type"]
        if kind == "http.request":  # hashed as read (docs/operations.md)
            self.meter.received(message.get("body", b""), not message.get("more_body", False))
        elif kind == "http.disconnect" and not self._ending and not self.meter.whole():
            self._left = True  # (the whole body out: the client may close before the end)
        return message

    def _listen(self) -> None:
        """Listen once the app has run :data:`LISTEN_AFTER` seconds (a quick answer costs no
        listener; a disconnect before then is still heard: servers keep saying it). A body
        the app has not read by then is read ahead for it (kept for its own ``receive``),
        ``BODY_LIMIT`` bytes at a time (docs/protocol.md, "Delivery")."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LISTEN_AFTER, self._start)

    def _start(self) -> None:
        if self._receiving:  # never a second receive beside the app's: after it (``receive``)
            self._due = True
        elif self._listener is None:
            self._heard = asyncio.Queue()
            self._listener = asyncio.ensure_future(self._hear())

    async def _hear(self) -> None:
        assert self._heard is not None
        kept = 0
        while True:
            message = self._note(await self._receive())
            self._heard.put_nowait(message)
            if message["type"] != "http.request" or self._read:
                return  # the client left; or a server saying the body again: nothing to hear
            self._read = not message.get("more_body", False)
            kept += len(message.get("body", b""))
            if kept > BODY_LIMIT and not self._read:
                return  # a large body the app has not read: the rest once it reads this part

    async def _ended(self) -> None:
        """A price that wants to know (a paid MCP call's) is told its request ended before its
        answer went out: the app may still answer it later."""
        if (self._complete or self.meter.whole()) and not self._left:
            return
        price = getattr(getattr(self._paid.route, "config", None), "price", None)
        told = getattr(price, "unanswered", None)
        if told is not None:
            try:
                await told(self._paid.request)
            except Exception:
                logging.getLogger("fourmica_x402.gate").exception("unanswered() failed")

    def _stop_listening(self) -> None:  # the exchange is over: its pending receive too
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None:
            self._listener.cancel()


def warn_copying_layers(app: Any) -> None:
    """Warn once of a Starlette ``BaseHTTPMiddleware`` below the payment middleware (in the
    app's stack, or in an app its router mounts: a ``Mount``'s or a ``Host``'s): it passes
    on ``call_next``'s copy of each response, which ends a stream the app failed in as if it
    were complete, so such a paid stream is charged (docs/protocol.md, "Delivery"). And of
    a layer there that redirects or refuses requests itself (HTTPS, ``www.``, a bad Host)."""
    base = getattr(sys.modules.get("starlette.middleware.base"), "BaseHTTPMiddleware", None)
    found = None if base is None else copying_layer(app, base)
    if found is not None:
        kind, dispatch = found
        logging.getLogger("fourmica_x402.gate").warning(
            "%s (a Starlette BaseHTTPMiddleware) runs below the payment middleware: a paid "
            "stream that fails midway reaches the gate as if it were complete and is "
            "charged; write it as a pure ASGI middleware, or add it after the payment "
            "middleware if it does not change responses",
            getattr(dispatch, "__name__", "?") if kind is base else kind.__name__,
        )
    _warn_answering_layers(app)


#: Starlette layers that answer a request themselves (a redirect to HTTPS or ``www.``, a 400
#: for a bad Host): below the gate they do so after the payment (docs/protocol.md).
_ANSWERING = (
    ("starlette.middleware.httpsredirect", "HTTPSRedirectMiddleware"),
    ("starlette.middleware.trustedhost", "TrustedHostMiddleware"),
)


def _warn_answering_layers(app: Any) -> None:
    for module, name in _ANSWERING:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and copying_layer(app, kind) is not None:
            logging.getLogger("fourmica_x402.gate").warning(
                "%s runs below the payment middleware: a request it redirects or refuses is "
                "challenged and paid for first (then refunded: the new URL asks to be paid again); "
                "add it outside the payment middleware",
                name,
            )


def app_below(app: Any, dispatch: Any) -> Any:
    """The ASGI app below the Starlette ``BaseHTTPMiddleware`` running ``dispatch`` in ``app``'s
    middleware stack (each layer's ``.app``), or None when it cannot be found."""
    node = getattr(app, "middleware_stack", None)
    for _ in range(100):  # bounded: a stack is a few layers deep
        if node is None or getattr(node, "dispatch_func", None) is dispatch:
            return None if node is None else getattr(node, "app", None)
        node = getattr(node, "app", None)
    return None


async def replayed(request: Any, body: Any) -> None:
    """The body the gate read (``body``), for ``call_next`` below a dispatch that could not run
    the app itself: Starlette hands on a body its dispatch read with ``request.body()``; one
    read from ``receive`` is gone, and the app would wait for it until the client left."""
    if isinstance(body, BufferedBody) and body.read:
        request._body = await body.peek() or b""


class Delegated:
    """A dispatch's answer that runs the app below it itself, with the real ``send`` and the
    body the gate read (``call_next`` would give neither): for a paid request, as one paid
    exchange, so that how the stream ends is seen, not ``call_next``'s copy (which ends a
    stream the app raised in, or the client left, as if it were complete)."""

    def __init__(self, gate: Gate, paid: Any, app: Any, replay: Any = None, free: Any = PASS):
        self.gate, self.paid, self.app, self.replay, self.free = gate, paid, app, replay, free

    @classmethod
    def below(
        cls, stack: Any, dispatch: Any, gate: Gate, paid: Any, body: Any, outer: bool = False
    ) -> Any:
        """One for the app below ``dispatch`` in ``stack`` (None when it cannot be found, or
        for a free request whose body the gate did not read: ``call_next`` serves those; not
        one an ``outer`` gate settled, which must see how its stream ends)."""
        replay = body.receive if isinstance(body, BufferedBody) and body.read else None
        found = app_below(stack, dispatch)
        free = paid if isinstance(paid, PassThrough) else None  # PASS, or a grant (private)
        if found is None and free is None and id(dispatch) not in _WARNED:
            _WARNED.add(id(dispatch))
            logging.getLogger("fourmica_x402.gate").warning(
                "the payment middleware is not registered as the app's own http middleware "
                "(wrapped in another function?): it sees call_next's copy of each paid "
                "response, which ends a stream the app failed in as if it were complete "
                '(docs/architecture.md, "FastAPI\'s http middleware")'
            )
        if found is None or (free is not None and replay is None and not outer):
            return None
        return cls(gate, None if free is not None else paid, found, replay, free)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        receive = self.replay or receive
        if self.paid is None:
            return await self.app(scope, receive, unshared_send(send, self.free))  # type: ignore[no-any-return]
        await PaidExchange(self.gate, self.paid, receive, send).run(self.app, scope)
        return None
