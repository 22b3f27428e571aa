"""JSON another party wrote is read with bounded nesting (docs/architecture.md, "JSON from
another party"): with the recursion limit raised, as importing eth-account does (py_ecc sets
100 000), ``json.loads`` of deeply nested input overflows the C stack and kills the process.
Each case runs in a process of its own, so a crash is a failed test, not a dead test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import sys
sys.setrecursionlimit(100_000)  # what py_ecc does when eth-account imports it
DEEP = b"[" * 400_000 + b"]" * 400_000
"""

CASES = {
    "reader": """
        from fourmica_x402._json import loads, loads_checked
        for read in (loads, loads_checked):
            try:
                read(DEEP)
            except ValueError:
                pass
            else:
                raise SystemExit("deep JSON was read")
    """,
    "seller-tab-endpoint": """
        import tempfile
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient
        from fourmica_x402 import PaymentConfig
        from fourmica_x402.adapters.asgi import PaymentMiddleware
        from fourmica_x402.core import Core
        from fourmica_x402.testing import TestBuyer

        core = Core(tempfile.mkdtemp() + "/core.db")
        app = Starlette(routes=[Route("/premium", lambda r: PlainTextResponse("ok"))])
        config = PaymentConfig(
            pay_to=TestBuyer.new().address, routes={"GET /premium": "$0.01"}, core=core
        )
        with TestClient(PaymentMiddleware(app, config=config)) as client:
            answer = client.post(
                "/x402/tab", content=DEEP[:32_000] + DEEP[-32_000:],
                headers={"content-type": "application/json"},
            )
        assert answer.status_code == 400, answer.status_code
    """,
    "service-body": """
        import tempfile
        from starlette.testclient import TestClient
        from fourmica_x402.core import Core
        from fourmica_x402.service import create_app

        app = create_app(Core(tempfile.mkdtemp() + "/core.db"), tick_interval=None)
        body = DEEP[:120_000] + DEEP[-120_000:]  # under the service's 256 KiB
        with TestClient(app) as client:
            for path in ("/verify", "/tabs", "/rpc"):
                answer = client.post(path, content=body)
                assert answer.status_code in (200, 400), (path, answer.status_code)
    """,
    "buyer-tab-answer": """
        import httpx
        from fourmica_x402.client import PaymentTransport
        from fourmica_x402.errors import PaymentFailed
        from fourmica_x402.testing import TestBuyer
        from fourmica_x402.wire import PAYMENT_REQUIRED_HEADER

        challenge = None

        def seller(request):
            if request.url.path == "/x402/tab":
                return httpx.Response(200, content=DEEP)
            return httpx.Response(402, headers={PAYMENT_REQUIRED_HEADER: challenge})

        import base64, json
        challenge = base64.b64encode(json.dumps({
            "x402Version": 2, "error": "payment_required",
            "resource": {"url": "http://seller.test/premium"},
            "accepts": [{
                "scheme": "4mica-credit", "network": "eip155:84532", "amount": "10000",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "payTo": "0x" + "11" * 20, "maxTimeoutSeconds": 300,
                "extra": {"tabEndpoint": "http://seller.test/x402/tab"},
            }],
        }).encode()).decode()
        transport = PaymentTransport(TestBuyer.new().key, transport=httpx.MockTransport(seller))
        with httpx.Client(transport=transport) as client:
            try:
                client.get("http://seller.test/premium")
            except PaymentFailed:
                pass
            else:
                raise SystemExit("paid")
    """,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_deeply_nested_json_never_crashes_the_process(case: str) -> None:
    script = PRELUDE + textwrap.dedent(CASES[case])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
