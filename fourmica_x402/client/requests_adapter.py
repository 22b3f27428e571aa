"""A ``requests`` transport adapter that pays 402s: :class:`PaymentAdapter`.

The same buyer flow, policy, receipts and errors as the httpx transports
(:mod:`.transport`); this module only performs the flow's HTTP calls with ``requests``.

    import requests
    from fourmica_x402.client import SpendingPolicy
    from fourmica_x402.client.requests_adapter import PaymentAdapter

    session = requests.Session()
    adapter = PaymentAdapter(KEY, policy=SpendingPolicy(max_per_request="$0.05"))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    response = session.get("https://api.example.com/premium")
    print(response.fourmica_receipt)   # on paid responses (the httpx RECEIPT_KEY)

Refusals raise the same :class:`~fourmica_x402.errors.PaymentRefused` subclasses, out of
``session.get``. Needs ``pip install 'fourmica-x402[requests]'``.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import coincurve
import httpx

try:
    import requests
    from requests.adapters import BaseAdapter, HTTPAdapter
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fourmica_x402.client.requests_adapter needs requests: "
        "pip install 'fourmica-x402[requests]'"
    ) from exc

from .flow import CALL_RECEIPT_KEY, NEVER_SENT_MARK, PAID_CALL_KEY, RECEIPT_KEY, BuyerFlow
from .keys import BuyerKey
from .policy import SpendingPolicy
from .receipts import ReceiptLedger
from .transport import drive

__all__ = ["PaymentAdapter"]

#: Marks the caller's request (and the flow's paid retry, which copies its extensions).
_CALLER = "fourmica_requests_caller"
#: How many redirected paid calls the adapter remembers (each is one redirect chain).
_PAID_CALLS_KEPT = 1024
#: Calls whose paid answer was a redirect, by their hooks dict and buyer: (the hooks, the
#: request, its receipt). One record for every adapter of the process: a session mounting one for "http://"
#: and another for "https://" hands a redirect hop to the other, and the call still pays once.
_PAID_CALLS: OrderedDict[tuple[int, str], tuple[Any, Any, Any]] = OrderedDict()
_PAID_LOCK = threading.Lock()
#: Headers that belong to one connection or one encoding, never copied between requests.
_HOP = frozenset({"host", "content-length", "transfer-encoding", "content-encoding"})


class PaymentAdapter(BaseAdapter):  # type: ignore[misc]
    """Pays for 402 responses on the way through, then returns the paid response.

    ``adapter``: the adapter that does the HTTP (default a fresh ``HTTPAdapter``; pass your
    own for retries or pool sizes)."""

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
        adapter: BaseAdapter | None = None,
    ) -> None:
        super().__init__()
        self.flow = BuyerFlow(key, policy=policy, ledger=ledger)
        self._inner = adapter if adapter is not None else HTTPAdapter()

    def __repr__(self) -> str:
        return f"PaymentAdapter(address={self.flow.address})"

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        _buffer(request)  # the body is sent twice when the first answer is a 402
        options = {"timeout": timeout, "verify": verify, "cert": cert, "proxies": proxies}
        caller = _view(request)
        # requests copies a request for each redirect it follows; the copies share its hooks
        # dict, so that names the call (one call pays once: docs/buyer.md, "Redirects").
        call = (id(request.hooks), self.flow.address)  # this buyer's call
        with _PAID_LOCK:
            paid = _PAID_CALLS.get(call)
            if paid is not None and paid[1]() is not request:  # a hop, not the call sent again
                caller.extensions[PAID_CALL_KEY] = paid[1]
                caller.extensions[CALL_RECEIPT_KEY] = paid[2]
        seen: dict[int, requests.Response] = {}

        def send(outgoing: httpx.Request) -> httpx.Response:
            own = False
            if outgoing is caller:
                prepared = request
            elif outgoing.extensions.get(_CALLER):  # the paid retry: the caller's, plus payment
                prepared = request.copy()
                for name, value in outgoing.headers.multi_items():
                    if name.lower() not in _HOP and name not in prepared.headers:
                        prepared.headers[name] = value
            else:  # the flow's own calls: the tab endpoint, the Core's public parameters
                own = True
                prepared = requests.PreparedRequest()
                prepared.prepare(
                    method=outgoing.method,
                    url=str(outgoing.url),
                    headers={k: v for k, v in outgoing.headers.items() if k.lower() not in _HOP},
                    data=outgoing.content or None,
                )
            # Streamed: the session reads the final body itself unless its caller streams.
            try:
                got = self._inner.send(prepared, stream=True, **options)
            except requests.exceptions.ConnectionError as exc:
                if outgoing.extensions.get(_CALLER) and _never_sent(exc, self._inner):
                    setattr(exc, NEVER_SENT_MARK, True)  # the paid retry never left
                if not own or isinstance(exc, requests.exceptions.Timeout):
                    raise
                # the flow's own calls are tried once more when the connection dropped
                dropped = _Dropped(*exc.args)
                dropped.request, dropped.response = exc.request, exc.response
                raise dropped from exc
            answer = httpx.Response(
                got.status_code,
                headers=[
                    (_raw(k), _raw(v)) for k, v in got.headers.items() if k.lower() not in _HOP
                ],
                stream=_Body(got),
                request=outgoing,
            )
            seen[id(answer)] = got
            return answer

        try:
            final = drive(self.flow, caller, send)
        finally:
            mark = caller.extensions.get(PAID_CALL_KEY)
            if mark is not None and mark() is caller:  # paid now, and redirected
                self._remember_paid(call, request, caller.extensions.get(CALL_RECEIPT_KEY))
        response = seen[id(final)]
        receipt = final.extensions.get(RECEIPT_KEY)
        if receipt is not None:
            setattr(response, RECEIPT_KEY, receipt)
        return response

    @staticmethod
    def _remember_paid(
        call: tuple[int, str], request: requests.PreparedRequest, receipt: Any
    ) -> None:
        with _PAID_LOCK:  # the hooks are held: their id cannot name another call meanwhile
            _PAID_CALLS[call] = (request.hooks, weakref.ref(request), receipt)
            _PAID_CALLS.move_to_end(call)
            while len(_PAID_CALLS) > _PAID_CALLS_KEPT:
                _PAID_CALLS.popitem(last=False)

    def close(self) -> None:
        self._inner.close()


class _Dropped(requests.exceptions.ConnectionError, ConnectionError):
    """A requests connection error the buyer flow recognises as a dropped connection; still
    a ``requests.ConnectionError`` for the caller when the second try fails too."""


def _never_sent(exc: requests.exceptions.ConnectionError, inner: Any) -> bool:
    """Whether no byte of the request left: no connection could be opened (a connect
    timeout, or urllib3's NewConnectionError: refused, unreachable, a name that does not
    resolve), by an adapter that retries nothing once a request was sent. urllib3 reports the
    last try's error only: after a read error or a status it retried, a request did leave."""
    retries = getattr(inner, "max_retries", None)
    if retries is not None and retries.total not in (0, False):
        sent_again = retries.read not in (0, False) or retries.other not in (0, False)
        if sent_again or retries.status_forcelist:
            return False
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    from urllib3.exceptions import NewConnectionError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


class _Body(httpx.SyncByteStream):
    """A requests response's body as the flow reads it (``requests`` keeps it, decoded)."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        # Read in decoded chunks, so the flow's limit stops a huge (or compressed-huge) body
        # early; then kept as requests keeps a body it read, and the connection goes back to
        # the pool. A response the flow hands back unread is never read here.
        chunks: list[bytes] = []
        try:
            for chunk in self._response.iter_content(chunk_size=64 * 1024):
                chunks.append(chunk)
                yield chunk
        finally:
            self._response._content = b"".join(chunks)
            self._response.close()

    def close(self) -> None:  # the response may be the one handed back: it stays open
        pass


def _view(request: requests.PreparedRequest) -> httpx.Request:
    """The caller's request as the flow sees it (it reads URL, method, headers and body)."""
    body = request.body  # bytes, text or None once buffered
    content = body.encode("utf-8") if isinstance(body, str) else body
    try:
        return httpx.Request(
            request.method or "GET",
            request.url or "",
            headers=[
                (_raw(k), _raw(v)) for k, v in request.headers.items() if k.lower() not in _HOP
            ],
            content=content if isinstance(content, bytes) else None,
            extensions={_CALLER: True},
        )
    except (httpx.InvalidURL, UnicodeError) as exc:  # one requests takes (a redirect to it)
        raise requests.exceptions.InvalidURL(str(exc), request=request) from None


def _raw(value: str | bytes) -> bytes:
    """A header value as bytes on the wire: requests and http.client read and write them as
    latin-1 (httpx would refuse a ``str`` that is not ASCII)."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _buffer(request: requests.PreparedRequest) -> None:
    """Read a streamed body (file or iterator) into bytes, so it can be sent again."""
    body = request.body
    if body is None or isinstance(body, bytes | str):
        return
    if hasattr(body, "read"):
        data = body.read()
    else:
        data = b"".join(c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in body)
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    request.body = data
    request.headers.pop("Transfer-Encoding", None)
    request.headers["Content-Length"] = str(len(data))
