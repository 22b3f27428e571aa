"""httpx transports that pay 402s: :class:`PaymentTransport` (sync) and :class:`AsyncPaymentTransport`.

Both drive the same :class:`~.flow.BuyerFlow`; they only perform its I/O.

    import httpx
    from fourmica_x402.client import PaymentTransport, SpendingPolicy

    transport = PaymentTransport(KEY, policy=SpendingPolicy(max_per_request="$0.05"))
    with httpx.Client(transport=transport) as client:
        response = client.get("https://api.example.com/premium")
        print(response.extensions["fourmica_receipt"])
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import coincurve
import httpx

from .flow import Approve, BuyerFlow, Read, Send
from .policy import SpendingPolicy
from .receipts import ReceiptLedger

__all__ = ["AsyncPaymentTransport", "PaymentTransport"]


class PaymentTransport(httpx.BaseTransport):
    """Pays for 402 responses on the way through, then returns the paid response."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.flow = BuyerFlow(key, policy=policy, ledger=ledger)
        self._inner = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body is sent twice when the first answer is a 402
        flow = self.flow.run(request)
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                response: httpx.Response = stop.value
                return response
            result, error = None, None
            try:
                if isinstance(step, Send):
                    result = self._inner.handle_request(step.request)
                elif isinstance(step, Read):
                    step.response.read()
                elif isinstance(step, Approve):
                    result = self.flow.policy.approve(step.request)  # type: ignore[misc]
                    if inspect.isawaitable(result):
                        result = asyncio.run(_await(result))
            except Exception as exc:
                error = exc

    def close(self) -> None:
        self._inner.close()


class AsyncPaymentTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`PaymentTransport` (same flow, same policy rules)."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.flow = BuyerFlow(key, policy=policy, ledger=ledger)
        self._inner = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        flow = self.flow.run(request)
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                response: httpx.Response = stop.value
                return response
            result, error = None, None
            try:
                if isinstance(step, Send):
                    result = await self._inner.handle_async_request(step.request)
                elif isinstance(step, Read):
                    await step.response.aread()
                elif isinstance(step, Approve):
                    result = self.flow.policy.approve(step.request)  # type: ignore[misc]
                    if inspect.isawaitable(result):
                        result = await result
            except Exception as exc:
                error = exc

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _await(awaitable: Any) -> Any:
    return await awaitable
