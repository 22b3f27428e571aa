"""Paid MCP tools: a tool server whose tools are priced per call (docs/mcp.md).

The MCP streamable-HTTP transport sends every JSON-RPC message as a ``POST`` to one endpoint
(``/mcp``); the price of a request is the price of the tool a ``tools/call`` names. The gate
reads the body before pricing it (the ASGI adapter buffers it, at most ``BODY_LIMIT`` bytes,
and replays it to the app), then:

- a single message that is not a ``tools/call`` (``initialize``, ``tools/list``, a
  notification, a response…) and a call of a free tool pass free;
- a ``tools/call`` of a priced tool is priced at that tool's price and paid as any route;
- a request reusing the id of one still in flight in its session is refused (409): the server
  answers by id, so it would get the other request's answer; so, for good, is one reusing the
  id of a request that ended unanswered (the client left): the server may answer it still;
- anything the gate cannot read the same way the server will is refused before any payment:
  a body too large (413), not UTF-8 JSON, with a duplicated key, not a JSON-RPC message, a
  batch holding a call, a tool name that is not listed, or that differs from a listed one
  only in case, spaces or invisible characters (400).

A paid call whose answer is a JSON-RPC error, a tool result with ``isError``, or carries
another id than the call's was not delivered: the payment is refunded (docs/mcp.md).

    tools = McpTools({"search": "$0.01", "summarize": "$0.05", "ping": None})
    config = tools.config(pay_to=SELLER, path="/mcp")
    app = PaymentMiddleware(mcp_server.streamable_http_app(), config=config)

Only the pure-ASGI adapter (``fourmica_x402.adapters.asgi``) can read the body first; with
another adapter a priced MCP request is refused (500 ``mcp_unsupported_adapter``).
"""

from __future__ import annotations

import json
import unicodedata
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._json import loads_checked, no_duplicates
from .config import PaymentConfig
from .errors import ConfigurationError
from .gate.types import GRANT, RequestView, Response, error_response
from .networks import Price
from .routes import Route, RouteConfig, validate_marker
from .wire import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER

__all__ = [
    "AMBIGUOUS_TOOL",
    "BATCH_REFUSED",
    "BODY_TOO_LARGE",
    "ID_IN_USE",
    "INVALID_REQUEST",
    "McpTools",
    "REFUSE",
    "TOOL_ERROR",
    "ToolCall",
    "ToolPrice",
    "UNKNOWN_TOOL",
    "UNSUPPORTED_ADAPTER",
    "classify",
]

#: Reason codes (stable; docs/mcp.md, "Reason codes").
BODY_TOO_LARGE: Final = "mcp_body_too_large"
INVALID_REQUEST: Final = "mcp_invalid_request"
BATCH_REFUSED: Final = "mcp_batch_refused"
UNKNOWN_TOOL: Final = "mcp_unknown_tool"
AMBIGUOUS_TOOL: Final = "mcp_ambiguous_tool"
UNSUPPORTED_ADAPTER: Final = "mcp_unsupported_adapter"
ID_IN_USE: Final = "mcp_request_id_in_use"
#: What the delivery record says of a paid call answered with an error (refunded).
TOOL_ERROR: Final = "mcp_tool_error"

#: ``default=REFUSE``: a tool that ``prices`` does not name is refused (the default).
REFUSE: Final = object()

TOOLS_CALL = "tools/call"
#: Ids of paid calls left unanswered kept per tool server (the oldest forgotten first).
UNANSWERED_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A single ``tools/call`` request: the tool's name as sent, and its JSON-RPC id (the
    answer that delivers it carries the same)."""

    name: str
    id: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    message: str

    def response(self) -> Response:
        return error_response(self.status, self.reason, self.message)


#: A body's reading: a tool call, None (no tool is called: free), or a refusal.
Reading = ToolCall | Refusal | None


def _fold(text: str) -> str:
    """A name as a lenient server might read it: NFKC, case folded, without spaces or
    invisible characters. Two names with the same fold are the same tool to the gate."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if unicodedata.category(c)[0] not in "CZ")


def _parse(body: bytes) -> Any:
    """The JSON of ``body`` (strict UTF-8, no BOM, no duplicated key); ValueError else."""
    return loads_checked(body.decode("utf-8"), object_pairs_hook=no_duplicates)


def _message(value: Any) -> Reading:
    """One JSON-RPC message's reading."""
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        return Refusal(400, INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    method = value.get("method")
    if method is None:  # a response to the server, or an error: no tool runs
        return None
    if not isinstance(method, str):
        return Refusal(400, INVALID_REQUEST, "a JSON-RPC method must be a string")
    if method != TOOLS_CALL:
        if _fold(method) == _fold(TOOLS_CALL):
            return Refusal(400, AMBIGUOUS_TOOL, f"method {method!r} is not {TOOLS_CALL!r}")
        return None
    params = value.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    if not isinstance(name, str):
        return Refusal(400, INVALID_REQUEST, "tools/call needs params.name, a string")
    return ToolCall(name, value.get("id"))


def classify(body: bytes | None) -> Reading:
    """What a request body asks for: a :class:`ToolCall`, None (free), or a refusal.

    ``body`` None: longer than the gate reads (413). A batch (a JSON array) passes free only
    when none of its messages calls a tool: one price never buys several calls.
    """
    if body is None:
        return Refusal(413, BODY_TOO_LARGE, "the JSON-RPC body is too large to be priced")
    try:
        value = _parse(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Refusal(
            400, INVALID_REQUEST, "the body is not UTF-8 JSON (or repeats a key, or nests too deep)"
        )
    if not isinstance(value, list):
        return _message(value)
    if not value:
        return Refusal(400, INVALID_REQUEST, "an empty JSON-RPC batch")
    for each in value:
        reading = _message(each)
        if isinstance(reading, ToolCall):
            return Refusal(400, BATCH_REFUSED, "a batch may not call a tool; send it alone")
        if reading is not None:
            return reading
    return None


async def peek(request: RequestView) -> bytes | Refusal | None:
    """The request body, None when too large, or a refusal: the adapter cannot replay it."""
    body = request.read_body
    reader = getattr(body, "peek", None)
    if reader is None:  # reading it would leave the app without it
        return Refusal(
            500,
            UNSUPPORTED_ADAPTER,
            "paid MCP tools need the ASGI adapter (fourmica_x402.adapters.asgi)",
        )
    got: bytes | None = await reader()
    return got


class ToolPrice:
    """A route's price: the price of the tool the request calls. The ASGI adapter also asks
    it whether a paid answer was delivered (:meth:`judge_response`)."""

    def __init__(self, tools: McpTools) -> None:
        self.tools = tools

    async def __call__(self, request: RequestView) -> Price:
        reading = await self.tools.read(request)
        if isinstance(reading, ToolCall):
            price = self.tools.lookup(reading.name)
            if price is not None and not isinstance(price, Refusal):
                return price
        # on_protected_request answered every other request before it was priced
        raise ConfigurationError(
            "this MCP request is not a priced tool call: set "
            "on_protected_request=tools.on_protected_request (or use McpTools.config)"
        )

    async def unanswered(self, request: RequestView) -> None:
        """The ASGI adapter: a paid call's request ended before its answer went out."""
        self.tools._left(await self.tools.session_ids(request))

    def judge_response(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        request: RequestView | None = None,
    ) -> str | None:
        """Why a paid call's 2xx answer was not delivered, or None (delivered). With the
        ``request``, only an answer carrying its JSON-RPC id counts: a session's server may
        route another request's answer to it."""
        headers = list(headers)
        if body is not None:  # compressed inside the gate (a GZip middleware): read it decoded
            body = _decoded(
                next((v for k, v in headers if k.lower() == "content-encoding"), ""), body
            )
        if body is None or not 200 <= status < 300:
            return None  # too long or unreadable here (judged by its status), or not a 2xx
        kind = next((v for k, v in headers if k.lower() == "content-type"), "").lower()
        if kind.startswith("text/event-stream"):
            messages = list(_sse_messages(body))
        elif kind.startswith("application/json"):
            messages = list(_json_messages(body))
        else:  # no MCP answer at all: an error page, an app's error handler's text
            return TOOL_ERROR
        answers = [m for m in messages if "result" in m or "error" in m]
        call = None if request is None else self.tools._calls.get(request.read_body)
        if call is not None:
            answers = [m for m in answers if m.get("id") == call.id]
        if not answers:
            return TOOL_ERROR  # the stream ended before the call was answered
        if any("error" in m for m in answers):
            return TOOL_ERROR
        if not self.tools.charge_tool_errors and any(
            isinstance(m.get("result"), dict) and m["result"].get("isError") is True
            for m in answers
        ):
            return TOOL_ERROR
        return None


#: The most of a compressed answer decoded to judge it; past it, its status judges it.
DECODED_LIMIT = 4 * 1024 * 1024


def _decoded(encoding: str, body: bytes) -> bytes | None:
    """``body`` without its ``Content-Encoding`` (gzip, deflate); None when it cannot be read
    here (another encoding, a corrupt or too large one)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    inflate = zlib.decompressobj(wbits=47)  # a gzip or zlib header, told apart by itself
    try:
        out = inflate.decompress(body, DECODED_LIMIT)
    except zlib.error:
        return None
    return None if inflate.unconsumed_tail or not inflate.eof else out


def _json_messages(body: bytes) -> Iterable[dict[str, Any]]:
    """The JSON-RPC messages of the server's own answer: read as ``json.loads`` reads it (the
    answer the buyer got; it may nest deeper than a request the gate accepts)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return
    for each in value if isinstance(value, list) else [value]:
        if isinstance(each, dict):
            yield each


def _sse_messages(body: bytes) -> Iterable[dict[str, Any]]:
    """The JSON-RPC messages of an SSE stream's ``data:`` fields, one per event."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for event in text.split("\n\n"):
        data = [
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        ]
        if data:
            yield from _json_messages("\n".join(data).encode())


class McpTools:
    """Per-call prices of an MCP server's tools.

    ``prices``: tool name → price (``"$0.01"``, atomic units, a ``TokenAmount``…), or None for
    a free tool; names are matched exactly. ``default``: the price of a tool ``prices`` does
    not name — :data:`REFUSE` (the default) refuses it (400 ``mcp_unknown_tool``), None serves
    it free. ``charge_tool_errors``: charge a call whose tool result says ``isError`` (by
    default it is refunded, as a JSON-RPC error always is).
    """

    def __init__(
        self,
        prices: Mapping[str, Price | None],
        *,
        default: Price | object | None = REFUSE,
        charge_tool_errors: bool = False,
    ) -> None:
        self.prices = dict(prices)
        self.default = default
        self.charge_tool_errors = charge_tool_errors
        folds: dict[str, str] = {}
        for name in self.prices:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"a tool name must be a non-empty string, not {name!r}")
            other = folds.setdefault(_fold(name), name)
            if other != name:
                raise ConfigurationError(
                    f"tools {other!r} and {name!r} differ only in case or spaces"
                )
        self._folds = folds
        #: The route's price (one object: :meth:`on_protected_request` knows its routes by it).
        self.price = ToolPrice(self)
        #: (session, request id) → the body of the request in flight with it: the server routes
        #: answers by id, so a second request reusing one would get the first one's answer.
        self._inflight: weakref.WeakValueDictionary[tuple[int, str], Any] = (
            weakref.WeakValueDictionary()
        )
        #: The tool call :meth:`read` found in each request body (while the request lives).
        self._calls: weakref.WeakKeyDictionary[Any, ToolCall] = weakref.WeakKeyDictionary()
        #: (session, request id) of requests that ended unanswered: never reused.
        self.unanswered: OrderedDict[tuple[int, str], None] = OrderedDict()

    def lookup(self, name: str) -> Price | Refusal | None:
        """The price of calling ``name``: a price, None (free), or a refusal."""
        if name in self.prices:
            return self.prices[name]
        if _fold(name) in self._folds:
            listed = self._folds[_fold(name)]
            return Refusal(
                400, AMBIGUOUS_TOOL, f"tool {name!r} is not {listed!r}; send its exact name"
            )
        if self.default is REFUSE:
            return Refusal(400, UNKNOWN_TOOL, f"tool {name!r} is not sold here")
        return self.default  # type: ignore[return-value]

    async def read(self, request: RequestView) -> Reading:
        """What ``request`` asks for: a call of a priced tool, None (free) or a refusal."""
        body = await peek(request)
        reading = body if isinstance(body, Refusal) else classify(body)
        if not isinstance(reading, ToolCall):
            return reading
        self._calls[request.read_body] = reading  # its answer is judged by its id
        price = self.lookup(reading.name)
        return price if isinstance(price, Refusal) else (None if price is None else reading)

    def route(self, **options: Any) -> RouteConfig:
        """The route of the MCP endpoint (``RouteConfig`` options: description, pay_to…); each
        tool's price is checked now on its network and asset, as a route's (docs/mcp.md)."""
        where = {k: options[k] for k in ("network", "asset", "pay_to") if k in options}
        priced: list[tuple[str, Any]] = [*self.prices.items(), ("(default)", self.default)]
        for name, price in priced:
            if price is not None and price is not REFUSE:
                validate_marker(RouteConfig(price=price, **where), f"MCP tool {name!r}")
        return RouteConfig(price=self.price, **options)

    def owns(self, route: Route) -> bool:
        return route.config.price is self.price

    async def on_protected_request(self, request: RequestView, route: Route) -> Any:
        """The gate's hook for this server's route: GRANT (free), a refusal, or None (priced)."""
        if not self.owns(route):
            return None
        if request.method.upper() != "POST":  # the GET stream, a DELETE: no tool is called
            return GRANT
        reading = await self.read(request)
        if isinstance(reading, Refusal):
            return reading.response()
        priced = isinstance(reading, ToolCall)
        paying = request.header_values(PAYMENT_SIGNATURE_HEADER) or request.header_values(
            X_PAYMENT_HEADER
        )
        if not priced or paying:  # it may reach the server (an unpaid call is only challenged)
            clash = await self._claim(request)
            if clash is not None:
                return clash.response()
        return None if priced else GRANT

    async def session_ids(self, request: RequestView) -> list[tuple[int, str]]:
        """(hash of session and id, the id's start) of each JSON-RPC request ``request``
        carries, of a fixed size however long either is (none without a session)."""
        session = next(iter(request.header_values("mcp-session-id")), None)
        body = await peek(request)
        if not session or not isinstance(body, bytes):
            return []  # no session (each request is its own), or nothing to read
        messages = _parse(body)
        found = messages if isinstance(messages, list) else [messages]
        ids = [m.get("id") for m in found if isinstance(m, dict) and "method" in m]
        return [(hash((session, str(i))), str(i)[:40]) for i in ids if i is not None]

    async def _claim(self, request: RequestView) -> Refusal | None:
        """Hold ``request``'s JSON-RPC ids in its session while it is in flight; a refusal when
        another request of the session holds one (its answer would go to this one), or one left
        unanswered held it (the server may answer it still)."""
        holder = request.read_body
        keys = await self.session_ids(request)
        for key in keys:
            other = self._inflight.get(key)
            left = key in self.unanswered
            if left or (
                other is not None and other is not holder and not getattr(other, "ended", False)
            ):
                why = "held by a request left unanswered" if left else "in flight"
                return Refusal(409, ID_IN_USE, f"request id {key[1]!r} is {why} in this session")
        for key in keys:
            self._inflight[key] = holder
        if keys and callable(on_end := getattr(holder, "on_end", None)):

            def ended(answered: bool) -> None:
                if not answered:
                    self._left(keys)

            on_end(ended)
        return None

    def _left(self, keys: list[tuple[int, str]]) -> None:
        for key in keys:
            self.unanswered[key] = None
        while len(self.unanswered) > UNANSWERED_KEPT:
            self.unanswered.popitem(last=False)

    def hook(self, then: Any = None) -> Any:
        """:meth:`on_protected_request`, then ``then(request, route)`` (sync or async) for the
        other routes: to keep a hook of your own."""
        if then is None:
            return self.on_protected_request

        async def chained(request: RequestView, route: Route) -> Any:
            if self.owns(route):
                return await self.on_protected_request(request, route)
            got = then(request, route)
            return await got if hasattr(got, "__await__") else got

        return chained

    def config(
        self, *, path: str = "/mcp", route: Mapping[str, Any] | None = None, **options: Any
    ) -> PaymentConfig:
        """A :class:`PaymentConfig` selling the tools at ``POST <path>`` (``options``: its other
        fields; ``routes`` and ``on_protected_request`` are kept beside ours)."""
        routes = dict(options.pop("routes", None) or {})
        given: dict[str, Any] = {k: options[k] for k in ("network", "asset") if k in options}
        routes[f"POST {path}"] = self.route(**{**given, **(route or {})})  # the app's, as default
        hook = self.hook(options.pop("on_protected_request", None))
        return PaymentConfig(routes=routes, on_protected_request=hook, **options)
