"""httpx transports that pay 402s: :class:`PaymentTransport` (sync) and :class:`AsyncPaymentTransport`.

Both drive the same :class:`~.flow.BuyerFlow` with the buyer's one sync and one async driver
(:mod:`._steps`); they only perform its I/O. :func:`drive` runs the flow synchronously (the
``requests`` adapter uses it too).

    import httpx
    from fourmica_x402.client import PaymentTransport, SpendingPolicy

    transport = PaymentTransport(KEY, policy=SpendingPolicy(max_per_request="$0.05"))
    with httpx.Client(transport=transport) as client:
        response = client.get("https://api.example.com/premium")
        print(response.extensions["fourmica_receipt"])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import coincurve
import httpx

from ._steps import run_async, run_sync
from .answers import read_answer
from .flow import BuyerFlow
from .heads import bound
from .keys import BuyerKey
from .policy import SpendingPolicy
from .receipts import ReceiptLedger

__all__ = ["AsyncPaymentTransport", "PaymentTransport", "drive"]


def drive(
    flow: BuyerFlow,
    request: httpx.Request,
    send: Callable[[httpx.Request], httpx.Response],
    read: Callable[[httpx.Response], Any] = read_answer,
) -> httpx.Response:
    """Run the buyer flow for ``request`` synchronously: ``send`` performs each HTTP call,
    ``read`` reads a response to its end; approval callbacks may be sync or async."""
    return run_sync(flow.run(request), send, flow.policy.approve, read)


class PaymentTransport(httpx.BaseTransport):
    """Pays for 402 responses on the way through, then returns the paid response."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.flow = BuyerFlow(key, policy=policy, ledger=ledger)
        self._inner = transport or httpx.HTTPTransport()
        bound(self._inner)  # the heads of answers bounded in time (docs/buyer.md, "Challenges")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body is sent twice when the first answer is a 402
        return drive(self.flow, request, _timed(request, self._inner.handle_request))

    def close(self) -> None:
        self._inner.close()


class AsyncPaymentTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`PaymentTransport` (same flow, same policy rules)."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.flow = BuyerFlow(key, policy=policy, ledger=ledger)
        self._inner = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        flow = self.flow
        send = _timed(request, self._inner.handle_async_request)
        return await run_async(flow.run(request), send, flow.policy.approve)

    async def aclose(self) -> None:
        await self._inner.aclose()


class EnvironmentTransport(httpx.BaseTransport):
    """Sends each request as a default ``httpx.Client`` does: through the proxy that
    ``HTTP_PROXY``, ``HTTPS_PROXY`` or ``ALL_PROXY`` names for its URL (``NO_PROXY``
    honoured), else directly. httpx reads no proxy from the environment for a client given a
    transport, so ``fourmica-x402 pay`` gives its :class:`PaymentTransport` this one, and the
    flow's own calls go through the proxy too (docs/buyer.md, "Where the buyer connects")."""

    def __init__(self) -> None:
        self._client = httpx.Client()  # trust_env: the environment's proxies, per URL
        bound(self._client)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._client.send(request, stream=True)  # its timeouts: the request's own
        finally:
            self._client.cookies.clear()  # the calling client keeps cookies, not this one

    def close(self) -> None:
        self._client.close()


T = TypeVar("T")


def _timed(
    caller: httpx.Request, send: Callable[[httpx.Request], T]
) -> Callable[[httpx.Request], T]:
    """``send``, the flow's own calls (the tab endpoint, the Core's parameters) given the
    caller's timeouts: they are requests of the flow's making, which httpx gave none."""
    timeout = caller.extensions.get("timeout")

    def timed(request: httpx.Request) -> T:
        if timeout is not None and "timeout" not in request.extensions:
            request.extensions["timeout"] = timeout
        return send(request)

    return timed
