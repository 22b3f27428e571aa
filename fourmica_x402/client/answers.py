"""Reading the answers the buyer flow parses, with a bound on their size.

A 402, a tab and the Core's public parameters are a few kilobytes; a seller sending more
(docs/buyer.md, "Challenges") is refused before anything is signed.
"""

from __future__ import annotations

import httpx

__all__ = ["MAX_ANSWER", "AnswerTooLarge", "aread_answer", "http_url", "read_answer"]

#: The most the flow reads of an answer it parses.
MAX_ANSWER = 1 << 20


class AnswerTooLarge(ValueError):
    """An answer the flow parses ran past its limit (:data:`MAX_ANSWER` bytes): read no further."""

    def __init__(self, limit: int = MAX_ANSWER) -> None:
        super().__init__(f"an answer to parse is larger than {limit} bytes")


def read_answer(response: httpx.Response, limit: int = MAX_ANSWER) -> None:
    """Read ``response`` to its end (then closed), refusing one past ``limit`` bytes."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise AnswerTooLarge(limit)
    finally:
        response.close()
    response._content = bytes(body)  # where httpx's own read() keeps it


async def aread_answer(response: httpx.Response, limit: int = MAX_ANSWER) -> None:
    """:func:`read_answer` on an event loop."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise AnswerTooLarge(limit)
    finally:
        await response.aclose()
    response._content = bytes(body)


def http_url(value: object) -> str | None:
    """``value`` when it is an http(s) URL httpx can send to (a seller names it), else None."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        return None
    try:
        httpx.URL(value)
    except httpx.InvalidURL:  # a bad port or host: neither an HTTPError nor a ValueError
        return None
    return value
