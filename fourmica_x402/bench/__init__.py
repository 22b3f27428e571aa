"""Benchmarks behind ``fourmica-x402 bench``.

Every figure is reported beside a baseline measured in the same run, as a
ratio, so results compare across machines. Each benchmark returns a
:class:`Result`; the CLI prints them as a table or JSON.

Timing method: the operation runs ``number`` times per sample, ``repeat``
samples are taken alternately for ours and the baseline, and the best
sample counts (the least disturbed by the rest of the machine).

By topic: :mod:`.signatures` (recover, P6), :mod:`.embedded` (the Core on SQLite: P2, P3),
:mod:`.in_process` (P1), :mod:`.servers` (P4 over loopback HTTP; P5 and P7, which run web
frameworks, live in ``fourmica_x402.adapters._bench``, imported only when they run),
:mod:`.scale` (P8: the Core on one PostgreSQL server from 1, 2 and 4 processes),
:mod:`.runner` (the list, the run, the progress lines), :mod:`.common` (:class:`Result`,
:class:`Skipped`, the timing loop). Every name is importable from here.

A benchmark this machine cannot run (no official packages for P5, no PostgreSQL URL for
P8, say) raises :class:`Skipped`: one line on stderr says why, and the others still run.

:func:`run` reports each benchmark as it starts and finishes to a :class:`Progress`
(by default :class:`Lines`: a plain line each on stderr; stdout is left to the results).
"""

from __future__ import annotations

from .common import Result, Skipped
from .common import compare as compare
from .embedded import bench_accept as bench_accept
from .embedded import bench_close as bench_close
from .in_process import bench_paid_asgi as bench_paid_asgi
from .in_process import bench_paid_wsgi as bench_paid_wsgi
from .runner import BENCHMARKS, Lines, Progress, run
from .runner import summary as summary
from .scale import bench_scale_out as bench_scale_out
from .servers import bench_cpu_per_request as bench_cpu_per_request
from .servers import bench_http_asgi as bench_http_asgi
from .servers import bench_http_wsgi as bench_http_wsgi
from .servers import bench_vs_official as bench_vs_official
from .servers import p4_asgi_app as p4_asgi_app
from .servers import p4_wsgi_app as p4_wsgi_app
from .signatures import bench_recover as bench_recover
from .signatures import bench_sign as bench_sign

__all__ = ["BENCHMARKS", "Lines", "Progress", "Result", "Skipped", "run"]
