"""The request hash: SHA-256 over a canonical encoding of (method, path, query, body).

The gate writes it into the payment record of every paid request, so it must be cheap: a
handful of short strings and one SHA-256 (docs/operations.md, "Evidence and disputes").

The encoding (version tag ``fx-request-v1``) is unambiguous: each part is a netstring,
``<decimal length>:<bytes>,``, in this order:

1. the method, upper-cased, ASCII;
2. the path the framework routes on (percent-decoded), UTF-8;
3. the query string as sent (without ``?``), UTF-8;
4. the SHA-256 of the body bytes, as 64 hex digits — or the single byte ``-`` when the body is
   not known.

The gate never buffers a paid request's body: it hashes it as it streams to the handler
(:class:`BodyHasher`). The record gets a hash when the request is paid: with the empty body
when the request declares none (no ``Content-Length`` or ``0``, and no ``Transfer-Encoding``),
else with ``-``; once the handler has read the whole body, the response's completion replaces
it with the hash that covers the body. A handler that never reads the body leaves ``-``.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

__all__ = ["TAG", "BodyHasher", "hash_request", "request_hash", "request_hash_of"]

TAG = b"fx-request-v1"


class _Request(Protocol):  # what the gate's RequestView offers
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> str: ...

    def header(self, name: str) -> str | None: ...


def _netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def request_hash(method: str, path: str, query: str, body: bytes | None) -> str:
    """The request hash as 64 hex digits; ``body`` None: not known (encoded as ``-``)."""
    digest = None if body is None else hashlib.sha256(body).hexdigest()
    return request_hash_of(method, path, query, digest)


def request_hash_of(method: str, path: str, query: str, body_sha256: str | None) -> str:
    """:func:`request_hash` from the body's SHA-256 (hex), as :class:`BodyHasher` gives it."""
    encoded = (
        TAG
        + _netstring(method.upper().encode("ascii", "replace"))
        + _netstring(path.encode("utf-8", "surrogatepass"))
        + _netstring(query.encode("utf-8", "surrogatepass"))
        + (b"-" if body_sha256 is None else _netstring(body_sha256.encode("ascii")))
    )
    return hashlib.sha256(encoded).hexdigest()


def hash_request(request: _Request) -> str:
    """:func:`request_hash` of a request before its handler runs (its body known only when
    the request declares none)."""
    length = request.header("content-length")
    empty = (not length or length.strip() == "0") and request.header("transfer-encoding") is None
    return request_hash(request.method, request.path, request.query, b"" if empty else None)


class BodyHasher:
    """A request body hashed as the handler reads it; :meth:`digest` once it was read whole."""

    __slots__ = ("_sha", "complete")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.complete = False

    def feed(self, chunk: bytes, last: bool = False) -> None:
        if not self.complete:
            self._sha.update(chunk)
            self.complete = last

    def digest(self) -> str | None:
        """The body's SHA-256 (hex), or None when the handler did not read it to its end."""
        return self._sha.hexdigest() if self.complete else None
