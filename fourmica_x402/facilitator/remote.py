"""``HttpFacilitator``: any x402-4mica-compatible facilitator over HTTP (sync and async).

    from fourmica_x402.facilitator import HttpFacilitator
    facilitator = HttpFacilitator("http://127.0.0.1:4021", headers={"Authorization": "Bearer …"})
    config = PaymentConfig(..., facilitator=facilitator, records="sqlite:///records.db")

Idempotent calls (``/supported``, ``/verify``, and ``/tabs``, which reuses the
active tab) are retried with exponential backoff on 429/5xx and connection
errors; state-changing ones (``/settle``, void, validation) are sent once — a second ``/settle`` of the same
guarantee would only be refused as a replay. Connection failures, timeouts and
5xx raise :class:`~fourmica_x402.errors.Unavailable`, so a seller configured with
a facilitator that is down fails closed (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx

from .._eth import parse_address
from .._json import loads
from ..core.models import Tab
from ..errors import CoreError, GuaranteeRejected, Reason, TabLimited, Unavailable
from ..wire import PaymentPayload, PaymentPayloadV1, PaymentRequirements, VerifyResponse
from . import _asyncio_http
from ._answers import (
    abounded,
    answer_json,
    bounded,
    doubt,
    reason_code,
    refused_key,
    settled,
    tab_of,
    verdict,
)

__all__ = ["HttpFacilitator"]

log = logging.getLogger("fourmica_x402.facilitator")

_RETRY_STATUS = {429, 500, 502, 503, 504}
#: A call that failed on the way (either client), and of those the ones never sent.
_FAILED: tuple[type[Exception], ...] = (httpx.HTTPError, *_asyncio_http.ERRORS)
#: ... or the whole call outlasted its ``timeout`` (an event loop's call).
_FAILED_OR_LATE: tuple[type[Exception], ...] = (*_FAILED, TimeoutError)
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    *_asyncio_http.NOT_SENT,
)
#: Idle connections are dropped well before common servers close them (uvicorn and Node
#: after 5 s, gunicorn after 2 s): a kept-alive connection the server closes just as
#: ``/settle`` leaves on it would fail a payment that cannot be sent again.
_LIMITS = httpx.Limits(keepalive_expiry=1.5)


def _proxied(url: str) -> bool:
    """Whether the environment sends ``url`` through a proxy (``HTTPS_PROXY``, ``NO_PROXY``…),
    which httpx's client honours and the lean pool does not."""
    parts = urlsplit(url)
    proxies = getproxies()
    wanted = proxies.get(parts.scheme) or proxies.get("all")
    return bool(wanted) and not proxy_bypass(parts.hostname or "")


def _real(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _public(url: str) -> str:
    """``url`` as buyers and logs may see it: without its user info, where a facilitator's
    credentials may ride (the calls still send them)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class HttpFacilitator:
    """A remote facilitator. ``headers`` are sent with every call (auth); ``timeout``: the
    seconds one call may take (on an event loop in all; in a thread, each step, and the
    answer's body in all)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        rpc_url: str | None = None,
        validation_registry: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("facilitator url must be http(s)")
        if urlsplit(url).query or "#" in url:  # each call's path would land after it
            raise ValueError(
                "facilitator url takes no query or fragment: send credentials with headers="
            )
        # Checked here, not a TypeError at every call (the tab endpoint answering 500): httpx
        # reads timeout=None as none, but each call is bounded (docs/operations.md).
        if not _real(timeout) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r:.40}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number, 0 or more, not {retries!r:.40}")
        if not _real(backoff) or not 0 <= backoff < math.inf:
            raise ValueError(f"backoff must be a number of seconds, 0 or more, not {backoff!r:.40}")
        self.url = url.rstrip("/")
        #: The Core API buyers read (``rpcUrl`` in challenges): ``fourmica-x402 serve`` serves
        #: it beside the facilitator API, so by default this URL, whose ``/chains/<chain id>``
        #: each offer names (``rpc_chains``): the service serves every network's there.
        self.rpc_url = (rpc_url or _public(self.url)).rstrip("/")
        self.rpc_chains = rpc_url is None
        #: The validation registry the facilitator trusts: with it, challenges carry the
        #: delivery policy, as on the embedded Core (docs/protocol.md, "Delivery").
        self.validation_registry = (
            None if validation_registry is None else parse_address(validation_registry)
        )
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._client = httpx.Client(
            base_url=self.url,
            headers=self._headers,
            timeout=timeout,
            limits=_LIMITS,
            transport=transport,
        )
        self._async_transport = async_transport
        self._aclient: httpx.AsyncClient | None = None  # with ``async_transport`` only
        #: The event loop's connection pool (docs/architecture.md, "A remote facilitator"),
        #: made anew when the calls move to another loop (a loop's connections die with it).
        self._apool: tuple[asyncio.AbstractEventLoop, _asyncio_http.JsonPool] | None = None
        self._proxied = _proxied(self.url)  # read once, as httpx's client reads it

    @property
    def timeout(self) -> float:
        """Seconds one call may take, whole (on an event loop) or per read (in a thread)."""
        return self._timeout

    def __repr__(self) -> str:  # headers (and the URL's user info or query) may carry credentials
        return f"HttpFacilitator({_public(self.url)!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, *, retry: bool = False) -> Any:
        attempts = self._retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                deadline = time.monotonic() + self._timeout
                with self._client.stream(method, path, json=body) as response:
                    content = bounded(_until(deadline, response.iter_bytes()))
            except httpx.HTTPError as exc:
                if attempt + 1 < attempts:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise self._unreachable(exc) from None
            retry_after = response.headers.get("retry-after")
            _raise_tab_limit(response.status_code, retry_after, content)
            if response.status_code in _RETRY_STATUS and attempt + 1 < attempts:
                time.sleep(self._delay(attempt, retry_after))
                continue
            return self._decode(response.status_code, content)
        raise AssertionError("unreachable")

    async def _acall(self, method: str, path: str, body: Any = None, *, retry: bool = False) -> Any:
        send = self._asend
        if self._async_transport is not None or self._proxied:  # httpx's own features
            send = self._asend_httpx
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        attempts = self._retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self._timeout):  # the whole call, not each read
                    status, retry_after, content = await send(method, path, data)
            except _FAILED_OR_LATE as exc:
                if attempt + 1 < attempts:
                    await asyncio.sleep(self._delay(attempt, None))
                    continue
                raise self._unreachable(exc) from None
            _raise_tab_limit(status, retry_after, content)
            if status in _RETRY_STATUS and attempt + 1 < attempts:
                await asyncio.sleep(self._delay(attempt, retry_after))
                continue
            return self._decode(status, content)
        raise AssertionError("unreachable")

    async def _asend(
        self, method: str, path: str, data: bytes | None
    ) -> tuple[int, str | None, bytes]:
        loop = asyncio.get_running_loop()
        if self._apool is None or self._apool[0] is not loop:
            self._apool = (
                loop,
                _asyncio_http.JsonPool(
                    self.url,
                    headers=self._headers,
                    timeout=self._timeout,
                    limits=_LIMITS,
                    ssl_context=httpx.create_ssl_context(),
                ),
            )
        status, headers, content = await self._apool[1].request(method, path, data, abounded)
        retry_after = next(
            (v.decode("latin-1") for k, v in headers if k.lower() == b"retry-after"), None
        )
        return status, retry_after, content

    async def _asend_httpx(
        self, method: str, path: str, data: bytes | None
    ) -> tuple[int, str | None, bytes]:
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(
                base_url=self.url,
                headers=self._headers,
                timeout=self._timeout,
                limits=_LIMITS,
                transport=self._async_transport,
            )
        extra = {} if data is None else {"content-type": "application/json"}
        async with self._aclient.stream(method, path, content=data, headers=extra) as response:
            content = await abounded(response.aiter_bytes())
        return response.status_code, response.headers.get("retry-after"), content

    def _unreachable(self, exc: Exception) -> Unavailable:
        error = Unavailable(f"facilitator {_public(self.url)} unreachable: {type(exc).__name__}")
        # Only a failed connect proves the request never arrived; after a read timeout or a
        # dropped connection the facilitator may have acted on it.
        error.maybe_applied = not isinstance(exc, _NOT_SENT)
        return error

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None and retry_after.isascii() and retry_after.isdigit():
            return min(float(retry_after), 5.0)
        return float(self._backoff * (2**attempt))

    def _decode(self, status: int, content: bytes) -> Any:
        if status >= 500 or status == 429:
            error = Unavailable(f"facilitator answered {status}")
            error.maybe_applied = status != 429  # a 5xx may follow a commit
            raise error
        if status < 200 or 300 <= status < 400:  # a redirect is never followed
            raise doubt(f"facilitator answered {status}")
        try:
            data = answer_json(content)
        except ValueError:
            if status < 400:  # an answer that cannot be read: the call may have been applied
                raise doubt(f"facilitator answered {status} without JSON") from None
            raise Unavailable(f"facilitator answered {status} without JSON") from None
        if status >= 400:
            message = reason = None
            if isinstance(data, dict):  # {"error": code, "message": text}, or older shapes
                coded = "reason" not in data and "message" in data
                reason = data.get("error") if coded else data.get("reason")
                message = data.get("message") if coded else data.get("error") or data.get("message")
            state = data.get("state") if isinstance(data, dict) else None
            reason = refused_key(status, reason, message)
            raise CoreError(
                str(message or status)[:200],
                reason=reason_code(reason, "facilitator_error"),
                status=status,
                state=state if isinstance(state, str) else None,
            )
        return data

    @staticmethod
    def _body(
        payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> dict[str, Any]:
        return {
            "x402Version": payload.x402_version,
            "paymentPayload": payload.to_dict(),
            "paymentRequirements": requirements.to_dict(),
        }

    # -- the protocol ------------------------------------------------------------------------

    def supported(self) -> list[dict[str, Any]]:
        return _kinds(self._call("GET", "/supported", retry=True))

    async def asupported(self) -> list[dict[str, Any]]:
        return _kinds(await self._acall("GET", "/supported", retry=True))

    @staticmethod
    def _tab_body(
        user: str, recipient: str, network: str, asset: str, version: int, ttl: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "userAddress": user,
            "recipientAddress": recipient,
            "network": network,
            "erc20Token": asset,
            "guaranteeVersion": version,
        }
        if ttl:
            body["ttlSeconds"] = ttl
        return body

    @staticmethod
    def _tab(data: Any, network: str, version: int) -> Tab:
        def pick(*names: str) -> Any:
            for name in names:
                if isinstance(data, dict) and data.get(name) is not None:
                    return data[name]
            raise Unavailable(f"facilitator tab answer lacks {names[0]}")

        try:
            return tab_of(pick, network, version)
        except (ValueError, TypeError, OverflowError):  # ids, times that are not numbers
            raise Unavailable("facilitator tab answer is malformed") from None

    def open_tab(
        self,
        *,
        user: str,
        recipient: str,
        network: str,
        asset: str,
        guarantee_version: int,
        ttl_seconds: int | None = None,
    ) -> Tab:
        body = self._tab_body(user, recipient, network, asset, guarantee_version, ttl_seconds)
        try:
            return self._tab(
                self._call("POST", "/tabs", body, retry=True), network, guarantee_version
            )
        except CoreError as exc:
            raise GuaranteeRejected(exc.message, reason=exc.reason) from None

    async def aopen_tab(
        self,
        *,
        user: str,
        recipient: str,
        network: str,
        asset: str,
        guarantee_version: int,
        ttl_seconds: int | None = None,
    ) -> Tab:
        body = self._tab_body(user, recipient, network, asset, guarantee_version, ttl_seconds)
        try:
            return self._tab(
                await self._acall("POST", "/tabs", body, retry=True), network, guarantee_version
            )
        except CoreError as exc:
            raise GuaranteeRejected(exc.message, reason=exc.reason) from None

    def verify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> VerifyResponse:
        return verdict(self._call("POST", "/verify", self._body(payload, requirements), retry=True))

    async def averify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> VerifyResponse:
        data = await self._acall("POST", "/verify", self._body(payload, requirements), retry=True)
        return verdict(data)

    def settle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> Any:
        return settled(
            self._call("POST", "/settle", self._body(payload, requirements)), payload, requirements
        )

    async def asettle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> Any:
        data = await self._acall("POST", "/settle", self._body(payload, requirements))
        return settled(data, payload, requirements)

    def void(self, guarantee_id: str, *, by: str) -> None:
        self._call("POST", f"/guarantees/{guarantee_id}/void", {"by": by})

    async def avoid(self, guarantee_id: str, *, by: str) -> None:
        await self._acall("POST", f"/guarantees/{guarantee_id}/void", {"by": by})

    def post_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> None:
        body = {"validator": validator, "score": score, "tag": tag}
        self._call("POST", f"/guarantees/{guarantee_id}/validation", body)

    async def apost_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> None:
        body = {"validator": validator, "score": score, "tag": tag}
        await self._acall("POST", f"/guarantees/{guarantee_id}/validation", body)

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
        if self._apool is not None and self._apool[0] is asyncio.get_running_loop():
            await self._apool[1].aclose()
        self._apool = None


def _until(deadline: float, chunks: Any) -> Any:
    """``chunks`` of an answer, read until ``deadline`` at most: a facilitator sending one byte
    now and then holds a paid request for ``timeout`` in all, not for each read."""
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the facilitator's answer took longer than its timeout")
        yield chunk


def _raise_tab_limit(status: int, retry_after: str | None, content: bytes) -> None:
    """A 429 refusing a new tab (``tab_rate_limited``, ``open_tab_limit``) is an answer, not
    an outage: raised at once as :class:`TabLimited` with the facilitator's wait, which a
    window of a minute would outlast any retry."""
    if status != 429:
        return
    try:
        data = loads(content)
    except ValueError:
        return
    reason = data.get("reason") if isinstance(data, dict) else None
    if reason not in (Reason.TAB_RATE_LIMITED, Reason.OPEN_TAB_LIMIT):
        return
    wait = (
        float(retry_after) if retry_after and retry_after.isascii() and retry_after.isdigit() else 1
    )
    message = data.get("error")
    raise TabLimited(
        message[:200] if isinstance(message, str) else None, reason=reason, retry_after=wait
    )


def _kinds(data: Any) -> list[dict[str, Any]]:
    kinds = data.get("kinds", []) if isinstance(data, dict) else None
    if not isinstance(kinds, list) or not all(isinstance(k, dict) for k in kinds):
        raise Unavailable("facilitator /supported answer is malformed")
    return kinds
