"""The HTTP benchmarks that need real servers and web frameworks: P5 and P7 (and the
load generator P4 shares with them, :mod:`.loopback`).

:mod:`fourmica_x402.bench` imports this package lazily, only when one of them runs, so the
core package never imports a web framework; the framework imports here happen inside the
functions too (the servers run them in their own processes).

- P7: server CPU per paid request over server CPU per free request, the FastAPI example
  (``examples/fastapi_seller.py``) under uvicorn, its embedded SQLite Core.
- P5: paid requests per second of our FastAPI gate (embedded Core; and ``HttpFacilitator``
  on ``fourmica-x402 serve --sandbox``) against the official ``4mica-x402`` FastAPI
  middleware on that same ``serve``, with the same client, concurrency and count. The
  official packages run in a scratch virtualenv of their own, the one the interop tests
  (tests/interop/test_official.py) build and cache: their import name ``fourmica_x402``
  is ours too.

Every server listens on 127.0.0.1 only and is stopped when its measurement ends; every
loop is bounded. Payments are signed before the clock starts: the client's signing is not
what these measure.

This package: :mod:`.loopback` (servers, load, CPU clocks), :mod:`.cpu` (P7),
:mod:`.official` (the official packages' virtualenv), :mod:`.vs_official` (P5).
"""

from __future__ import annotations

from .cpu import bench_cpu_per_request
from .loopback import Skipped
from .official import official_env as official_env
from .official import official_python as official_python
from .vs_official import bench_vs_official, p5_app

__all__ = ["Skipped", "bench_cpu_per_request", "bench_vs_official", "p5_app"]
