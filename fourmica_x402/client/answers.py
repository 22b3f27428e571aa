"""Reading the answers the buyer flow parses, with a bound on their size and their time.

A 402, a tab and the Core's public parameters are a few kilobytes; a seller sending more
(docs/buyer.md, "Challenges") is refused before anything is signed. httpx's timeouts bound
each read only: an answer must also arrive whole within the request's read timeout, so a
seller sending a byte now and then cannot hold the buyer.
"""

from __future__ import annotations

import importlib.util
import time
import zlib

import httpx

from .._urls import check_http_url

__all__ = [
    "MAX_ANSWER",
    "UNPAID_KEY",
    "AnswerTooLarge",
    "aread_answer",
    "error_said",
    "http_url",
    "read_answer",
]

#: A request that must never pay (a metered stream's stop, a listing or a Core read sent
#: through the buyer's paying client): its 402 is returned as it is (docs/buyer.md).
UNPAID_KEY = "fourmica_unpaid"
#: The most the flow reads of an answer it parses.
MAX_ANSWER = 1 << 20
#: The window bits of the codings unpacked here: deflate zlib-wrapped, or raw as some send it.
_FORMS = {"gzip": (16 + zlib.MAX_WBITS,), "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}


class AnswerTooLarge(ValueError):
    """An answer the flow parses ran past its limit (:data:`MAX_ANSWER` bytes), encoded or
    decoded, or came in a content coding it does not unpack: read no further."""

    def __init__(self, limit: int = MAX_ANSWER, message: str | None = None) -> None:
        super().__init__(message or f"an answer to parse is larger than {limit} bytes")


def read_answer(response: httpx.Response, limit: int = MAX_ANSWER) -> None:
    """Read ``response`` to its end (then closed), refusing one past ``limit`` bytes, and
    one that does not arrive whole within its request's read timeout (``httpx.ReadTimeout``)."""
    if _read_already(response, limit):
        return
    raw = bytearray()
    clock = _Deadline(response)
    try:
        for chunk in response.iter_raw():
            raw += chunk
            if len(raw) > limit:
                raise AnswerTooLarge(limit)
            clock.check()
    finally:
        response.close()
    response._content = _decoded(response, bytes(raw), limit)  # where httpx's read() keeps it


async def aread_answer(response: httpx.Response, limit: int = MAX_ANSWER) -> None:
    """:func:`read_answer` on an event loop."""
    if _read_already(response, limit):
        return
    raw = bytearray()
    clock = _Deadline(response)
    try:
        async for chunk in response.aiter_raw():
            raw += chunk
            if len(raw) > limit:
                raise AnswerTooLarge(limit)
            clock.check()
    finally:
        await response.aclose()
    response._content = _decoded(response, bytes(raw), limit)


class _Deadline:
    """The time a response's body has to arrive whole: its request's read timeout, counted
    from the start of the body (none when the request has none). httpx's own timeout bounds
    each read, so one byte sent just in time kept the read going (docs/buyer.md,
    "Challenges")."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            self.seconds = read_timeout(response.request.extensions)
        except RuntimeError:  # a response made without a request
            self.seconds = None
        self.ends = None if self.seconds is None else time.monotonic() + self.seconds
        self.response = response

    def check(self) -> None:
        """Raise ``httpx.ReadTimeout`` once the deadline has passed."""
        if self.seconds is not None and self.ends is not None and time.monotonic() > self.ends:
            raise httpx.ReadTimeout(late(self.seconds), request=self.response.request)


def read_timeout(extensions: object) -> float | None:
    """The read timeout a request's ``extensions`` carry (httpx's or httpcore's), if any."""
    timeout = extensions.get("timeout") if isinstance(extensions, dict) else None
    seconds = timeout.get("read") if isinstance(timeout, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return float(seconds)
    return None


def late(seconds: float) -> str:
    """What ``httpx.ReadTimeout`` says of an answer that did not arrive whole in time."""
    return f"the answer did not arrive whole within {seconds:g} s (the request's read timeout)"


def _read_already(response: httpx.Response, limit: int) -> bool:
    """Whether ``response`` holds its body already (one made in memory: httpx reads it)."""
    if not hasattr(response, "_content"):
        return False
    if len(response.content) > limit:
        raise AnswerTooLarge(limit)
    return True


def _decoded(response: httpx.Response, body: bytes, limit: int) -> bytes:
    """``body`` with its content codings undone, never unpacking past ``limit`` bytes: httpx
    unpacks a whole chunk at once, so a few kilobytes of nested gzip filled the memory. The
    codings httpx does not unpack (brotli or zstd without their library, unknown ones) are
    left as they are, as httpx leaves them."""
    codings = response.headers.get_list("content-encoding", split_commas=True)
    if not body:  # an empty answer (a HEAD's, a 204) labelled with a coding: nothing to undo
        return body
    for coding in reversed([c.strip().lower() for c in codings]):
        if coding == "br":
            body = _unbrotli(body, limit)
        elif coding == "zstd":
            body = _unzstd(body, limit)
        for wbits in _FORMS.get(coding, ()):
            try:
                body = _inflate(body, wbits, limit)
                break
            except zlib.error as exc:
                error = exc
        else:
            if coding in _FORMS:
                raise AnswerTooLarge(limit, f"an answer to parse is not valid {coding}: {error}")
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    unpacker = zlib.decompressobj(wbits)
    out = unpacker.decompress(data, limit + 1)
    if len(out) > limit or unpacker.unconsumed_tail:
        raise AnswerTooLarge(limit)
    return out


def _unbrotli(data: bytes, limit: int) -> bytes:
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        if importlib.util.find_spec("brotlicffi") is not None:  # httpx unpacks it whole
            raise AnswerTooLarge(
                limit, "an answer to parse came brotli-encoded: not read"
            ) from None
        return data  # httpx does not unpack it either
    unpacker = brotli.Decompressor()
    try:  # brotli 1.2 bounds its output; an older one cannot be stopped on the way
        out: bytes = unpacker.process(data, output_buffer_limit=limit + 1)
    except TypeError:
        raise AnswerTooLarge(limit, "an answer to parse came brotli-encoded: not read") from None
    except brotli.error as exc:
        raise AnswerTooLarge(limit, f"an answer to parse is not valid brotli: {exc}") from None
    if len(out) > limit:
        raise AnswerTooLarge(limit)
    if not unpacker.is_finished():  # cut short: httpx would not hand half an answer on
        raise AnswerTooLarge(limit, "an answer to parse is not valid brotli: it is cut short")
    return out


def _unzstd(data: bytes, limit: int) -> bytes:
    try:
        import zstandard
    except ImportError:
        return data  # httpx does not unpack it either
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
            while len(out) <= limit and (chunk := reader.read(limit + 1 - len(out))):
                out += chunk
    except zstandard.ZstdError as exc:
        raise AnswerTooLarge(limit, f"an answer to parse is not valid zstd: {exc}") from None
    if len(out) > limit:
        raise AnswerTooLarge(limit)
    return bytes(out)


def http_url(value: object) -> str | None:
    """``value`` when it is an http(s) URL httpx can send to (a seller names it), else None."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        return None
    try:  # a bad address, a name no socket encodes, a port past 65535 (httpx would wrap it)
        check_http_url(value)
    except ValueError:
        return None
    return value


def error_said(response: httpx.Response, limit: int = 80) -> str:
    """What an error answer says, for a message: its JSON ``error``, else the start of its
    text; one printable line of at most ``limit`` characters (``(empty)`` for nothing)."""
    from .._json import loads

    try:
        data = loads(response.content)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and data.get("error"):
        text = str(data["error"])
    else:
        text = response.content[: limit * 4].decode("utf-8", "replace")
    said = " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]
    return said or "(empty)"
