"""Buying paid MCP tools: an MCP client session whose tool calls are paid (docs/mcp.md).

Needs the ``mcp`` extra (the official MCP Python SDK, 1.x). A tool call answered 402 is paid
by the buyer's :class:`~.transport.AsyncPaymentTransport` under its spending policy and sent
again (with the same ``Mcp-Session-Id``); the caller gets the tool's result.

    from fourmica_x402.client import SpendingPolicy
    from fourmica_x402.client.mcp import paid_session

    policy = SpendingPolicy(max_per_request="$0.05")
    async with paid_session(URL, KEY, policy=policy, task="research", budget="$0.10") as session:
        result = await session.call_tool("search", {"query": "x402"})

A payment the policy refuses (a budget used up, a blocked seller…) or the seller refuses is
raised from the call as the :class:`~fourmica_x402.errors.PaymentRefused` the transport raised
(``BudgetExhausted``…), with its receipt; nothing was signed for a policy refusal, and the
session goes on. The SDK would otherwise end the whole session on it.

The budget of ``task=`` covers every call of the session: the SDK sends requests from tasks it
starts when the session opens, so a ``policy.task(...)`` block must be entered before the
session opens to cover its calls (``task=`` does that).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import coincurve
import httpx
from mcp import ClientSession
from mcp.shared.exceptions import McpError

from .._json import loads
from ..errors import PaymentRefused
from .answers import AnswerTooLarge, aread_answer
from .keys import BuyerKey
from .policy import Money, SpendingPolicy
from .receipts import ReceiptLedger
from .transport import AsyncPaymentTransport

__all__ = [
    "PAYMENT_REFUSED",
    "SELLER_REFUSED",
    "McpPaymentTransport",
    "PaidClientSession",
    "client_factory",
    "paid_session",
]

#: The JSON-RPC error code of a call whose payment was refused (as HTTP's 402).
PAYMENT_REFUSED = 402
#: The JSON-RPC error code of a call the seller's gate refused with a 4xx or 5xx, or of a tool
#: call answered with a redirect (its reason code in ``data.reason``): an invalid or too large
#: request, an unknown tool…
SELLER_REFUSED = -32001

Key = str | bytes | coincurve.PrivateKey | BuyerKey


class McpPaymentTransport(httpx.AsyncBaseTransport):
    """:class:`AsyncPaymentTransport` for an MCP session: a refused payment, or a gate's error
    answer to a JSON-RPC request, becomes a JSON-RPC error answering that request (kept for
    :class:`PaidClientSession` to raise), instead of ending the SDK's session."""

    def __init__(
        self,
        key: Key,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.paying = AsyncPaymentTransport(key, policy=policy, ledger=ledger, transport=transport)
        self.refusals: dict[str, PaymentRefused] = {}
        self._tokens = itertools.count(1)

    @property
    def policy(self) -> SpendingPolicy:
        return self.paying.flow.policy

    @property
    def ledger(self) -> ReceiptLedger:
        """The receipts of this transport's payments (docs/buyer.md, "Receipts")."""
        return self.paying.flow.ledger

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        rid, tool = _request_id(request), _tool_call(request)
        if tool:
            try:
                response = await self.paying.handle_async_request(request)
            except PaymentRefused as exc:
                if rid is None:
                    raise
                token = f"refusal-{next(self._tokens)}"
                self.refusals[token] = exc
                refused = {"reason": exc.reason, "fourmica_refusal": token}
                return _error(request, rid, PAYMENT_REFUSED, str(exc.message), refused)
        else:  # only a tool call is ever paid (docs/mcp.md): not the GET stream, a resumption,
            # a notification or a listing, which a seller could price to drain the buyer
            response = await self.paying._inner.handle_async_request(request)
            if response.status_code == 402:
                await response.aclose()  # its body is not read: nothing of it is paid
                if rid is not None:
                    data = {"reason": "payment_required", "status": 402}
                    return _error(request, rid, SELLER_REFUSED, _UNPAID, data)
                # a notification goes unanswered anyway; a GET stream the SDK does without
                return httpx.Response(202 if request.method == "POST" else 405, request=request)
        if response.is_success or response.status_code == 404 or rid is None:  # 404: ended
            return response
        if response.is_redirect and not tool:  # the SDK follows one within the endpoint's
            return response  # origin (a trailing slash); a tool call's payment went with it
        try:
            await aread_answer(response)  # bounded: a seller's error cannot fill the memory
        except AnswerTooLarge:
            response._content = b""
        reason, message = _gate_error(response)
        if response.is_redirect:  # docs/mcp.md, "Redirects"
            message += " (a redirect): a tool call is not redirected"
        answered = {"reason": reason, "status": response.status_code}
        return _error(request, rid, SELLER_REFUSED, message, answered)

    def take(self, error: McpError) -> PaymentRefused | None:
        """The refusal an MCP error stands for, if it stands for one (given once)."""
        data = error.error.data
        token = data.get("fourmica_refusal") if isinstance(data, dict) else None
        return None if token is None else self.refusals.pop(str(token), None)

    async def aclose(self) -> None:
        await self.paying.aclose()


_UNPAID = "the seller asks a payment for something other than a tool call: not paid"


def _tool_call(request: httpx.Request) -> bool:
    """Whether ``request`` is a POST of one JSON-RPC ``tools/call`` request."""
    if request.method != "POST":
        return False
    try:
        message = json.loads(request.content)  # the buyer's own request
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("method") == "tools/call" and "id" in message


def _request_id(request: httpx.Request) -> str | int | None:
    """The id of the JSON-RPC request ``request`` carries (None: a notification, a batch…)."""
    try:
        message = json.loads(request.content)  # the buyer's own request
    except (ValueError, RecursionError):
        return None
    rid = message.get("id") if isinstance(message, dict) and "method" in message else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


def _gate_error(response: httpx.Response) -> tuple[str, str]:
    """The gate's ``{"error", "message"}`` of an error answer (docs/protocol.md)."""
    try:
        body = loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], str(body.get("message") or body["error"])
    return f"http_{response.status_code}", f"the seller answered {response.status_code}"


def _error(
    request: httpx.Request, rid: str | int, code: int, message: str, data: dict[str, Any]
) -> httpx.Response:
    error = {"code": code, "message": message, "data": data}
    return httpx.Response(200, json={"jsonrpc": "2.0", "id": rid, "error": error}, request=request)


class PaidClientSession(ClientSession):
    """An MCP ``ClientSession`` that raises a refused payment as the transport's
    :class:`~fourmica_x402.errors.PaymentRefused` (``BudgetExhausted``…), not an ``McpError``."""

    def __init__(self, *args: Any, payments: McpPaymentTransport, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The transport paying this session's calls (its ``ledger`` holds their receipts).
        self.payments = payments

    async def send_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().send_request(*args, **kwargs)
        except McpError as exc:
            refusal = self.payments.take(exc)
            if refusal is not None:
                raise refusal from None
            raise


def client_factory(
    payments: McpPaymentTransport,
) -> Callable[..., httpx.AsyncClient]:
    """An ``httpx_client_factory`` for the SDK's ``streamablehttp_client``: its clients pay
    through ``payments``."""

    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        auth: httpx.Auth | None = None,
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=payments,
            headers=headers,
            timeout=timeout or httpx.Timeout(30.0, read=300.0),  # the SDK's own defaults
            auth=auth,
        )

    return factory


@contextlib.asynccontextmanager
async def paid_session(
    url: str,
    key: Key,
    *,
    policy: SpendingPolicy | None = None,
    task: str | None = None,
    budget: Money | None = None,
    ledger: ReceiptLedger | None = None,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **session: Any,
) -> AsyncIterator[PaidClientSession]:
    """An initialized MCP session with the streamable-HTTP server at ``url``, its tool calls
    paid with ``key`` under ``policy``; with ``task``, all of them under that task's
    ``budget``. ``transport``: the HTTP transport under the payments (tests); ``session``:
    more ``ClientSession`` options (``read_timeout_seconds``, callbacks…)."""
    policy = policy or SpendingPolicy()
    payments = McpPaymentTransport(key, policy=policy, ledger=ledger, transport=transport)
    with contextlib.ExitStack() as tasks:
        if task is not None:  # entered before the SDK starts its tasks: they inherit it
            tasks.enter_context(policy.task(task, budget))
        async with (
            _streams(url, payments, headers) as (read, write, _),
            PaidClientSession(read, write, payments=payments, **session) as opened,
        ):
            await opened.initialize()
            yield opened


@contextlib.asynccontextmanager
async def _streams(
    url: str, payments: McpPaymentTransport, headers: dict[str, str] | None
) -> AsyncIterator[Any]:
    """The SDK's streamable-HTTP streams over a client paying through ``payments``
    (``streamable_http_client`` where the SDK has it, else ``streamablehttp_client``)."""
    from mcp.client import streamable_http as sdk

    factory = client_factory(payments)
    if hasattr(sdk, "streamable_http_client"):
        async with (
            factory(headers=headers) as client,
            sdk.streamable_http_client(url, http_client=client) as streams,
        ):
            yield streams
    else:  # an older SDK
        async with sdk.streamablehttp_client(
            url, headers=headers, httpx_client_factory=factory
        ) as streams:
            yield streams
