"""Metered streams, the buyer's side: read a stream sold per slice, paying each slice as the
seller asks (docs/buyer.md, "Metered streams").

The first request pays slice 1 like any paid request. The seller then sends, before each later
slice, a ``payment-required`` event naming its pay URL; :class:`PaidStream` (and
:class:`AsyncPaidStream`) ``POST`` there through the same paying client, so the spending policy
decides each slice as any payment. When the policy refuses one (a task budget used up, say),
the stream is stopped (``DELETE`` of the stream) and ends cleanly; the refusal is raised once
the seller's ``end`` event arrived, or :data:`STOP_GRACE` seconds after the stop at most.
Nothing of an unpaid slice is ever sent::

    with policy.task("transcript", budget="$0.05"):
        stream = AsyncPaidStream(client, "GET", f"{seller}/ticks")
        async for event in stream:          # the seller's own events; the meter's are handled
            print(event.data)
    stream.ended, stream.slices             # why it ended ("complete", …), slices paid
"""

from __future__ import annotations

import codecs
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from .._json import loads
from ..errors import FourmicaError, PaymentRefused
from .answers import MAX_ANSWER, UNPAID_KEY, AnswerTooLarge, aread_answer, read_answer
from .flow import RECEIPT_KEY, TERMS_KEY
from .receipts import Receipt

__all__ = ["STOP_GRACE", "AsyncPaidStream", "Event", "PaidStream", "StreamFailed"]

#: Seconds a seller has to end a stream the buyer stopped (docs/buyer.md, "Metered streams");
#: past them the buyer closes it and raises its refusal. A stream's ``stop_grace`` overrides it.
STOP_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its name (``message`` when unnamed), data and id."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return loads(self.data)


class StreamFailed(FourmicaError):
    """The stream could not be opened (not a 2xx), or a slice's payment was answered with
    something else than a 2xx."""

    status = 502
    reason = "stream_failed"

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


#: Where a line of an event stream ends.
_BREAK = re.compile(r"\r\n|\r|\n")


class _Parser:
    """Server-sent events from the body's bytes (the text/event-stream format, enough of it):
    a line ends at CR, LF or CRLF; one event holds at most :data:`MAX_ANSWER` characters."""

    def __init__(self) -> None:
        self.event: str = ""
        self.id: str | None = None
        self.data: list[str] = []
        self._size, self._rest = 0, ""
        self._decode = codecs.getincrementaldecoder("utf-8")("replace")

    def lines(self, chunk: bytes, last: bool = False) -> list[str]:
        """The whole lines ``chunk`` completes (``last``: the body ended)."""
        text = self._rest + self._decode.decode(chunk, last)
        hold = "" if last or not text.endswith("\r") else "\r"  # maybe half of a CRLF
        found = _BREAK.split(text[: len(text) - len(hold)])
        tail = found.pop()  # the line still open (at the end: the last, if it holds any)
        self._rest = tail + hold if not last else ""
        self._size += len(text) - len(self._rest)
        if len(self._rest) > MAX_ANSWER or self._size > MAX_ANSWER:
            raise StreamFailed(f"an event larger than {MAX_ANSWER} characters")
        return [*found, tail] if last and tail else found

    def events(self, chunk: bytes, last: bool = False) -> Iterator[Event]:
        for line in self.lines(chunk, last):
            event = self.feed(line)
            if event is not None:
                yield event

    def feed(self, line: str) -> Event | None:
        if line == "":
            self._size = 0
            if not self.data and not self.event:
                return None
            done = Event(self.event or "message", "\n".join(self.data), self.id)
            self.event, self.data = "", []
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


class _Stream:
    #: Seconds the seller has to end the stream once the buyer stopped it (:data:`STOP_GRACE`).
    stop_grace: float = STOP_GRACE

    def __init__(self, method: str, url: str, kwargs: dict[str, Any]) -> None:
        # Asked unpacked: httpx unpacks a chunk whole, a few kilobytes of nested gzip to
        # hundreds of megabytes, before any event limit can look at it.
        headers = httpx.Headers(kwargs.get("headers"))
        headers.setdefault("accept-encoding", "identity")
        self.method, self.url, self.kwargs = method, url, {**kwargs, "headers": headers}
        #: The stream's id, why it ended and how many slices were bought (1 once it opened).
        self.id: str | None = None
        self.ended: str | None = None
        self.slices = 0
        self._fed = False  # whether the slice paid last delivered an event yet
        #: The spending policy's refusal that stopped the stream, if one did.
        self.refusal: PaymentRefused | None = None
        self.response: httpx.Response | None = None
        self._terms: Receipt | None = None  # what slice 1 was paid: no later slice costs more
        self._deadline: float | None = None  # once stopped: when the seller's time is up

    def _opened(self, response: httpx.Response) -> None:
        self.response = response
        if not response.is_success:
            raise StreamFailed(f"the stream answered {response.status_code}", response)
        self.slices = 1
        receipt = response.extensions.get(RECEIPT_KEY)
        # Slice 1's signed terms, whatever the seller said became of them: a seller saying
        # "refunded" still sells the stream at that price (docs/buyer.md, "Metered streams").
        if isinstance(receipt, Receipt) and receipt.claims is not None:
            self._terms = receipt
        coded = response.headers.get("content-encoding", "identity").strip().lower()
        if coded != "identity":  # asked unpacked: nothing of it is read
            raise StreamFailed(f"the stream came in a content coding ({coded:.40})", response)

    def _events(self, chunks: Iterable[bytes], parser: _Parser) -> Iterator[Event]:
        for chunk in chunks:
            if self._overdue():
                return
            yield from parser.events(chunk)
        yield from parser.events(b"", last=True)

    async def _aevents(self, chunks: AsyncIterator[bytes], parser: _Parser) -> AsyncIterator[Event]:
        async for chunk in chunks:
            if self._overdue():
                return
            for event in parser.events(chunk):
                yield event
        for event in parser.events(b"", last=True):
            yield event

    def _stopped(self, refusal: PaymentRefused) -> None:
        self.refusal = refusal
        self._deadline = time.monotonic() + self.stop_grace

    def _overdue(self) -> bool:
        """Whether the buyer stopped the stream and the seller's time to end it is up: a
        seller ignoring the stop (keep-alive comments, say) holds the buyer no longer."""
        return self._deadline is not None and time.monotonic() > self._deadline

    def _control(self, event: Event) -> str | None:
        """What a meter event asks: ``pay`` (the URL), ``end``, or None (the seller's event).
        A meter event that is not what docs/buyer.md describes raises :class:`StreamFailed`."""
        if event.event not in ("stream", "end", "payment-required"):
            self._fed = True
            return None
        try:
            data = event.json()
            if event.event == "stream":
                self.id = _text(data.get("stream"))
                return "skip"
            if event.event == "end":  # the count stays the buyer's own: what it paid
                slices = data.get("slices", 0)
                if not isinstance(slices, int) or isinstance(slices, bool) or slices < 0:
                    raise TypeError("slices is not a count")
                self.ended = _text(data.get("reason"))
                return "end"
            url = self._pay_url(data["pay"])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            raise StreamFailed(
                f"the seller sent a malformed {event.event!r} event", self.response
            ) from None
        if not self._fed:  # a slice is sold only once the one paid before it delivered
            raise StreamFailed(
                f"the seller asked for slice {self.slices + 1} before slice {self.slices} "
                "delivered any event",
                self.response,
            )
        return url

    def _pay(self) -> dict[str, Any]:
        """A slice payment's options: never redirected, paid on the first slice's terms."""
        # A stream opened unpaid has no terms: a slice is then paid on none (docs/buyer.md).
        terms = self._terms or Receipt(outcome="payment_failed", url=str(self.url))
        return {"follow_redirects": False, "extensions": {TERMS_KEY: terms}}

    def _paid_slice(self) -> None:
        self.slices += 1
        self._fed = False

    def _pay_url(self, pay: object) -> str:
        """The slice's pay URL, on the origin the buyer asked the stream of (docs/buyer.md,
        "Metered streams"): a seller cannot send the buyer's payment (or the client's
        credentials) to another host, nor can the origin a stream was redirected to."""
        assert self.response is not None  # opened before any event
        stream = self.response.url
        first = self.response.history[0] if self.response.history else self.response
        asked = first.request.url  # the client's own request, before any redirect
        if _origin(stream) != _origin(asked):
            raise StreamFailed(
                f"the stream was redirected to another origin ({stream.scheme}://{stream.host}): "
                "none of its later slices is paid",
                self.response,
            )
        if not isinstance(pay, str):
            raise TypeError("pay is not a URL")
        try:
            url = stream.join(pay)
        except httpx.InvalidURL:  # a bad port or host: neither an HTTPError nor a ValueError
            raise TypeError("pay is not a URL") from None
        if _origin(url) != _origin(stream):
            raise StreamFailed(
                f"the seller asked to pay a slice at another origin ({url.scheme}://{url.host})",
                self.response,
            )
        return str(url)

    def _stop_url(self, pay: str) -> str:
        return pay.rsplit("/", 1)[0]

    @contextlib.contextmanager
    def _reading(self, response: httpx.Response) -> Iterator[None]:
        """Read a slice's payment answer (at most 1 MiB, whole within the read timeout:
        docs/buyer.md, "Challenges"), then check it is a 2xx."""
        try:
            yield
        except AnswerTooLarge as exc:
            raise StreamFailed(f"a slice's payment answer: {exc}", response) from None
        if not response.is_success:
            raise StreamFailed(f"a slice's payment was answered {response.status_code}", response)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _stop() -> dict[str, Any]:
    """The stop request's options: never paid, never redirected. A pay URL is paid on the
    stream's origin only, so neither it nor its stop follows a redirect elsewhere (a 3xx to
    a slice's payment fails the stream). A fresh dict each time: the flow marks extensions."""
    return {"extensions": {UNPAID_KEY: True}, "follow_redirects": False}


class PaidStream(_Stream):
    """A metered stream over ``client`` (an :class:`httpx.Client` that pays); iterate it for
    the seller's events. ``kwargs`` as :meth:`httpx.Client.stream`."""

    def __init__(self, client: httpx.Client, method: str, url: str, **kwargs: Any) -> None:
        super().__init__(method, url, kwargs)
        self.client = client

    def __iter__(self) -> Iterator[Event]:
        parser = _Parser()
        with self.client.stream(self.method, self.url, **self.kwargs) as response:
            self._opened(response)
            try:
                for event in self._events(response.iter_bytes(), parser):
                    what = self._control(event)
                    if what is None:
                        yield event
                    elif what == "end":
                        break
                    elif what != "skip" and self.refusal is None:
                        try:
                            pay = self.client.stream("POST", what, **self._pay())
                            with pay as paid, self._reading(paid):
                                read_answer(paid)
                            self._paid_slice()
                        except PaymentRefused as exc:  # stop it: the seller ends it cleanly
                            self._stopped(exc)
                            with self.client.stream("DELETE", self._stop_url(what), **_stop()):
                                pass  # its answer unread: the stream's end says it was heard
            except httpx.HTTPError:  # a TransportError, or a DecodingError (a garbled stop)
                if self.refusal is None:  # once stopped, a stream cut, silent or garbled is over
                    raise
        if self.refusal is not None:
            raise self.refusal


class AsyncPaidStream(_Stream):
    """The async twin of :class:`PaidStream` over an :class:`httpx.AsyncClient` that pays."""

    def __init__(self, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> None:
        super().__init__(method, url, kwargs)
        self.client = client

    async def __aiter__(self) -> AsyncIterator[Event]:
        parser = _Parser()
        async with self.client.stream(self.method, self.url, **self.kwargs) as response:
            self._opened(response)
            try:
                async for event in self._aevents(response.aiter_bytes(), parser):
                    what = self._control(event)
                    if what is None:
                        yield event
                    elif what == "end":
                        break
                    elif what != "skip" and self.refusal is None:
                        try:
                            pay = self.client.stream("POST", what, **self._pay())
                            async with pay as paid:
                                with self._reading(paid):
                                    await aread_answer(paid)
                            self._paid_slice()
                        except PaymentRefused as exc:
                            self._stopped(exc)
                            stop = self.client.stream("DELETE", self._stop_url(what), **_stop())
                            async with stop:
                                pass
            except httpx.HTTPError:
                if self.refusal is None:
                    raise
        if self.refusal is not None:
            raise self.refusal
