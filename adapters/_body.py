"""A request body the gate reads before the app, replayed to the app; a paid answer judged.

The gate reads a request body only for its own endpoints and for a route whose pricing needs
it (a paid MCP tool: docs/mcp.md; a price or ``units`` read from the body: docs/protocol.md).
:class:`BufferedBody` reads at most ``limit`` bytes of it and keeps the messages it read, so
that the app still receives the whole body (:meth:`BufferedBody.receive`). :class:`Judge`
keeps a paid answer (bounded) for a route whose price says whether it was delivered
(``judge_response``, e.g. a JSON-RPC error in a 200). WSGI's twin: ``_wsgi_body.WsgiBody``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fourmica_x402.gate.lifecycle import BODY_LIMIT
from fourmica_x402.gate.types import BodyTooLarge, Undelivered

__all__ = ["BufferedBody", "Judge", "Undelivered"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
#: The most of a paid answer kept to judge it (a longer one is judged by its status alone).
JUDGE_LIMIT = 1024 * 1024


class BufferedBody:
    """The request body, read on demand up to ``limit`` bytes, then replayed to the app."""

    # __weakref__, ``ended`` and ``on_end``: paid MCP tools track the request ids in flight
    # by their body
    __slots__ = (
        "__weakref__",
        "_answered",
        "_done",
        "_ends",
        "_limit",
        "_messages",
        "_receive",
        "_replayed",
        "_size",
        "ended",
        "too_large",
    )

    def __init__(self, receive: Receive, limit: int = BODY_LIMIT) -> None:
        self._receive, self._limit = receive, limit
        #: Set by the adapter once the app is done with the request (:meth:`end`).
        self.ended = False
        self._answered = False
        self._ends: list[Callable[[bool], Any]] = []
        self._messages: list[dict[str, Any]] = []
        self._size, self._done, self._replayed = 0, False, 0
        self.too_large = False  # pricing asked for it, and it was longer than the limit

    def watch(self, send: Any) -> Any:
        """``send``, noting whether the response to this request went out to its end."""

        async def sending(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.pathsend" or (
                message["type"] == "http.response.body" and not message.get("more_body", False)
            ):
                self._answered = True

        return sending

    def on_end(self, callback: Callable[[bool], Any]) -> None:
        """Call ``callback(answered)`` when the app is done with the request: ``answered``
        says whether its response went out to its end (an app that returned early, a client
        that left: it may still be answered later, elsewhere)."""
        self._ends.append(callback)

    def end(self) -> None:
        """The app is done with the request."""
        self.ended = True
        for callback in self._ends:
            callback(self._answered)

    @property
    def read(self) -> bool:
        """Whether the gate read any of it (the app must then be given :meth:`receive`)."""
        return bool(self._messages)

    async def peek(self) -> bytes | None:
        """The whole body, or None when it is longer than the limit (the rest is left unread)."""
        while not self._done and self._size <= self._limit:
            message = await self._receive()
            self._messages.append(message)
            if message.get("type") != "http.request":  # the client left: what came is all
                self._done = True
                break
            self._size += len(message.get("body", b""))
            self._done = not message.get("more_body", False)
        if self._size > self._limit:
            return None
        return b"".join(m.get("body", b"") for m in self._messages)

    async def __call__(self) -> bytes:
        """The RequestView contract: the body; :class:`BodyTooLarge` when longer than the
        limit (an empty read would price what the app then reads whole)."""
        body = await self.peek()
        if body is None:
            self.too_large = True
            raise BodyTooLarge
        return body

    async def receive(self) -> dict[str, Any]:
        """The app's ``receive``: what the gate read, again, then the rest."""
        if self._replayed < len(self._messages):
            self._replayed += 1
            return self._messages[self._replayed - 1]
        return await self._receive()


class Judge:
    """Keeps a paid answer (at most ``limit`` bytes) for the route's ``judge_response``."""

    __slots__ = ("_chunks", "_judge", "_limit", "_request", "_size")

    def __init__(self, judge: Callable[..., str | None], limit: int, request: Any = None) -> None:
        self._judge, self._limit, self._request = judge, limit, request
        self._chunks: list[bytes] = []
        self._size = 0

    @classmethod
    def of(cls, route: Any, request: Any = None) -> Judge | None:
        """A judge for a route whose price judges its answers (to ``request``), else None
        (nothing kept)."""
        price = getattr(getattr(route, "config", None), "price", None)
        judge = getattr(price, "judge_response", None)
        return None if judge is None else cls(judge, JUDGE_LIMIT, request)

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._limit:
            self._chunks.append(chunk)

    def verdict(self, status: int | None, headers: list[tuple[str, str]]) -> Undelivered | None:
        """Why the answer was not delivered, as the error to tell the gate; None: delivered."""
        if status is None:
            return None
        body = b"".join(self._chunks) if self._size <= self._limit else None
        why = self._judge(status, headers, body, self._request)
        return None if why is None else Undelivered(why)
