"""A seller's offers before paying: its discovery listing, ``GET /.well-known/x402``.

    from fourmica_x402.client import discover

    for resource in discover("https://api.example.com"):
        for offer in resource.accepts:
            print(resource.method, resource.url, offer.price, offer.network)

:func:`discover` (httpx, sync) and :func:`adiscover` (async) fetch the listing and read it
into :class:`ListedResource` and :class:`ListedOffer`; nothing is paid or signed. An offer
whose price is set per request has ``amount`` None (its 402 says how much). Anything that is
not a listing — an HTTP error, not JSON, the wrong shape — raises
:class:`~fourmica_x402.errors.DiscoveryFailed` saying what (docs/buyer.md, "Listing offers";
the wire shape: docs/protocol.md, "Discovery").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlunsplit

import httpx

from .._json import loads
from .._urls import check_http_url, safe_url
from ..errors import DiscoveryFailed
from ..networks import find_asset, format_amount, parse_amount
from .answers import UNPAID_KEY, AnswerTooLarge, aread_answer, read_answer
from .heads import asend_head, bound, send_head

C = TypeVar("C", httpx.Client, httpx.AsyncClient)

__all__ = ["WELL_KNOWN", "ListedOffer", "ListedResource", "adiscover", "discover", "read_listing"]

#: Where a seller serves its listing.
WELL_KNOWN = "/.well-known/x402"
#: The largest listing read (bytes): a seller's routes, not a catalogue.
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ListedOffer:
    """One way to pay for a listed resource (an entry of its ``accepts``).

    ``amount`` (atomic units), ``asset`` and ``pay_to`` are None when the seller sets them per
    request (``per_request`` names them): the route's 402 carries them.
    """

    scheme: str
    network: str
    amount: int | None
    asset: str | None
    pay_to: str | None
    max_timeout_seconds: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    per_request: tuple[str, ...] = ()

    @property
    def price(self) -> str:
        """The price as people read it (``$0.01``), or ``set per request``."""
        if self.amount is None:
            return "set per request"
        token = find_asset(self.network, self.asset) if self.asset else None
        return format_amount(self.amount, token)


@dataclass(frozen=True)
class ListedResource:
    """A priced route: ``method`` on ``url`` (parameters written ``{name}``)."""

    url: str
    method: str
    accepts: tuple[ListedOffer, ...]
    description: str = ""
    mime_type: str = ""
    #: The x402 v2 ``extensions`` the seller declares for it (e.g. ``bazaar``), as sent.
    extensions: Mapping[str, Any] | None = None


def listing_url(url: str) -> str:
    """The listing of the seller at ``url``: its origin's :data:`WELL_KNOWN` (a URL that
    already names a listing is kept)."""
    try:
        parts = check_http_url(url.strip())
    except ValueError as exc:
        raise DiscoveryFailed(str(exc)) from None
    if parts.path.endswith(WELL_KNOWN):
        return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN, "", ""))


def discover(
    url: str, *, client: httpx.Client | None = None, timeout: float = 10.0
) -> list[ListedResource]:
    """The offers of the seller at ``url`` (any URL of it), read with ``client`` (its
    transport, headers and proxies) or a fresh one. Never paid: through a paying client, a
    402 is the listing's answer (docs/buyer.md, "Listing offers")."""
    target = listing_url(url)
    try:
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(_fresh(httpx.Client, timeout))
            bound(client)  # its head too within the timeout (docs/buyer.md, "Challenges")
            request = client.build_request("GET", target, timeout=timeout, extensions=_unpaid())
            send = functools.partial(client.send, stream=True)
            response = send_head(send, request)
            stack.callback(response.close)
            read_answer(response, MAX_BYTES)  # no further than the limit
            return read_listing(response, safe_url(target))
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # the last two: a
        # redirect (a client that follows them) to a host no request can go to
        raise DiscoveryFailed(f"{safe_url(target)}: request failed: {exc}") from exc
    except AnswerTooLarge:
        raise DiscoveryFailed(
            f"{safe_url(target)}: the listing is larger than {MAX_BYTES} bytes"
        ) from None


async def adiscover(
    url: str, *, client: httpx.AsyncClient | None = None, timeout: float = 10.0
) -> list[ListedResource]:
    """:func:`discover` with an ``httpx.AsyncClient``."""
    target = listing_url(url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(_fresh(httpx.AsyncClient, timeout))
            request = client.build_request("GET", target, timeout=timeout, extensions=_unpaid())
            response = await asend_head(functools.partial(client.send, stream=True), request)
            stack.push_async_callback(response.aclose)
            await aread_answer(response, MAX_BYTES)
            return read_listing(response, safe_url(target))
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # the last two: a
        # redirect (a client that follows them) to a host no request can go to
        raise DiscoveryFailed(f"{safe_url(target)}: request failed: {exc}") from exc
    except AnswerTooLarge:
        raise DiscoveryFailed(
            f"{safe_url(target)}: the listing is larger than {MAX_BYTES} bytes"
        ) from None


def _fresh(kind: Callable[..., C], timeout: float) -> C:
    """A client of ``kind``, with the proxies the environment names (``HTTPS_PROXY``…); one
    it cannot use (a SOCKS proxy without httpx's extra, a scheme or port httpx refuses) is
    :class:`DiscoveryFailed`, not a traceback."""
    try:
        return kind(timeout=timeout)
    except (ImportError, ValueError, httpx.InvalidURL) as exc:
        raise DiscoveryFailed(f"the proxy the environment names cannot be used: {exc}") from None


def _unpaid() -> dict[str, Any]:
    """The listing request's extensions: never paid, whatever client sends it (docs/buyer.md,
    "Listing offers": nothing is paid or signed). A fresh dict: the flow marks extensions."""
    return {UNPAID_KEY: True}


def read_listing(response: httpx.Response, where: str = "the listing") -> list[ListedResource]:
    """A listing response (from ``where``) read into resources; :class:`DiscoveryFailed` when
    it is not one."""
    if response.status_code != 200:
        hint = " (the seller publishes no listing there)" if response.status_code == 404 else ""
        raise DiscoveryFailed(f"{where} answered HTTP {response.status_code}{hint}")
    if len(response.content) > MAX_BYTES:
        raise DiscoveryFailed(f"{where}: the listing is larger than {MAX_BYTES} bytes")
    try:
        data = loads(response.content)
    except ValueError:
        raise DiscoveryFailed(f"{where}: the answer is not JSON") from None
    try:
        return parse_listing(data)
    except ValueError as exc:
        raise DiscoveryFailed(f"{where}: not an x402 listing: {exc}") from None


def parse_listing(data: Any) -> list[ListedResource]:
    """``{"x402Version": 2, "resources": [...]}`` read; ValueError naming the bad field."""
    body = _object(data, "the listing")
    resources = body.get("resources")
    if not isinstance(resources, list):
        raise ValueError("resources: expected a list")
    return [_resource(item, f"resources[{i}]") for i, item in enumerate(resources)]


def _resource(data: Any, where: str) -> ListedResource:
    item = _object(data, where)
    accepts = item.get("accepts")
    if not isinstance(accepts, list):
        raise ValueError(f"{where}.accepts: expected a list")
    extensions = item.get("extensions")
    if extensions is not None:
        extensions = _object(extensions, f"{where}.extensions")
    return ListedResource(
        url=_text(item, "resource", where) or _missing(where, "resource"),
        method=(_text(item, "method", where) or "GET").upper(),
        accepts=tuple(_offer(o, f"{where}.accepts[{i}]") for i, o in enumerate(accepts)),
        description=_text(item, "description", where) or "",
        mime_type=_text(item, "mimeType", where) or "",
        extensions=extensions,
    )


def _offer(data: Any, where: str) -> ListedOffer:
    item = _object(data, where)
    per_request = item.get("perRequest", [])
    if not isinstance(per_request, list) or not all(isinstance(n, str) for n in per_request):
        raise ValueError(f"{where}.perRequest: expected a list of field names")
    amount = None
    if item.get("amount") is not None:
        try:
            amount = parse_amount(item["amount"])
        except ValueError as exc:
            raise ValueError(f"{where}.amount: {exc}") from None
    timeout = item.get("maxTimeoutSeconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)):
        raise ValueError(f"{where}.maxTimeoutSeconds: expected an integer")
    extra = item.get("extra")
    return ListedOffer(
        scheme=_text(item, "scheme", where) or _missing(where, "scheme"),
        network=_text(item, "network", where) or _missing(where, "network"),
        amount=amount,
        asset=_text(item, "asset", where),
        pay_to=_text(item, "payTo", where),
        max_timeout_seconds=timeout,
        extra=_object(extra, f"{where}.extra") if extra is not None else {},
        per_request=tuple(per_request),
    )


def _text(item: Mapping[str, Any], name: str, where: str) -> str | None:
    """``item[name]``: a string, or None when it is absent (or null)."""
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}.{name}: expected a string")
    return value


def _missing(where: str, name: str) -> NoReturn:
    raise ValueError(f"{where}.{name}: missing")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return value
