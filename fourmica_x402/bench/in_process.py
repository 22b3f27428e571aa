"""P1: what a paid request costs over the same request unpaid, through the real ASGI and WSGI
middleware, in process (no server, no socket), on an embedded SQLite Core.

Each payment is good once, so the requests run in chunks of 200, bare and paid alternately;
the least disturbed chunk of each counts (as in .common), the paid chunks' median is noted.
"""

from __future__ import annotations

import time
from typing import Any

from .common import Result

__all__ = ["bench_paid_asgi", "bench_paid_wsgi", "paid_fixture", "payment_headers"]


def paid_fixture() -> tuple[Any, Any, Any]:
    """A Core, a PaymentConfig pricing GET /premium, and a funded buyer."""
    import tempfile

    from ..config import PaymentConfig
    from ..core import Core
    from ..testing import NETWORK, TestBuyer

    core = Core(f"{tempfile.mkdtemp()}/bench.db")
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**15, network=NETWORK)
    config = PaymentConfig(
        pay_to=TestBuyer.new().address, routes={"GET /premium": "$0.01"}, core=core
    )
    return core, config, buyer


def payment_headers(
    core: Any, buyer: Any, challenge_header: str, count: int
) -> list[tuple[str, str]]:
    """``count`` valid payments for the requirements the gate itself advertised."""
    from ..testing import payment_header
    from ..wire import decode_payment_required

    req = decode_payment_required(challenge_header).accepts[0]
    version = 2 if "validatorAddress" in req.extra else 1
    return [
        payment_header(
            buyer,
            req,
            core.open_tab(
                buyer.address,
                req.pay_to,
                network=req.network,
                asset=req.asset,
                guarantee_version=version,
            ).to_json(),
        )
        for _ in range(count)
    ]


def _chunks(headers: list[tuple[str, str]], size: int = 200) -> list[list[tuple[str, str]]]:
    return [headers[i : i + size] for i in range(0, len(headers), size)]


def _best(paid: list[float], bare: list[float]) -> tuple[float, float, dict[str, float]]:
    """The least disturbed chunk of each (see .common), and the paid chunks' median."""
    return min(paid), min(bare), {"paid_median_us": sorted(paid)[len(paid) // 2]}


def bench_paid_asgi(quick: bool) -> Result:
    """P1 (ASGI): µs a paid request costs over the same request unpaid, in process."""
    import asyncio

    from ..adapters.asgi import PaymentMiddleware

    count = 200 if quick else 2_000
    core, config, buyer = paid_fixture()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    paid_app = PaymentMiddleware(app, config=config)

    def scope(header: tuple[str, str] | None) -> dict[str, Any]:
        hs = [(b"host", b"bench")] + (
            [(header[0].lower().encode(), header[1].encode())] if header else []
        )
        return {
            "type": "http",
            "method": "GET",
            "path": "/premium",
            "raw_path": b"/premium",
            "query_string": b"",
            "headers": hs,
            "scheme": "http",
            "server": ("bench", 80),
            "client": ("127.0.0.1", 1),
        }

    async def call(target: Any, header: tuple[str, str] | None) -> int:
        status = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                found.update((k.decode(), v.decode()) for k, v in message["headers"])

        await target(scope(header), receive, send)
        return status[0]

    found: dict[str, str] = {}
    asyncio.run(call(paid_app, None))
    headers = payment_headers(core, buyer, found["payment-required"], count)

    async def run() -> tuple[list[float], list[float]]:
        paid, bare = [], []
        for chunk in _chunks(headers):
            start = time.perf_counter()
            for _ in chunk:
                await call(app, None)
            bare.append((time.perf_counter() - start) / len(chunk) * 1e6)
            start = time.perf_counter()
            for header in chunk:
                assert await call(paid_app, header) == 200
            paid.append((time.perf_counter() - start) / len(chunk) * 1e6)
        return paid, bare

    paid, bare, notes = _best(*asyncio.run(run()))
    core.close()
    return Result(
        id="P1-asgi",
        title="paid − bare request, in-process ASGI, embedded SQLite",
        unit="µs",
        ours=paid - bare,
        baseline=bare,
        baseline_name="the same request unpaid",
        target="≤ 200 µs",
        met=(paid - bare) <= 200,
        notes={"requests": count, "paid_us": paid, **notes},
    )


def bench_paid_wsgi(quick: bool) -> Result:
    """P1 (WSGI): µs a paid request costs over the same request unpaid, in process."""
    from ..adapters.wsgi import PaymentMiddleware

    count = 200 if quick else 2_000
    core, config, buyer = paid_fixture()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    paid_app = PaymentMiddleware(app, config=config)

    def call(target: Any, header: tuple[str, str] | None) -> str:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/premium",
            "QUERY_STRING": "",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "HTTP_HOST": "bench",
            "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1",
        }
        if header:
            environ["HTTP_" + header[0].upper().replace("-", "_")] = header[1]
        got = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            got.append(status)
            found.update((k.lower(), v) for k, v in headers)

        body = target(environ, start_response)
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()
        return got[0]

    found: dict[str, str] = {}
    call(paid_app, None)
    headers = payment_headers(core, buyer, found["payment-required"], count)
    paid_us, bare_us = [], []
    for chunk in _chunks(headers):
        start = time.perf_counter()
        for _ in chunk:
            call(app, None)
        bare_us.append((time.perf_counter() - start) / len(chunk) * 1e6)
        start = time.perf_counter()
        for header in chunk:
            assert call(paid_app, header).startswith("200")
        paid_us.append((time.perf_counter() - start) / len(chunk) * 1e6)
    paid, bare, notes = _best(paid_us, bare_us)
    core.close()
    return Result(
        id="P1-wsgi",
        title="paid − bare request, in-process WSGI, embedded SQLite",
        unit="µs",
        ours=paid - bare,
        baseline=bare,
        baseline_name="the same request unpaid",
        target="≤ 200 µs",
        met=(paid - bare) <= 200,
        notes={"requests": count, "paid_us": paid, **notes},
    )
