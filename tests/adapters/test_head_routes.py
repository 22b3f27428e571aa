"""A route serving HEAD without GET, priced by the table: HEAD is priced (the challenge; a
payment sent with it is never settled, a response without a body is never charged), never
run unpaid. The router used to be asked for a GET there, found none and let it through."""

from __future__ import annotations

from typing import Any

import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer

SELLER = TestBuyer.new().address


@pytest.mark.parametrize(
    ("methods", "entry"),
    [(["HEAD"], "HEAD /report"), (["HEAD"], "* /report"), (["POST", "HEAD"], "* /report")],
)
def test_a_head_only_route_priced_by_the_table_never_runs_unpaid(
    audited_core: Core, methods: list[str], entry: str
) -> None:
    ran: list[str] = []

    async def report(request: Any) -> Response:
        ran.append(request.method)
        return Response(headers={"x-report-rows": "123456"})

    app = Starlette(routes=[Route("/report", report, methods=methods)])
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    client = TestClient(PaymentMiddleware(app, routes={entry: "$0.50"}, **options))
    resp = client.head("/report")
    assert resp.status_code == 402 and "x-report-rows" not in resp.headers
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    header = buyer.pay_challenge(audited_core, resp.headers["payment-required"])
    paid = client.head("/report", headers=dict([header]))
    assert paid.status_code == 402 and "x-report-rows" not in paid.headers  # never charged
    assert ran == [] and audited_core.guarantees() == []
    if "POST" in methods:
        assert client.post("/report").status_code == 402 and ran == []


def test_the_gates_own_options_answer_sends_one_content_length(audited_core: Core) -> None:
    """The gate answered an OPTIONS on a priced route with its own ``Content-Length: 0`` and
    the ASGI middleware added another: two Content-Length lines, which nginx (1.23+) refuses
    from an upstream (a 502), failing every CORS preflight of a paid route behind it."""

    async def report(request: Any) -> Response:
        return Response(b"paid content")

    app = Starlette(routes=[Route("/report", report, methods=["GET", "OPTIONS"])])
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    client = TestClient(PaymentMiddleware(app, routes={"GET /report": "$0.50"}, **options))
    resp = client.options("/report")
    assert resp.status_code == 200 and resp.headers["allow"] == "GET, HEAD, OPTIONS"
    assert resp.headers.get_list("content-length") == ["0"]
