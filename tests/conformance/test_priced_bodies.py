"""Routes priced by their request body (a price or ``units`` callable reading
``request.read_body()``) on every adapter: the app runs on exactly the bytes the gate priced,
and a body longer than the gate reads is refused, never priced from nothing
(docs/protocol.md, "Minimums, bundles and prepaid caps")."""

from __future__ import annotations

import inspect
import io
import json
from typing import Any

from fourmica_x402.evidence import request_hash
from fourmica_x402.testing import TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required

CHEAP, DEAR = 10_000, 500_000  # "$0.01", "$0.50"
#: Past the 64 KiB the gate reads: JSON all the same (leading whitespace).
PADDED = b" " * (70 * 1024) + b'{"model": "dear"}'


async def body_of(request: Any) -> bytes:
    body = request.read_body()  # bytes under WSGI and Django, awaitable under ASGI
    return await body if inspect.isawaitable(body) else body  # type: ignore[no-any-return]


async def by_model(request: Any) -> str:
    return "$0.50" if b"dear" in await body_of(request) else "$0.01"


async def lenient(request: Any) -> str:
    """A seller's callable that takes an unreadable body for the cheap default."""
    try:
        return await by_model(request)
    except Exception:
        return "$0.01"


async def lenient_units(request: Any) -> int:
    """Counts one unit, the least, when it cannot read the body."""
    try:
        return 50 if b"dear" in await body_of(request) else 1
    except Exception:
        return 1


async def units(request: Any) -> int:
    first, again = await body_of(request), await body_of(request)  # read twice: the same
    assert first == again
    return int(json.loads(first)["n"])


def post(seller: Any, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST /echo with ``body`` as sent, through the adapter's own test client."""
    client, headers = seller.client, {"content-type": "application/json", **headers}
    if seller.interface_kind == "starlette":
        r = client._client.request("POST", "/echo", headers=headers, content=body)
        return r.status_code, r.content
    if seller.interface_kind == "werkzeug":
        environ = {"REMOTE_ADDR": "127.0.0.1"}
        r = client._client.open(
            "/echo", method="POST", headers=headers, data=body, environ_base=environ
        )
        return r.status_code, r.get_data()
    kind = headers.pop("content-type")
    call = client._client.generic("POST", "/echo", data=body, content_type=kind, headers=headers)
    r = call if client._loop is None else client._loop.run_until_complete(call)
    return r.status_code, r.content


def paid_header(seller: Any, buyer: TestBuyer, body: bytes) -> dict[str, str]:
    """A valid payment for POST /echo as priced for ``body``."""
    status, _ = post(seller, body, {})
    assert status == 402
    resp = seller.request("POST", "/echo", json=json.loads(body))  # the same terms
    (req,) = decode_payment_required(resp.headers["payment-required"]).accepts
    tab = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": req.to_dict()}
    opened = seller.request("POST", "/x402/tab", json=tab)
    name, value = payment_header(buyer, req, opened.json(), version=2)
    return {name: value}


def made(make_seller: Any, base_routes: dict[str, Any], route: Any, **options: Any) -> Any:
    seller = make_seller(routes={**base_routes, "POST /echo": route}, **options)
    kinds = {"starlette": "starlette", "fastapi": "starlette", "wsgi": "werkzeug"}
    seller.interface_kind = kinds.get(seller.kind, "werkzeug" if seller.kind == "flask" else "")
    return seller


def test_a_body_longer_than_the_gate_reads_is_413_never_priced_as_empty(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """The gate read nothing of a body past 64 KiB and handed the price callable b"": it priced
    the cheap default, and the handler then read the whole body, the dear request, paid for
    at the cheap price (on every adapter)."""
    for route in (
        {"price": by_model},
        {"price": lenient},
        {"price": "$0.01", "units": lenient_units},
    ):
        seller = made(make_seller, base_routes, route)  # a callable catching the refusal: alike
        buyer = kit.funded(seller)
        cheap = paid_header(seller, buyer, b'{"model": "cheap"}')
        for headers in ({}, cheap):
            status, body = post(seller, PADDED, headers)
            assert status == 413, (seller.kind, route, status, body[:200])
            assert json.loads(body)["error"] == "body_too_large"
        assert kit.locked(seller, buyer) == 0 and seller.core.guarantees() == []
        assert seller.calls["/echo"] == 0
        status, body = post(seller, b'{"model": "cheap"}', cheap)  # the payment is intact
        assert status == 200 and json.loads(body) == {"echo": {"model": "cheap"}}
        assert kit.locked(seller, buyer) == CHEAP


def test_a_units_count_from_the_body_leaves_the_body_to_the_handler(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """Under WSGI (plain, Flask) the gate's read consumed ``wsgi.input``: the handler got an
    empty body (a 500, a 400) and a second read by the callable got nothing. Now the
    handler reads the very bytes counted, and the record's hash covers them."""
    seller = made(make_seller, base_routes, {"price": "$0.01", "units": units, "max_units": 5})
    buyer = kit.funded(seller)
    sent = b'{"n": 2, "note": "two units"}'
    status, body = post(seller, sent, paid_header(seller, buyer, sent))
    assert status == 200, (seller.kind, status, body[:300])
    assert json.loads(body) == {"echo": {"n": 2, "note": "two units"}}
    assert kit.locked(seller, buyer) == 2 * CHEAP and seller.calls["/echo"] == 1
    (record,) = seller.gate.records.query(payer=buyer.address)
    assert record.request_hash == request_hash("POST", "/echo", "", sent)


def test_a_chunked_wsgi_body_is_priced_whole_or_refused(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """A chunked body (no Content-Length, ``wsgi.input_terminated``) past 64 KiB: the gate read
    64 KiB and a byte of it, priced b"" (cheap), and the handler read the rest, a suffix
    that still parsed as the dear request. Now refused; a short one is served whole."""
    seller = made(make_seller, base_routes, {"price": by_model})
    if seller.interface_kind != "werkzeug":
        return  # ASGI servers and Django hand over a chunked body whole, like any other
    buyer = kit.funded(seller)
    cheap = paid_header(seller, buyer, b'{"model": "cheap"}')

    def chunked(body: bytes) -> tuple[int, bytes]:
        r = seller.client._client.open(
            "/echo",
            method="POST",
            headers={**cheap, "content-type": "application/json", "transfer-encoding": "chunked"},
            input_stream=io.BytesIO(body),
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        return r.status_code, r.get_data()

    status, body = chunked(PADDED)
    assert status == 413 and json.loads(body)["error"] == "body_too_large", (status, body[:200])
    assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0
    status, body = chunked(b'{"model": "cheap"}')
    assert status == 200 and json.loads(body) == {"echo": {"model": "cheap"}}, body[:300]
    assert kit.locked(seller, buyer) == CHEAP


def test_a_body_over_djangos_own_upload_limit_is_413_not_a_500(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """``request.body`` raises ``RequestDataTooBig`` past ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (a
    seller's setting below 64 KiB): the price callable raised it, answered 500
    ``pricing_failed``. It is the buyer's body that is too large: 413, nothing charged."""
    seller = made(make_seller, base_routes, {"price": by_model})
    if not seller.kind.startswith("django"):
        return
    from django.test import override_settings

    buyer = kit.funded(seller)
    cheap = paid_header(seller, buyer, b'{"model": "cheap"}')
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        for headers in ({}, cheap):
            status, body = post(seller, b" " * 2000 + b'{"model": "dear"}', headers)
            assert status == 413 and json.loads(body)["error"] == "body_too_large", body[:200]
    assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0


def test_a_chunked_wsgi_body_beside_a_content_length_is_priced_as_the_app_reads_it(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """``Transfer-Encoding: chunked`` and ``Content-Length: 0`` together (a server that passes
    both on): the gate read the length's 0 bytes and priced b"", the cheap default, while
    Flask reads a chunked body to its end: the dear request ran on the cheap payment. Now
    the gate reads the chunked body whole and hands the app exactly that, its length too."""
    seller = made(make_seller, base_routes, {"price": by_model})
    if seller.interface_kind != "werkzeug":
        return
    buyer = kit.funded(seller)
    cheap = paid_header(seller, buyer, b'{"model": "cheap"}')
    for sent in (b'{"model": "dear"}', b'{"model": "cheap"}'):
        r = seller.client._client.open(
            "/echo",
            method="POST",
            headers={**cheap, "content-type": "application/json", "transfer-encoding": "chunked"},
            input_stream=io.BytesIO(sent),
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
            environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": "0"},
        )
        status, body = r.status_code, r.get_data()
        if sent == b'{"model": "dear"}':  # priced dear: the cheap payment matches no offer
            assert status == 402, (status, body[:300])
            refused = decode_payment_required(r.headers["payment-required"]).error
            assert refused == "No matching payment requirements"  # x402's string
            assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0
        else:
            assert status == 200 and json.loads(body) == {"echo": {"model": "cheap"}}, body
    assert kit.locked(seller, buyer) == CHEAP


def test_a_hook_reading_a_body_longer_than_the_gate_reads_is_413_not_a_seller_failure(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """An ``on_protected_request`` hook that grants by the body (a trial plan): past 64 KiB
    its read raised and the buyer got 503 ``seller_hook_failed`` for a body of its own; and
    a hook that catches that must not answer on a body nobody read (here: free). Both 413."""

    async def trial(request: Any, route: Any) -> Any:
        from fourmica_x402.gate import GRANT

        return GRANT if b'"plan": "trial"' in await body_of(request) else None

    async def lenient_trial(request: Any, route: Any) -> Any:
        try:
            return await trial(request, route)
        except Exception:
            from fourmica_x402.gate import GRANT

            return GRANT  # an unreadable body: taken for a trial

    async def wrapping_trial(request: Any, route: Any) -> Any:
        try:
            return await trial(request, route)
        except Exception as exc:  # its own error: the buyer's body still is what failed
            raise RuntimeError("could not read the plan") from exc

    for hook in (trial, lenient_trial, wrapping_trial):
        seller = made(make_seller, base_routes, "$0.50", on_protected_request=hook)
        status, body = post(seller, b'{"plan": "trial"}', {})
        assert status == 200, (seller.kind, status, body[:200])  # the hook reads a short body
        status, body = post(seller, PADDED, {})
        assert status == 413, (seller.kind, hook.__name__, status, body[:200])
        assert json.loads(body)["error"] == "body_too_large"
        assert seller.calls["/echo"] == 1


def test_a_before_settle_hook_reading_too_long_a_body_is_413_not_a_seller_failure(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """A ``before_settle`` hook that checks the body of a paid request (a static price): past
    64 KiB its read raised and the buyer got 503 ``seller_hook_failed``. Now 413, nothing
    settled, and the payment still buys a request of a readable size."""

    async def quota(request: Any, payload: Any, requirements: Any) -> None:
        assert b"model" in await body_of(request)

    async def wrapping_quota(request: Any, payload: Any, requirements: Any) -> None:
        try:
            await quota(request, payload, requirements)
        except Exception as exc:  # its own error: the buyer's body still is what failed
            raise RuntimeError("could not check the quota") from exc

    for hook in (quota, wrapping_quota):
        seller = made(make_seller, base_routes, "$0.01", before_settle=hook)
        buyer = kit.funded(seller)
        paid = paid_header(seller, buyer, b'{"model": "cheap"}')
        status, body = post(seller, PADDED, paid)
        assert status == 413, (seller.kind, hook.__name__, status, body[:200])
        assert json.loads(body)["error"] == "body_too_large"
        assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0
        status, body = post(seller, b'{"model": "cheap"}', paid)
        assert status == 200 and kit.locked(seller, buyer) == CHEAP


def test_a_content_length_the_gate_cannot_parse_is_never_priced_as_empty(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """Werkzeug's dev server passes ``Content-Length`` on as sent: ``17 `` (Flask strips it,
    reads 17 bytes) or ``+17`` (``int()`` in a plain WSGI app reads 17). The gate took either
    for no body, priced b"" (cheap), and the app read the dear request. Now a length with
    spaces around is read as Flask reads it, and any other is refused 400 ``invalid_body``."""
    seller = made(make_seller, base_routes, {"price": by_model})
    if seller.interface_kind != "werkzeug":
        return  # Django reads its body itself (priced as read); ASGI servers parse lengths
    buyer = kit.funded(seller)
    cheap = paid_header(seller, buyer, b'{"model": "cheap"}')
    dear = b'{"model": "dear"}'

    def sent(length: str) -> tuple[int, bytes]:
        r = seller.client._client.open(
            "/echo",
            method="POST",
            headers={**cheap, "content-type": "application/json"},
            input_stream=io.BytesIO(dear),
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
            environ_overrides={"CONTENT_LENGTH": length},
        )
        return r.status_code, r.get_data()

    status, body = sent(f"{len(dear)} ")
    assert status == 402, (seller.kind, status, body[:200])  # priced dear: no match
    for length in (f"+{len(dear)}", f"1_{len(dear) - 10}", f" {len(dear)},{len(dear)}", "-1"):
        status, body = sent(length)
        assert status == 400, (seller.kind, length, status, body[:200])
        assert json.loads(body)["error"] == "invalid_body"
    assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0


def test_a_chunked_body_the_server_cannot_decode_is_400_not_a_pricing_failure(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """Werkzeug's dev server decodes a chunked body as it is read, and raises on a chunk it
    cannot parse (a chunk extension ``11;a=b``): the price callable raised it and the buyer
    got 500 ``pricing_failed`` for its own malformed request. Now 400 ``invalid_body``, and
    400 still when the callable catches the error and prices the cheap default."""
    from werkzeug.serving import DechunkedInput

    for route in ({"price": by_model}, {"price": lenient}):
        seller = made(make_seller, base_routes, route)
        if seller.interface_kind != "werkzeug":
            return
        buyer = kit.funded(seller)
        cheap = paid_header(seller, buyer, b'{"model": "cheap"}')
        for headers in ({}, cheap):
            wire = io.BytesIO(b'11;a=b\r\n{"model": "dear"}\r\n0\r\n\r\n')
            r = seller.client._client.open(
                "/echo",
                method="POST",
                headers={**headers, "content-type": "application/json"},
                environ_base={"REMOTE_ADDR": "127.0.0.1"},
                environ_overrides={
                    "wsgi.input": DechunkedInput(wire),
                    "wsgi.input_terminated": True,
                },
            )
            status, body = r.status_code, r.get_data()
            assert status == 400, (seller.kind, route, status, body[:200])
            assert json.loads(body)["error"] == "invalid_body"
        assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0


def test_a_content_length_with_spaces_is_hashed_as_the_app_reads_it(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """A static price, ``Content-Length: 18 `` (Werkzeug's dev server passes it on): Flask
    reads 18 bytes and stops, but the gate's hash of what the handler read did not take the
    length and waited for an end that never came: the record kept the form with no body
    (``-``). It now covers the body the handler read (docs/operations.md)."""
    from fourmica_x402.core.store.deferred import commit_queued

    seller = made(make_seller, base_routes, "$0.01")
    if seller.interface_kind != "werkzeug":
        return
    buyer = kit.funded(seller)
    sent = b'{"model": "cheap"}'
    r = seller.client._client.open(
        "/echo",
        method="POST",
        headers={**paid_header(seller, buyer, sent), "content-type": "application/json"},
        input_stream=io.BytesIO(sent),
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
        environ_overrides={"CONTENT_LENGTH": f"{len(sent)} "},
    )
    assert r.status_code == 200, (seller.kind, r.status_code, r.get_data()[:200])
    r.close()
    commit_queued()
    (record,) = seller.gate.records.query(payer=buyer.address)
    assert record.request_hash == request_hash("POST", "/echo", "", sent), seller.kind


async def by_field(request: Any) -> str:
    """A seller's price table read from the body's JSON: a body that is not JSON, or lacks
    the field, or names no model of the table raises ValueError, TypeError or KeyError."""
    return {"cheap": "$0.01", "dear": "$0.50"}[json.loads(await body_of(request))["model"]]


async def broken(request: Any) -> str:
    raise RuntimeError("the seller's price service is down")


def test_a_price_callable_that_cannot_read_the_request_is_400_not_a_500(
    make_seller: Any, base_routes: dict[str, Any], kit: Any
) -> None:
    """A price callable reading a field the buyer's request lacks (a body that is no JSON,
    cut mid-character, a missing or unknown field) answered 500 ``pricing_failed``: a buyer's
    malformed request told as the seller's failure. It is 400 ``unpriceable_request`` now, as
    a ``units`` callable's is 400 ``invalid_units``; a callable failing otherwise stays 500."""
    seller = made(make_seller, base_routes, {"price": by_field})
    buyer = kit.funded(seller)
    cheap = paid_header(seller, buyer, b'{"model": "cheap"}')
    for sent in (b'{"m":"\xff', b"[1, 2]", b'{"other": 1}', b'{"model": "gold"}', b""):
        for headers in ({}, cheap):
            status, body = post(seller, sent, headers)
            assert status == 400, (seller.kind, sent, status, body[:200])
            assert json.loads(body)["error"] == "unpriceable_request"
    assert kit.locked(seller, buyer) == 0 and seller.calls["/echo"] == 0
    status, body = post(seller, b'{"model": "cheap"}', cheap)  # the payment is intact
    assert status == 200 and kit.locked(seller, buyer) == CHEAP
    failing = made(make_seller, base_routes, {"price": broken})
    status, body = post(failing, b'{"model": "cheap"}', {})
    assert (status, json.loads(body)["error"]) == (500, "pricing_failed")


def no_request() -> str:  # the seller's bug: a price callable written to take no request
    return "$0.01"


def two_args(request: Any, tier: str) -> str:  # a payTo callable asking for more than it gets
    raise AssertionError("never called: it cannot be")


def test_a_callable_that_cannot_be_called_with_the_request_is_the_sellers_500(
    make_seller: Any, base_routes: dict[str, Any], caplog: Any
) -> None:
    """A price or payTo callable whose signature takes no request raises TypeError on every
    request, before reading anything of it: the seller's bug, answered 500 ``pricing_failed``
    and logged as an error, never 400 ``unpriceable_request`` telling every buyer to fix a
    request that has nothing wrong (and the seller's log nothing above INFO)."""
    for route in ({"price": no_request}, {"price": "$0.01", "pay_to": two_args}):
        seller = made(make_seller, base_routes, route)
        caplog.clear()
        status, body = post(seller, b'{"model": "cheap"}', {})
        assert (status, json.loads(body)["error"]) == (500, "pricing_failed"), seller.kind
        assert any(r.levelname == "ERROR" for r in caplog.records), seller.kind
        assert seller.calls["/echo"] == 0


async def wrapping(request: Any) -> str:
    """A seller's callable that wraps whatever the read raised in an error of its own."""
    try:
        return await by_model(request)
    except Exception as exc:
        raise RuntimeError("could not price") from exc


async def wrapping_units(request: Any) -> int:
    try:
        return 50 if b"dear" in await body_of(request) else 1
    except Exception as exc:
        raise LookupError("could not count") from exc


def test_a_body_too_long_is_413_whatever_the_callable_raised_on_it(
    make_seller: Any, base_routes: dict[str, Any]
) -> None:
    """A price or units callable that caught the gate's refusal to read a body past 64 KiB and
    raised an error of its own answered 500 ``pricing_failed``: the buyer's body too long, told
    as the seller's failure. The refusal wins, as when the callable raises ValueError."""
    for route in ({"price": wrapping}, {"price": "$0.01", "units": wrapping_units}):
        seller = made(make_seller, base_routes, route)
        status, body = post(seller, PADDED, {})
        assert status == 413, (seller.kind, route, status, body[:200])
        assert json.loads(body)["error"] == "body_too_large"
        assert seller.calls["/echo"] == 0


def test_a_request_the_callable_cannot_read_is_logged_briefly(
    make_seller: Any, base_routes: dict[str, Any], caplog: Any
) -> None:
    """The KeyError of a field the buyer made up (60 KB of it) went to the seller's log whole,
    on every such request: a buyer writing what it likes, as much as the gate reads, into the
    seller's log. The note is cut short; the answer stays 400 ``unpriceable_request``."""
    seller = made(make_seller, base_routes, {"price": by_field})
    caplog.set_level("INFO", logger="fourmica_x402")
    status, body = post(seller, json.dumps({"model": "x" * 60_000}).encode(), {})
    assert (status, json.loads(body)["error"]) == (400, "unpriceable_request"), seller.kind
    assert caplog.records and all(len(r.getMessage()) < 1000 for r in caplog.records)
