"""The benchmarks that run real HTTP servers.

P4 is here: paid against bare requests per second over loopback HTTP, the middleware served
by uvicorn (ASGI) and gunicorn (WSGI) on an embedded SQLite Core. The servers import
:func:`p4_asgi_app` / :func:`p4_wsgi_app` in their own processes; every server listens on
127.0.0.1 only and is stopped when its measurement ends. The load comes from the small
keep-alive client P5 and P7 use (``fourmica_x402.adapters._bench.loopback``, imported when P4
runs): a few µs per request, so the server, not the client, sets the pace.

P5 and P7 run servers with web frameworks; they live in ``fourmica_x402.adapters._bench``,
imported only when they run (this package never imports a web framework).
"""

from __future__ import annotations

import time
from typing import Any

from .common import Result, Skipped
from .in_process import payment_headers

__all__ = [
    "bench_cpu_per_request",
    "bench_http_asgi",
    "bench_http_wsgi",
    "bench_vs_official",
    "p4_asgi_app",
    "p4_wsgi_app",
]


def p4_asgi_app() -> Any:
    """Factory for P4: ``GET /bare`` (free) and ``GET /paid`` ($0.01) on the Core in FOURMICA_BENCH_DB."""
    import os

    from ..adapters.asgi import PaymentMiddleware
    from ..config import PaymentConfig

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    config = PaymentConfig(
        pay_to=os.environ["FOURMICA_BENCH_PAY_TO"],
        routes={"GET /paid": "$0.01"},
        core=os.environ["FOURMICA_BENCH_DB"],
    )
    return PaymentMiddleware(app, config=config)


def p4_wsgi_app() -> Any:
    """Factory for P4 under gunicorn: the same two routes, WSGI."""
    import os

    from ..adapters.wsgi import PaymentMiddleware
    from ..config import PaymentConfig

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    config = PaymentConfig(
        pay_to=os.environ["FOURMICA_BENCH_PAY_TO"],
        routes={"GET /paid": "$0.01"},
        core=os.environ["FOURMICA_BENCH_DB"],
    )
    return PaymentMiddleware(app, config=config)


def _p4(kind: str, quick: bool) -> Result:
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    import httpx

    from ..adapters._bench import loopback
    from ..core import Core
    from ..testing import NETWORK, TestBuyer

    count = 300 if quick else 2_000
    db = f"sqlite:///{tempfile.mkdtemp()}/p4.db"
    core = Core(db)
    buyer, seller = TestBuyer.new(), TestBuyer.new().address
    core.deposit(buyer.address, 10**15, network=NETWORK)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FOURMICA_BENCH_DB": db, "FOURMICA_BENCH_PAY_TO": seller}
    if kind == "asgi":
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "fourmica_x402.bench.servers:p4_asgi_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "fourmica_x402.bench.servers:p4_wsgi_app()",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--threads",
            "8",
            "--log-level",
            "warning",
        ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    challenge = client.get("/paid")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"P4 {kind} server did not start") from None
                    time.sleep(0.1)
        warmup = loopback.WARMUP
        required = challenge.headers["payment-required"]
        headers = payment_headers(core, buyer, required, count + warmup)
        paid_requests = [loopback.request(port, "/paid", h) for h in headers]
        bare_request = loopback.request(port, "/bare")
        warm = [bare_request] * warmup + paid_requests[:warmup]
        loopback.load_all_ok(port, warm, "P4 warm-up")
        paid_requests = paid_requests[warmup:]
        # Bare and paid alternately, in chunks; the least disturbed chunk of each counts.
        bare = paid = 0.0
        size = max(count // _ROUNDS, 1)
        for i in range(0, count, size):
            chunk = paid_requests[i : i + size]
            took = loopback.load_all_ok(port, [bare_request] * len(chunk), f"P4 {kind} bare")
            bare = max(bare, len(chunk) / took)
            paid = max(paid, len(chunk) / loopback.load_all_ok(port, chunk, f"P4 {kind} paid"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    assert core.audit() == []
    core.close()
    server_name = "uvicorn (1 worker)" if kind == "asgi" else "gunicorn (2 workers × 8 threads)"
    return Result(
        id=f"P4-{kind}",
        title=f"HTTP paid req/s vs bare req/s, {server_name}, loopback",
        unit="req/s",
        ours=paid,
        baseline=bare,
        baseline_name="the same server, unpriced route",
        target="≥ 0.75 of bare",
        met=paid >= 0.75 * bare,
        notes={"requests": count, "concurrency": loopback.CONCURRENCY, "rounds": _ROUNDS},
    )


#: Chunks of bare, then paid, requests P4 alternates (each payment is good once).
_ROUNDS = 4


def bench_http_asgi(quick: bool) -> Result:
    """P4 (ASGI under uvicorn)."""
    return _p4("asgi", quick)


def bench_http_wsgi(quick: bool) -> Result:
    """P4 (WSGI under gunicorn)."""
    return _p4("wsgi", quick)


def bench_vs_official(quick: bool) -> list[Result]:
    """P5: paid req/s of our FastAPI gate (embedded; remote) vs the official middleware."""
    from ..adapters import _bench

    try:
        return list(_bench.bench_vs_official(quick))
    except _bench.Skipped as exc:
        raise Skipped(str(exc)) from None


def bench_cpu_per_request(quick: bool) -> Result:
    """P7: server CPU per paid request / per free request, the FastAPI example."""
    from ..adapters import _bench

    try:
        result: Result = _bench.bench_cpu_per_request(quick)
    except _bench.Skipped as exc:
        raise Skipped(str(exc)) from None
    return result
