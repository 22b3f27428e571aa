"""The head of an answer (its status line and headers) bounded in time, as its body is.

httpx's read timeout bounds each read, and httpcore reads a head in as many reads as the seller
likes, skipping informational (1xx) answers: a head sent a byte at a time, or ``103`` answers
without end, held the buyer for ever. Every answer the buyer's own calls read (the 402, the tab
endpoint's and the Core's, a listing, a slice's payment) must have its head whole within the
request's read timeout, counted from when the request was sent (docs/buyer.md, "Challenges").

httpcore's ``trace`` extension says when the head starts to be read. On an event loop an
``asyncio.timeout`` then ends the call at the deadline. In a thread, the reads of the
connection are given no more time than is left: httpx's own transports get a network backend
(:func:`bound`) that shortens each read to the deadline of the call reading, a context
variable. (A kept-alive connection taken from the pool names no socket in its trace, so a
timer shutting the socket down cannot reach it.)
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import httpcore
import httpx

from .answers import late, read_timeout

__all__ = ["asend_head", "bound", "send_head"]

T = TypeVar("T")

#: The head clock of the call this thread or task is sending, read by :class:`_Stream`.
_clock: contextvars.ContextVar[_Clock | None] = contextvars.ContextVar(
    "fourmica_x402_head_clock", default=None
)


class _Clock:
    """A call's head deadline: set when httpcore starts to read a head (the read timeout of
    the request it reads, when it has one), cleared once the head is in."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous  # a trace callback the request carried already
        self.seconds: float | None = None
        self.ends: float | None = None
        self.scope: asyncio.Timeout | None = None

    def _event(self, event: str, info: dict[str, Any]) -> bool:
        """Set or clear the deadline on a head's events; whether it did."""
        request = info.get("request")
        if event.endswith(".receive_response_headers.started"):
            # a proxy's CONNECT is the tunnel's, not the answer's: its time is the connect's
            if getattr(request, "method", None) == b"CONNECT":
                return False
            self.seconds = read_timeout(getattr(request, "extensions", None))
            self.ends = None if self.seconds is None else time.monotonic() + self.seconds
            return True
        if ".receive_response_headers." in event:  # complete or failed: the head is in
            self.ends = None  # (a redirect's next hop gets a deadline of its own)
            return True
        return False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        self._event(event, info)
        if self.previous is not None:
            self.previous(event, info)

    async def atrace(self, event: str, info: dict[str, Any]) -> None:
        if self._event(event, info) and self.scope is not None and not self.scope.expired():
            left = None if self.ends is None else self.ends - time.monotonic()
            when = None if left is None else asyncio.get_running_loop().time() + left
            self.scope.reschedule(when)
        if self.previous is not None:
            await self.previous(event, info)

    def check(self) -> None:
        """Raise httpcore's ``ReadTimeout`` once the head's deadline has passed."""
        if self.ends is not None and time.monotonic() >= self.ends:
            raise httpcore.ReadTimeout(late(self.seconds or 0))

    def left(self, timeout: float | None) -> float | None:
        """The time a read may take: ``timeout``, or less when the head's deadline is nearer."""
        self.check()
        if self.ends is None:
            return timeout
        left = self.ends - time.monotonic()
        return left if timeout is None else min(timeout, left)


def send_head(send: Callable[[httpx.Request], T], request: httpx.Request) -> T:
    """``send(request)`` with the head of its answer bounded (through a transport that
    :func:`bound` reached): ``httpx.ReadTimeout`` past the deadline."""
    clock = _Clock(request.extensions.get("trace"))
    request.extensions["trace"] = clock.trace
    token = _clock.set(clock)
    try:
        return send(request)
    finally:
        _clock.reset(token)
        _restore(request, clock)


async def asend_head(send: Callable[[httpx.Request], Awaitable[T]], request: httpx.Request) -> T:
    """:func:`send_head` on an event loop, through any httpcore transport."""
    clock = _Clock(request.extensions.get("trace"))
    request.extensions["trace"] = clock.atrace
    try:
        async with asyncio.timeout(None) as clock.scope:
            return await send(request)
    except TimeoutError:
        if clock.scope is None or not clock.scope.expired():
            raise
        raise httpx.ReadTimeout(late(clock.seconds or 0), request=request) from None
    finally:
        _restore(request, clock)


def _restore(request: httpx.Request, clock: _Clock) -> None:
    if clock.previous is None:
        request.extensions.pop("trace", None)
    else:
        request.extensions["trace"] = clock.previous


def bound(target: object) -> None:
    """Give httpx's sync transports in ``target`` (an ``httpx.HTTPTransport``, or every
    transport of an ``httpx.Client``) the network backend that bounds heads. It changes nothing
    for a call that :func:`send_head` does not send. Other transports are left as they are."""
    if isinstance(target, httpx.Client):
        for transport in (target._transport, *target._mounts.values()):
            bound(transport)
        return
    pool = getattr(target, "_pool", None) if isinstance(target, httpx.HTTPTransport) else None
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _Backend):
        pool._network_backend = _Backend(backend)  # type: ignore[union-attr]


class _Backend(httpcore.NetworkBackend):
    """httpcore's network backend, its streams' reads bounded by the head clock."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        clock = _clock.get()
        if clock is None:
            return self._inner.read(max_bytes, timeout)
        try:
            return self._inner.read(max_bytes, clock.left(timeout))
        except httpcore.ReadTimeout:
            clock.check()  # the head's deadline it was: say so
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
