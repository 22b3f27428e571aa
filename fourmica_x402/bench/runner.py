"""Which benchmarks there are (:data:`BENCHMARKS`), running them (:func:`run`) and the
progress they report as they go (:class:`Progress`, :class:`Lines`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol

from .bls import bench_certify
from .common import Result, Skipped
from .embedded import bench_accept, bench_close
from .floor import bench_floor
from .in_process import bench_paid_asgi, bench_paid_wsgi
from .scale import bench_scale_out
from .servers import bench_cpu_per_request, bench_http_asgi, bench_http_wsgi, bench_vs_official
from .signatures import bench_recover, bench_sign

__all__ = ["BENCHMARKS", "Lines", "Progress", "run", "summary"]

#: id → benchmark. A benchmark returns one Result, or several sharing one baseline
#: (P5: rows P5-embedded and P5-remote, both against the official middleware).
BENCHMARKS: dict[str, Callable[[bool], Result | list[Result]]] = {
    "P1-asgi": bench_paid_asgi,
    "P1-wsgi": bench_paid_wsgi,
    "P1-floor": bench_floor,
    "recover": bench_recover,
    "P2": bench_accept,
    "P3": bench_close,
    "P4-asgi": bench_http_asgi,
    "P4-wsgi": bench_http_wsgi,
    "P5": bench_vs_official,
    "P6": bench_sign,
    "certify": bench_certify,
    "P7": bench_cpu_per_request,
    "P8": bench_scale_out,
}


class Progress(Protocol):
    """Told about each benchmark as :func:`run` goes (``index`` counts from 1 of ``total``)."""

    def started(self, name: str, index: int, total: int) -> None: ...

    def finished(self, name: str, index: int, total: int, seconds: float) -> None: ...

    def skipped(self, name: str, index: int, total: int, reason: str) -> None: ...


class Lines:
    """A plain line on stderr as each benchmark starts and finishes (a log, a pipe, CI)."""

    def started(self, name: str, index: int, total: int) -> None:
        _say(f"bench: [{index}/{total}] {name}: {summary(name)}")

    def finished(self, name: str, index: int, total: int, seconds: float) -> None:
        _say(f"bench: [{index}/{total}] {name} done in {seconds:.1f} s")

    def skipped(self, name: str, index: int, total: int, reason: str) -> None:
        _say(f"bench: {name} skipped: {reason}")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def summary(name: str) -> str:
    """What benchmark ``name`` measures, in a few words (the first line of its docstring)."""
    doc = (BENCHMARKS[name].__doc__ or name).strip().splitlines()[0].rstrip(".")
    head, sep, rest = doc.partition(": ")
    return rest if sep and head.split()[0] == name.split("-")[0] else doc


def run(
    only: list[str] | None = None, *, quick: bool = False, progress: Progress | None = None
) -> list[Result]:
    """Run the selected benchmarks (all by default) and return their results."""
    chosen = only or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise KeyError(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
        )
    report = progress or Lines()
    results: list[Result] = []
    for index, name in enumerate(chosen, 1):
        report.started(name, index, len(chosen))
        start = time.perf_counter()
        try:
            got = BENCHMARKS[name](quick)
        except Skipped as exc:
            report.skipped(name, index, len(chosen), str(exc))
            continue
        report.finished(name, index, len(chosen), time.perf_counter() - start)
        results.extend(got if isinstance(got, list) else [got])
    return results
