"""What every benchmark shares: :class:`Result`, :class:`Skipped` and the timing loop.

Timing method: the operation runs ``number`` times per sample, ``repeat`` samples are taken
alternately for ours and the baseline, and the best sample counts (the least disturbed by the
rest of the machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Result", "Skipped", "compare", "sizes"]


@dataclass
class Result:
    """One benchmark: our figure, the baseline's, and the target."""

    id: str
    title: str
    unit: str
    ours: float
    baseline: float | None
    baseline_name: str
    target: str
    met: bool | None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.ours / self.baseline

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


class Skipped(Exception):
    """Raised by a benchmark this machine cannot run; ``str(exc)`` is the one-line reason."""


def _best_us(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def compare(
    ours: Callable[[], object], baseline: Callable[[], object] | None, number: int, repeat: int
) -> tuple[float, float | None]:
    """Best µs/op of ``ours`` and ``baseline``, sampled alternately."""
    best_ours = best_base = float("inf")
    for _ in range(repeat):
        best_ours = min(best_ours, _best_us(ours, number))
        if baseline is not None:
            best_base = min(best_base, _best_us(baseline, max(1, number // 10)))
    return best_ours, (None if baseline is None else best_base)


def sizes(quick: bool) -> tuple[int, int]:
    """``(number, repeat)`` for :func:`compare`."""
    return (300, 3) if quick else (3000, 7)
