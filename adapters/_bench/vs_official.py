"""P5: paid requests per second of our FastAPI gate (embedded Core; and ``HttpFacilitator`` on
``fourmica-x402 serve --sandbox``) against the official ``4mica-x402`` FastAPI middleware on
that same ``serve``, with the same client, concurrency and count."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .loopback import (
    CONCURRENCY,
    OFFICIAL_SELLER,
    WARMUP,
    ServerFailed,
    Skipped,
    free_port,
    load_all_ok,
    needs_servers,
    payments,
    progress,
    quiet_cpu,
    request,
    serving,
)
from .official import PINS, official_env, official_python

__all__ = ["bench_vs_official", "p5_app"]


def p5_app() -> Any:
    """Factory of our P5 seller: FastAPI, ``GET /premium`` ($0.01 via ``Paid``), ``GET /health``.

    The same two routes and handler as the official seller (tests/interop/scripts/
    official_seller.py). Env: PAY_TO, and FOURMICA_BENCH_DB (the embedded Core) or
    FOURMICA_BENCH_FACILITATOR (a ``serve`` URL) with FOURMICA_BENCH_RECORDS.
    """
    from fastapi import FastAPI

    from fourmica_x402.config import PaymentConfig
    from fourmica_x402.gate import Payment

    from ..fastapi import FourmicaX402, Paid

    common: dict[str, Any] = {"pay_to": os.environ["PAY_TO"], "network": "eip155:84532"}
    if os.environ.get("FOURMICA_BENCH_FACILITATOR"):
        from fourmica_x402.facilitator import HttpFacilitator

        config = PaymentConfig(
            facilitator=HttpFacilitator(os.environ["FOURMICA_BENCH_FACILITATOR"], timeout=30.0),
            records=os.environ["FOURMICA_BENCH_RECORDS"],
            **common,
        )
    else:
        config = PaymentConfig(core=os.environ["FOURMICA_BENCH_DB"], **common)
    app = FastAPI()
    FourmicaX402(app, config)

    @app.get("/premium")
    def premium(payment: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        return {"premium": "the good stuff"}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _paid_rate(
    name: str,
    port: int,
    args: list[str],
    env: dict[str, str],
    core: Any,
    buyer: Any,
    count: int,
    tmp: Path,
    others: Sequence[int] = (),
) -> tuple[float, list[float]]:
    """Paid req/s of the seller ``args`` start on ``port``: its 402 read, ``count`` payments
    signed on ``core`` (the Core that seller's tabs live in), then sent; and the CPU µs per
    paid request of that seller and of each process in ``others``, idle to idle.

    Every 200 must have left a guarantee in ``core``: each seller really settled each payment.
    The clock starts once this seller and the processes ``others`` are idle (the facilitator
    may still be certifying the previous seller's guarantees).
    """
    import httpx

    base = f"http://127.0.0.1:{port}"
    progress(f"P5: {name}, {count} paid requests")
    before = _guarantee_count(core, buyer.address)
    with serving(name, args, f"{base}/health", tmp / f"seller-{port}.log", env) as proc:
        challenge = httpx.get(f"{base}/premium", timeout=30)
        headers = payments(core, buyer, challenge, count + WARMUP)
        paid = [request(port, "/premium", h) for h in headers]
        load_all_ok(port, paid[:WARMUP], f"P5 {name} warm-up")
        pids = (proc.pid, *others)
        before_cpu = [quiet_cpu(pid) for pid in pids]
        rate = count / load_all_ok(port, paid[WARMUP:], f"P5 {name}")
        cpu_us = [
            (quiet_cpu(pid) - b) / count * 1e6 for pid, b in zip(pids, before_cpu, strict=True)
        ]
    settled = _guarantee_count(core, buyer.address) - before
    if settled != count + WARMUP:
        raise RuntimeError(f"P5 {name}: {count + WARMUP} payments answered 200, {settled} settled")
    return rate, cpu_us


def _guarantee_count(core: Any, address: str) -> int:
    return len(core.guarantees(address=address, limit=1_000_000))


def bench_vs_official(quick: bool) -> list[Any]:
    """P5: paid req/s of our FastAPI gate, embedded and remote, vs the official middleware."""
    from fourmica_x402.bench import Result
    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK, TestBuyer

    if not OFFICIAL_SELLER.exists():
        raise Skipped(f"needs the source tree: {OFFICIAL_SELLER} not found")
    needs_servers()
    python = official_python()
    count = 200 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="fourmica-bench-p5-") as name:
        tmp = Path(name)
        buyer, pay_to = TestBuyer.new(), TestBuyer.new().address
        served, embedded = f"sqlite:///{tmp}/serve.db", f"sqlite:///{tmp}/embedded.db"
        serve_core, own_core = Core(served), Core(embedded)
        try:
            for core in (serve_core, own_core):
                core.deposit(buyer.address, 10**15, network=NETWORK)
            f_port = free_port()
            facilitator = f"http://127.0.0.1:{f_port}"
            serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", served]
            serve += ["--port", str(f_port), "--sandbox"]
            progress(f"P5: fourmica-x402 serve --sandbox on {facilitator}")
            with serving(
                "fourmica-x402 serve", serve, f"{facilitator}/health", tmp / "serve.log"
            ) as server:
                port = free_port()
                official = [str(python), "-I", str(OFFICIAL_SELLER), str(port), facilitator, pay_to]
                try:
                    theirs, theirs_cpu = _paid_rate(
                        "the official seller",
                        port,
                        official,
                        official_env(),
                        serve_core,
                        buyer,
                        count,
                        tmp,
                        [server.pid],
                    )
                except ServerFailed as exc:
                    raise Skipped(str(exc)[:400]) from None
                app = "fourmica_x402.adapters._bench.vs_official:p5_app"
                ours_args = [sys.executable, "-m", "uvicorn", app, "--factory"]
                ours_args += ["--host", "127.0.0.1", "--log-level", "warning", "--port"]
                env = {**os.environ, "PAY_TO": pay_to}
                port = free_port()
                local, local_cpu = _paid_rate(
                    "our gate (embedded Core)",
                    port,
                    [*ours_args, str(port)],
                    {**env, "FOURMICA_BENCH_DB": embedded},
                    own_core,
                    buyer,
                    count,
                    tmp,
                    [server.pid],
                )
                port = free_port()
                remote_env = {
                    **env,
                    "FOURMICA_BENCH_FACILITATOR": facilitator,
                    "FOURMICA_BENCH_RECORDS": f"sqlite:///{tmp}/records.db",
                }
                remote, remote_cpu = _paid_rate(
                    "our gate (HttpFacilitator)",
                    port,
                    [*ours_args, str(port)],
                    remote_env,
                    serve_core,
                    buyer,
                    count,
                    tmp,
                    [server.pid],
                )
            assert own_core.audit() == [] and serve_core.audit() == []
        finally:
            serve_core.close()
            own_core.close()
    # CPU µs per paid request (idle to idle): each seller process, and the serve both use.
    cpu = {
        "official_seller_cpu_us": round(theirs_cpu[0]),
        "serve_cpu_us_for_official": round(theirs_cpu[1]),
    }
    notes = {"requests": count, "concurrency": CONCURRENCY, "official": " ".join(PINS[:2])}
    embedded_notes = {**notes, **cpu, "seller_cpu_us": round(local_cpu[0])}
    remote_notes = {**notes, **cpu, "seller_cpu_us": round(remote_cpu[0])}
    remote_notes["serve_cpu_us"] = round(remote_cpu[1])
    shared = "the official 4mica-x402 FastAPI middleware on the same serve"
    return [
        Result(
            id="P5-embedded",
            title="paid req/s, our FastAPI gate on its embedded Core",
            unit="req/s",
            ours=local,
            baseline=theirs,
            baseline_name=shared,
            target="≥ 6×",
            met=local >= 6 * theirs,
            notes=embedded_notes,
        ),
        Result(
            id="P5-remote",
            title="paid req/s, our FastAPI gate, HttpFacilitator → serve",
            unit="req/s",
            ours=remote,
            baseline=theirs,
            baseline_name=shared,
            target="≥ 1.5×",
            met=remote >= 1.5 * theirs,
            notes=remote_notes,
        ),
    ]
