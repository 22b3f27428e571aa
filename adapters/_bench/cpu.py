"""P7: server CPU per paid request over server CPU per free request, the FastAPI example
(``examples/fastapi_seller.py``) under uvicorn, its embedded SQLite Core."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .loopback import (
    CONCURRENCY,
    EXAMPLE,
    WARMUP,
    Skipped,
    cpu_seconds,
    free_port,
    load_all_ok,
    needs_servers,
    payments,
    progress,
    quiet_cpu,
    request,
    serving,
)

__all__ = ["bench_cpu_per_request"]


def _cpu_clock_problem() -> str | None:
    try:
        cpu_seconds(os.getpid())
    except (OSError, ValueError, IndexError) as exc:
        return f"cannot read a process's CPU time on this system ({sys.platform}): {exc}"
    return None


def bench_cpu_per_request(quick: bool) -> Any:
    """P7: the example FastAPI seller's CPU µs per paid request / per free request."""
    import httpx

    from fourmica_x402.bench import Result
    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK, TestBuyer

    problem = _cpu_clock_problem()
    if problem:
        raise Skipped(problem)
    if not EXAMPLE.exists():
        raise Skipped(f"needs the source tree: {EXAMPLE} not found")
    needs_servers()
    count = 300 if quick else 3_000
    with tempfile.TemporaryDirectory(prefix="fourmica-bench-p7-") as tmp:
        db = f"sqlite:///{tmp}/p7.db"
        core = Core(db)
        buyer, seller = TestBuyer.new(), TestBuyer.new().address
        core.deposit(buyer.address, 10**15, network=NETWORK)
        port = free_port()
        args = [sys.executable, "-m", "uvicorn", "fastapi_seller:app", "--app-dir"]
        args += [str(EXAMPLE.parent), "--host", "127.0.0.1", "--port", str(port)]
        args += ["--log-level", "warning", "--no-access-log"]
        env = {**os.environ, "FOURMICA_X402_DB": db, "PAY_TO": seller}
        base = f"http://127.0.0.1:{port}"
        progress(f"P7: the FastAPI example under uvicorn, {count} free then {count} paid requests")
        try:
            with serving(
                "the FastAPI example", args, f"{base}/free", Path(tmp) / "seller.log", env
            ) as proc:
                challenge = httpx.get(f"{base}/premium", timeout=30)
                headers = payments(core, buyer, challenge, count + WARMUP)
                free = [request(port, "/free")] * count
                paid = [request(port, "/premium", h) for h in headers]
                load_all_ok(port, free[:WARMUP] + paid[:WARMUP], "P7 warm-up")
                start = quiet_cpu(proc.pid)
                load_all_ok(port, free, "P7 free")
                middle = quiet_cpu(proc.pid)
                load_all_ok(port, paid[WARMUP:], "P7 paid")
                end = quiet_cpu(proc.pid)
            assert core.audit() == []
        finally:
            core.close()
    free_us = (middle - start) / count * 1e6
    paid_us = (end - middle) / count * 1e6
    ratio = paid_us / free_us
    return Result(
        id="P7",
        title="server CPU per paid request / per free request, FastAPI example, uvicorn",
        unit="µs CPU",
        ours=paid_us,
        baseline=free_us,
        baseline_name="GET /free on the same server",
        target="≤ 1.5",
        met=ratio <= 1.5,
        notes={
            "requests": count,
            "concurrency": CONCURRENCY,
            "paid_minus_free_us": paid_us - free_us,
        },
    )
